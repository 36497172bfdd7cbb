// What one small delta to a GPU page costs at the least on this card and
// driver, in CUDA C with nothing of MMSB around it: p50 and p99 of the
// shapes a 1 KiB apply can take, each waited for with a stream
// synchronize, as `gpu_update_1k_delta_latency` is (benches/src/gpu_harness.rs).
//
//   sync_idle        cudaStreamSynchronize of an idle stream
//   launch           an empty kernel launched and waited for
//   upload           1 KiB copied up from pinned memory and waited for
//   upload_launch    1 KiB copied up, then a kernel that applies it (the
//                    shape of MMSB's flush: one copy, one launch, one wait)
//   inline_launch    one kernel whose parameters carry the 1 KiB and its
//                    offset (no copy)
//   mapped_launch    one kernel that reads the 1 KiB from mapped pinned host
//                    memory (no copy)
//
//   nvcc -O3 -arch=native scripts/latency_floor.cu -o latency_floor && ./latency_floor
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <vector>
#include <cuda_runtime.h>

#define CHECK(x)                                                                       \
    do {                                                                               \
        cudaError_t e_ = (x);                                                          \
        if (e_ != cudaSuccess) {                                                       \
            fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_));                   \
            return 1;                                                                  \
        }                                                                              \
    } while (0)

struct Inline {
    uint64_t page;
    uint64_t offset;
    uint4 data[64];  // 1 KiB
};

__global__ void empty_kernel() {}

// 64 threads, one 16-byte window each (offset 16-aligned here: the floor,
// not MMSB's general case).
__global__ void apply_from(uint4* page, uint64_t offset, const uint4* src) {
    page[offset / 16 + threadIdx.x] = src[threadIdx.x];
}

__global__ void apply_inline(Inline a) {
    reinterpret_cast<uint4*>(a.page)[a.offset / 16 + threadIdx.x] = a.data[threadIdx.x];
}

static void report(const char* name, std::vector<double>& t) {
    std::sort(t.begin(), t.end());
    printf("FLOOR %-14s p50 %6.1f us  p99 %6.1f us\n", name, t[t.size() / 2] * 1e6, t[t.size() * 99 / 100] * 1e6);
}

static int measure(const char* name, cudaStream_t s, const std::function<cudaError_t(int)>& f) {
    std::vector<double> t;
    for (int i = 0; i < 5020; i++) {
        auto a = std::chrono::steady_clock::now();
        CHECK(f(i));
        CHECK(cudaStreamSynchronize(s));
        auto b = std::chrono::steady_clock::now();
        if (i >= 20) t.push_back(std::chrono::duration<double>(b - a).count());
    }
    report(name, t);
    return 0;
}

int main() {
    cudaStream_t s;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    uint4* page;
    CHECK(cudaMalloc(&page, 4096));
    uint4* staging;
    CHECK(cudaMalloc(&staging, 1024));
    uint4* pinned;
    CHECK(cudaHostAlloc(&pinned, 1024, cudaHostAllocMapped));
    memset(pinned, 0x5A, 1024);
    uint4* mapped;
    CHECK(cudaHostGetDevicePointer(&mapped, pinned, 0));
    Inline in{};
    in.page = reinterpret_cast<uint64_t>(page);
    memset(in.data, 0x5A, sizeof in.data);
    int rc = 0;
    rc |= measure("sync_idle", s, [&](int) { return cudaSuccess; });
    rc |= measure("launch", s, [&](int) {
        empty_kernel<<<1, 64, 0, s>>>();
        return cudaGetLastError();
    });
    rc |= measure("upload", s, [&](int) { return cudaMemcpyAsync(staging, pinned, 1024, cudaMemcpyHostToDevice, s); });
    rc |= measure("upload_launch", s, [&](int i) {
        cudaError_t e = cudaMemcpyAsync(staging, pinned, 1024, cudaMemcpyHostToDevice, s);
        if (e != cudaSuccess) return e;
        apply_from<<<1, 64, 0, s>>>(page, (i % 3) * 1024, staging);
        return cudaGetLastError();
    });
    rc |= measure("inline_launch", s, [&](int i) {
        in.offset = (i % 3) * 1024;
        apply_inline<<<1, 64, 0, s>>>(in);
        return cudaGetLastError();
    });
    rc |= measure("mapped_launch", s, [&](int i) {
        apply_from<<<1, 64, 0, s>>>(page, (i % 3) * 1024, mapped);
        return cudaGetLastError();
    });
    return rc;
}

// What the memory system gives the sparse layouts of the benchmark, with no
// run search at all: a CUDA C kernel that gets a 16-bit byte mask per
// 16-byte block, precomputed on the host, and copies exactly the selected
// bytes (16-byte load and store for a full block, byte stores otherwise).
// A second kernel stores whole blocks wherever any byte is selected: not a
// correct apply, an upper bound that ignores partly written blocks.
//
// Same layouts (xorshift64 13/7/17, seeds, lengths, gaps, first run at byte
// 3) and the same byte count (2 bytes per covered byte) as the
// `gpu_apply_sparse_*` rows of `mmsb_benches::gpu_harness`; ratios are to
// cudaMemcpy device-to-device in the same process (bytes read + written).
// Mirrored in benches/src/gpu_harness.rs (SPARSE_SHAPES) and scripts/torch_peer.py:
// keep them in step.
//
//   nvcc -O3 -arch=native scripts/sparse_bound.cu -o sparse_bound && ./sparse_bound [--mib N]
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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

struct Xorshift {
    uint64_t s;
    uint64_t next() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        return s;
    }
};

__global__ void exact_bytes(uint4* dst, const uint4* src, const uint16_t* mask, size_t blocks) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < blocks; i += (size_t)gridDim.x * blockDim.x) {
        unsigned m = mask[i];
        if (m == 0) continue;
        uint4 v = src[i];
        if (m == 0xFFFF) {
            dst[i] = v;
            continue;
        }
        unsigned char* d = reinterpret_cast<unsigned char*>(dst + i);
        const unsigned char* b = reinterpret_cast<const unsigned char*>(&v);
        for (int k = 0; k < 16; k++)
            if ((m >> k) & 1) d[k] = b[k];
    }
}

__global__ void whole_blocks(uint4* dst, const uint4* src, const uint16_t* mask, size_t blocks) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < blocks; i += (size_t)gridDim.x * blockDim.x)
        if (mask[i]) dst[i] = src[i];
}

int main(int argc, char** argv) {
    size_t mib = 256;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--mib") && i + 1 < argc) {
            mib = strtoull(argv[++i], nullptr, 10);
        } else {
            fprintf(stderr, "usage: sparse_bound [--mib N]\n");
            return 2;
        }
    }
    const size_t n = mib << 20, blocks = n / 16;
    struct Shape {
        const char* name;
        uint64_t seed, min_len, len_span, max_gap;
    } shapes[] = {{"mixed", 0x5EED0001, 16, 2048, 200},
                  {"64b", 0x5EED0002, 64, 1, 32},
                  {"256b", 0x5EED0003, 256, 1, 128},
                  {"4k", 0x5EED0004, 4096, 1, 2048}};
    int dev, sms;
    CHECK(cudaGetDevice(&dev));
    CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    void *a, *b, *m;
    CHECK(cudaMalloc(&a, n));
    CHECK(cudaMalloc(&b, n));
    CHECK(cudaMalloc(&m, blocks * 2));
    CHECK(cudaMemset(a, 1, n));
    CHECK(cudaMemset(b, 2, n));
    cudaEvent_t e0, e1;
    CHECK(cudaEventCreate(&e0));
    CHECK(cudaEventCreate(&e1));
    const int iters = 20;
    // Seconds per launch of f: one warm-up, then `iters` launches between events.
    auto seconds = [&](auto f) {
        f();
        cudaDeviceSynchronize();
        cudaEventRecord(e0);
        for (int i = 0; i < iters; i++) f();
        cudaEventRecord(e1);
        cudaEventSynchronize(e1);
        float ms = 0;
        cudaEventElapsedTime(&ms, e0, e1);
        return ms / iters / 1e3;
    };
    const double copy = 2.0 * n / seconds([&] { cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice); }) / 1e9;
    printf("cudaMemcpy DtoD %zu MiB: %.1f GB/s (read + written)\n", mib, copy);
    const int grid = sms * 8;
    for (const Shape& s : shapes) {
        std::vector<uint16_t> mask(blocks, 0);
        Xorshift r{s.seed};
        uint64_t at = 3, covered = 0;
        while (at < n) {
            uint64_t len = s.min_len + r.next() % s.len_span;
            if (len > n - at) len = n - at;
            for (uint64_t k = at; k < at + len; k++) mask[k / 16] |= uint16_t(1u << (k % 16));
            covered += len;
            at += len + 1 + r.next() % s.max_gap;
        }
        CHECK(cudaMemcpy(m, mask.data(), blocks * 2, cudaMemcpyHostToDevice));
        const double exact = 2.0 * covered / 1e9 / seconds([&] {
            exact_bytes<<<grid, 256>>>((uint4*)b, (const uint4*)a, (const uint16_t*)m, blocks);
        });
        const double whole = 2.0 * covered / 1e9 / seconds([&] {
            whole_blocks<<<grid, 256>>>((uint4*)b, (const uint4*)a, (const uint16_t*)m, blocks);
        });
        CHECK(cudaGetLastError());
        printf("BOUND sparse_%s exact_bytes %.1f %.3f whole_blocks %.1f %.3f\n", s.name, exact, exact / copy, whole,
               whole / copy);
    }
    return 0;
}

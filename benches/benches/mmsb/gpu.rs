//! GPU kernels on large pages, each group beside the device-to-device copy
//! of the same run (`cuda_memcpy_dtod`): `iter_custom` launches the kernel
//! `iters` times and stops the clock after a stream synchronize. Without a
//! CUDA device the group prints that it skipped and measures nothing.
//!
//! `MMSB_BENCH_GPU_MIB` sets the page size (default 256 MiB).

use criterion::{Criterion, Throughput};
use mmsb_benches::gpu_harness::{Kernels, RUN_CHUNK};

pub fn bench(c: &mut Criterion) {
    let mib = std::env::var("MMSB_BENCH_GPU_MIB").ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(256);
    let kernels = match Kernels::open(mib << 20, RUN_CHUNK) {
        Ok(k) => k,
        Err(e) => {
            println!("gpu: SKIPPED ({e})");
            return;
        }
    };
    println!("gpu: {}", kernels.device());
    let mut g = c.benchmark_group("gpu");
    g.sample_size(10);
    for (i, w) in kernels.workloads().enumerate() {
        g.throughput(Throughput::Bytes(w.bytes));
        g.bench_function(&w.name, |b| {
            b.iter_custom(|iters| kernels.time(i, iters).unwrap_or_else(|e| panic!("{}: {e}", w.name)))
        });
    }
    g.finish();
}

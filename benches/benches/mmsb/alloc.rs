//! Pooled page allocation against a plain zeroed `Vec`, on 1 and 2 threads.

use criterion::{BenchmarkId, Criterion, Throughput};
use mmsb::internals::alloc::PageAllocator;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Time `iters` allocate+free pairs on each of `threads` threads; the
/// slowest thread's time (they run at once).
fn on_threads(threads: usize, iters: u64, f: &(dyn Fn() + Sync)) -> Duration {
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let t = Instant::now();
                    for _ in 0..iters {
                        f();
                    }
                    t.elapsed()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or_default()).max().unwrap_or_default()
    })
}

pub fn bench(c: &mut Criterion) {
    let pool = PageAllocator::default();
    for threads in [1usize, 2] {
        let mut g = c.benchmark_group(format!("cpu_alloc_{threads}t"));
        // Elements: allocate+free pairs over all threads.
        g.throughput(Throughput::Elements(threads as u64));
        g.bench_function(BenchmarkId::new("pooled", 4096), |b| {
            b.iter_custom(|n| {
                on_threads(threads, n, &|| {
                    black_box(pool.alloc(black_box(4096)).expect("allocation"));
                })
            })
        });
        g.bench_function(BenchmarkId::new("vec_zeroed", 4096), |b| {
            b.iter_custom(|n| {
                on_threads(threads, n, &|| {
                    black_box(vec![0u8; black_box(4096)]);
                })
            })
        });
        g.finish();
    }
}

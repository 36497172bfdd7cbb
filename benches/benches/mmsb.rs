//! The criterion suite: one binary, one module per area. Every group reports
//! `Throughput::Bytes` (or elements) and measures its limit beside it.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mmsb::alloc::PageAllocator;
use mmsb_benches::{dense_payload, full_payload, sparse_payload};
use std::hint::black_box;

fn apply(c: &mut Criterion) {
    for &len in &[4usize << 10, 1 << 20, 64 << 20] {
        let mut g = c.benchmark_group("cpu_apply");
        g.throughput(Throughput::Bytes(len as u64));
        if len >= 1 << 20 {
            g.sample_size(20);
        }
        let src = vec![1u8; len];
        let mut page = vec![0u8; len];
        g.bench_function(BenchmarkId::new("memcpy", len), |b| {
            b.iter(|| page.copy_from_slice(black_box(&src)))
        });
        for (name, p) in [
            ("dense", dense_payload(len, 1)),
            ("sparse64", sparse_payload(len, 64, 128, 2)),
            ("full", full_payload(len, 3)),
        ] {
            g.bench_function(BenchmarkId::new(name, len), |b| b.iter(|| p.apply_to(black_box(&mut page))));
        }
        g.finish();
    }
}

fn alloc(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu_alloc");
    g.throughput(Throughput::Elements(1));
    let pool = PageAllocator::default();
    g.bench_function("pooled_4k", |b| b.iter(|| black_box(pool.alloc(4096))));
    g.bench_function("vec_zeroed_4k", |b| b.iter(|| black_box(vec![0u8; black_box(4096)])));
    g.finish();
}

criterion_group!(benches, apply, alloc);
criterion_main!(benches);

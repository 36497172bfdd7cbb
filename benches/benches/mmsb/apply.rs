//! CPU delta apply against memcpy of the same page.

use criterion::{BenchmarkId, Criterion, Throughput};
use mmsb::Payload;
use mmsb_benches::cpu::{layout_bound, merge_bound};
use mmsb_benches::{dense_payload, full_payload, sparse_payload};
use std::hint::black_box;

pub fn bench(c: &mut Criterion) {
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
            // The loop with only the traffic the layout needs (see
            // `mmsb_benches::cpu`), beside every sparse apply and the dense
            // apply on large pages.
            let bound: Option<fn(&mut [u8], &Payload)> = match name {
                "dense" if len >= 1 << 20 => Some(merge_bound),
                "sparse64" => Some(layout_bound),
                _ => None,
            };
            if let Some(f) = bound {
                g.bench_function(BenchmarkId::new(format!("{name}_bound"), len), |b| {
                    b.iter(|| f(black_box(&mut page), black_box(&p)))
                });
            }
        }
        g.finish();
    }
}

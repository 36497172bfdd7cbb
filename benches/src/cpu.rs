//! CPU rows: delta apply against memcpy, pooled allocation against plain
//! allocation.

use crate::{dense_payload, full_payload, paired_per_iter, sparse_payload, time_per_iter, Budget, Row};
use mmsb::alloc::PageAllocator;
use mmsb::Payload;
use std::hint::black_box;

fn human(len: usize) -> String {
    if len >= 1 << 20 {
        format!("{}m", len >> 20)
    } else if len >= 1 << 10 {
        format!("{}k", len >> 10)
    } else {
        format!("{len}")
    }
}

/// Seconds per `apply_to` of `payload` on a warm page buffer of `len`
/// bytes from the engine's page allocator (64-byte aligned, as every page
/// of the engine is), and seconds to memcpy `limit` bytes between two warm
/// buffers, sampled in turn.
fn apply_and_memcpy(budget: Budget, len: usize, payload: &Payload, limit: usize) -> (f64, f64) {
    let mut page = PageAllocator::default().alloc(len).expect("page buffer");
    page.fill(0x5A);
    let src = vec![1u8; limit];
    let mut dst = vec![0u8; limit];
    paired_per_iter(
        budget,
        || payload.apply_to(black_box(&mut page)).expect("payload fits"),
        || {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        },
    )
}

/// Apply rows for one page size.
pub fn apply_rows(budget: Budget, len: usize) -> Vec<Row> {
    let gbs = |bytes: usize, secs: f64| bytes as f64 / secs / 1e9;
    let mut rows = Vec::new();
    let target_dense = (len == 1 << 20).then_some(0.8);
    let dense = dense_payload(len, 1);
    let (t, memcpy) = apply_and_memcpy(budget, len, &dense, len);
    rows.push(Row::throughput(
        &format!("cpu_apply_dense_{}", human(len)),
        gbs(len, t),
        "GB/s",
        &format!("memcpy {}", human(len)),
        gbs(len, memcpy),
        target_dense,
    ));
    // Sparse: 64-byte runs every 128 bytes; the limit copies the touched bytes.
    let sparse = sparse_payload(len, 64, 128, 2);
    let touched = sparse.touched() as usize;
    if touched > 0 {
        let (t, m) = apply_and_memcpy(budget, len, &sparse, touched);
        rows.push(Row::throughput(
            &format!("cpu_apply_sparse64_{}", human(len)),
            gbs(touched, t),
            "GB/s",
            &format!("memcpy {} (touched bytes)", human(touched)),
            gbs(touched, m),
            Some(0.7),
        ));
    }
    let full = full_payload(len, 3);
    let (t, memcpy) = apply_and_memcpy(budget, len, &full, len);
    rows.push(Row::throughput(
        &format!("cpu_apply_full_{}", human(len)),
        gbs(len, t),
        "GB/s",
        &format!("memcpy {}", human(len)),
        gbs(len, memcpy),
        None,
    ));
    rows
}

/// Nanoseconds for one pooled allocate + free of `len` bytes on each of
/// `threads` threads at once, and the same for a plain zeroed `Vec`.
pub fn alloc_rows(budget: Budget, len: usize, threads: usize) -> Vec<Row> {
    let pool = PageAllocator::default();
    let per = |f: &(dyn Fn() + Sync)| -> f64 {
        if threads == 1 {
            return time_per_iter(budget, f);
        }
        let times: Vec<f64> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads).map(|_| s.spawn(|| time_per_iter(budget, f))).collect();
            hs.into_iter().map(|h| h.join().unwrap_or(f64::NAN)).collect()
        });
        times.iter().sum::<f64>() / times.len() as f64
    };
    let pooled = per(&|| {
        black_box(pool.alloc(black_box(len)).expect("allocation"));
    });
    let plain = per(&|| {
        black_box(vec![0u8; black_box(len)]);
    });
    vec![Row::latency(
        &format!("cpu_alloc_pooled_{}_{}t", human(len), threads),
        pooled * 1e9,
        "ns",
        &format!("plain zeroed Vec {}", human(len)),
        plain * 1e9,
        Some(100.0),
    )]
}

/// Every CPU row of the quick run.
pub fn rows(budget: Budget, full: bool) -> Vec<Row> {
    let mut rows = Vec::new();
    let sizes: &[usize] = if full { &[4 << 10, 1 << 20, 64 << 20] } else { &[4 << 10, 1 << 20] };
    for &len in sizes {
        rows.extend(apply_rows(budget, len));
    }
    rows.extend(alloc_rows(budget, 4096, 1));
    rows.extend(alloc_rows(budget, 4096, 2));
    rows
}

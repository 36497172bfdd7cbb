//! CPU rows: delta apply against memcpy, pooled allocation against plain
//! allocation.

use crate::{dense_payload, full_payload, in_turn_per_iter, sparse_payload, time_per_iter, Budget, Row};
use mmsb::internals::alloc::PageAllocator;
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
/// buffers, sampled in turn; with `bound`, also seconds per call of
/// `bound` on a page buffer of its own, sampled in the same turns.
fn apply_and_memcpy(
    budget: Budget,
    len: usize,
    payload: &Payload,
    limit: usize,
    bound: Option<Bound>,
) -> (f64, f64, Option<f64>) {
    let alloc = PageAllocator::default();
    let mut page = alloc.alloc(len).expect("page buffer");
    page.fill(0x5A);
    let src = vec![1u8; limit];
    let mut dst = vec![0u8; limit];
    let mut bound_page = alloc.alloc(len).expect("page buffer");
    bound_page.fill(0x5A);
    let mut run_bound = bound.map(|b| move || b(black_box(&mut bound_page), black_box(payload)));
    in_turn_per_iter(
        budget,
        || payload.apply_to(black_box(&mut page)).expect("payload fits"),
        || {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        },
        run_bound.as_mut().map(|f| f as &mut dyn FnMut()),
    )
}

/// A plain loop with the memory traffic an apply cannot avoid, and no
/// more: what portable code (no vector kernels chosen at run time) gets
/// from the layout, for an apply row's ratio to be read against. The
/// engine's vector kernels can beat it.
type Bound = fn(&mut [u8], &Payload);

/// The dense merge's memory traffic without its blend: every page byte
/// read, combined with the data byte at its place and written back (a
/// masked merge must read each page line it does not overwrite whole, where
/// memcpy only writes), and each 64-byte chunk's mask word read (folded
/// into one word kept alive by `black_box`, so the reads stay).
pub fn merge_bound(page: &mut [u8], payload: &Payload) {
    if let Payload::Dense(d) = payload {
        // Whole chunks (the rows' pages are multiples of 64 bytes).
        let chunks = page.chunks_exact_mut(64).zip(d.data().chunks_exact(64)).zip(d.mask_words());
        let mut folded = 0u64;
        for ((p, s), &w) in chunks {
            for (x, y) in p.iter_mut().zip(s) {
                *x ^= *y;
            }
            folded ^= w;
        }
        std::hint::black_box(folded);
    }
}

/// The sparse rows' layout (64-byte runs every 128 bytes) copied with no
/// run descriptors: each 64 bytes of data to its place, the places
/// computed, not read.
pub fn layout_bound(page: &mut [u8], payload: &Payload) {
    if let Payload::Sparse(s) = payload {
        for (dst, src) in page.chunks_exact_mut(128).zip(s.data().chunks_exact(64)) {
            dst[..64].copy_from_slice(src);
        }
    }
}

/// Apply rows for one page size; every sparse row gets a bound row, and
/// pages of 1 MiB and more one for the dense layout too (the bound loop
/// against the same memcpy samples).
pub fn apply_rows(budget: Budget, len: usize) -> Vec<Row> {
    let gbs = |bytes: usize, secs: f64| bytes as f64 / secs / 1e9;
    let mut rows = Vec::new();
    let large = len >= 1 << 20;
    let target_dense = (len == 1 << 20).then_some(0.8);
    let dense = dense_payload(len, 1);
    let (t, memcpy, bound) =
        apply_and_memcpy(budget, len, &dense, len, large.then_some(merge_bound as Bound));
    rows.push(Row::throughput(
        &format!("cpu_apply_dense_{}", human(len)),
        gbs(len, t),
        "GB/s",
        &format!("memcpy {}", human(len)),
        gbs(len, memcpy),
        target_dense,
    ));
    if let Some(b) = bound {
        rows.push(Row::throughput(
            &format!("cpu_apply_dense_{}_bound", human(len)),
            gbs(len, b),
            "GB/s",
            &format!("memcpy {} (bound: page ^= data, mask words read, no blend)", human(len)),
            gbs(len, memcpy),
            None,
        ));
    }
    // Sparse: 64-byte runs every 128 bytes; the limit copies the touched bytes.
    let sparse = sparse_payload(len, 64, 128, 2);
    let touched = sparse.touched() as usize;
    if touched > 0 {
        let (t, m, bound) = apply_and_memcpy(budget, len, &sparse, touched, Some(layout_bound as Bound));
        rows.push(Row::throughput(
            &format!("cpu_apply_sparse64_{}", human(len)),
            gbs(touched, t),
            "GB/s",
            &format!("memcpy {} (touched bytes)", human(touched)),
            gbs(touched, m),
            Some(0.7),
        ));
        if let Some(b) = bound {
            rows.push(Row::throughput(
                &format!("cpu_apply_sparse64_{}_bound", human(len)),
                gbs(touched, b),
                "GB/s",
                &format!(
                    "memcpy {} (bound: the runs' bytes copied to their places, no descriptors)",
                    human(touched)
                ),
                gbs(touched, m),
                None,
            ));
        }
    }
    let full = full_payload(len, 3);
    let (t, memcpy, _) = apply_and_memcpy(budget, len, &full, len, None);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Budget;
    use std::time::Duration;

    #[test]
    fn the_layout_bound_moves_the_bytes_the_sparse_apply_moves() {
        let len = 64 << 10;
        let sparse = sparse_payload(len, 64, 128, 2);
        let (mut applied, mut bound) = (vec![0x5Au8; len], vec![0x5Au8; len]);
        sparse.apply_to(&mut applied).expect("fits");
        layout_bound(&mut bound, &sparse);
        assert_eq!(applied, bound);
    }

    #[test]
    fn the_merge_bound_reads_and_writes_every_page_byte() {
        let len = 64 << 10;
        let dense = dense_payload(len, 1);
        let Payload::Dense(d) = &dense else { unreachable!("a dense payload") };
        let mut page: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let want: Vec<u8> = page.iter().zip(d.data()).map(|(p, s)| p ^ s).collect();
        merge_bound(&mut page, &dense);
        assert_eq!(page, want);
    }

    #[test]
    fn samples_in_turn_time_every_function_given() {
        let budget = Budget { sample: Duration::from_millis(3), samples: 3 };
        let (mut f, mut g, mut h) = (0u64, 0u64, 0u64);
        let mut third = || h += 1;
        let (a, b, c) = in_turn_per_iter(budget, || f += 1, || g += 1, Some(&mut third));
        assert!(a > 0.0 && b > 0.0 && c.is_some_and(|c| c > 0.0), "{a} {b} {c:?}");
        assert!(f > 0 && g > 0 && h > 0);
        let (_, _, none) = in_turn_per_iter(budget, || (), || (), None);
        assert!(none.is_none());
    }
}

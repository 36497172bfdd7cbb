//! Differential tests: the same random delta stream applied on the CPU and
//! on the GPU yields bit-identical pages. Without a device each test prints
//! `SKIPPED: no CUDA device (...)` for the GPU half.

use mmsb::{Config, Location, Mmsb, PageSpec, Result, Update};
use mmsb_tests::{on_cpu_and_gpu, random_payload, Rng};

/// Apply `rounds` batches of random deltas to pages of `lens` at `loc`;
/// return every page's bytes and epoch.
fn run_stream(
    loc: Location,
    seed: u64,
    lens: &[u64],
    rounds: usize,
    per_round: usize,
) -> Result<Vec<(Vec<u8>, u64)>> {
    let state = Mmsb::start(Config::temporary())?;
    let ids: Vec<_> =
        lens.iter().map(|&l| state.create_page(PageSpec::new(l).on(loc))).collect::<Result<_>>()?;
    let mut rng = Rng::new(seed);
    for _ in 0..rounds {
        let mut batch = Vec::with_capacity(per_round);
        for _ in 0..per_round {
            let k = rng.below(ids.len() as u64) as usize;
            batch.push(Update::new(ids[k], random_payload(&mut rng, lens[k])));
        }
        state.update_batch(batch)?;
    }
    ids.iter().map(|&id| Ok((state.query_page(id)?, state.page_info(id)?.epoch.get()))).collect()
}

#[test]
fn gpu_random_streams_match_cpu_on_odd_sizes() {
    let lens = [1u64, 2, 3, 15, 16, 17, 31, 33, 63, 65, 255, 257, 1000, 4095, 4096, 4097, 65_537, 1 << 20];
    let out = on_cpu_and_gpu!("gpu_random_streams_match_cpu_on_odd_sizes", |loc| run_stream(
        loc, 11, &lens, 40, 50
    ));
    assert_eq!(out.len(), lens.len());
}

#[test]
fn gpu_repeated_deltas_to_one_page_are_applied_in_order() {
    // Every delta of a batch hits one of three pages, so the queue merges.
    let lens = [100u64, 4096, 777];
    on_cpu_and_gpu!("gpu_repeated_deltas_to_one_page_are_applied_in_order", |loc| run_stream(
        loc, 5, &lens, 20, 200
    ));
}

#[test]
fn gpu_hundred_thousand_small_deltas_match_cpu() {
    // 2,000 pages of about 4 KiB, 100,000 deltas in batches of 10,000.
    let mut rng = Rng::new(99);
    let lens: Vec<u64> = (0..2000).map(|_| 4096 + rng.below(3) - 1).collect();
    on_cpu_and_gpu!("gpu_hundred_thousand_small_deltas_match_cpu", |loc| run_stream(
        loc, 7, &lens, 10, 10_000
    ));
}

#[test]
fn gpu_large_page_matches_cpu() {
    if !mmsb_tests::gpu_available("gpu_large_page_matches_cpu") {
        // The CPU half alone is covered by the smaller cases.
        return;
    }
    let lens = [64u64 << 20, (64 << 20) - 3];
    on_cpu_and_gpu!("gpu_large_page_matches_cpu", |loc| run_stream(loc, 3, &lens, 3, 4));
}

#[test]
fn gpu_reads_see_every_accepted_delta() {
    let out = on_cpu_and_gpu!("gpu_reads_see_every_accepted_delta", |loc| -> Result<Vec<Vec<u8>>> {
        let state = Mmsb::start(Config::temporary())?;
        let p = state.create_page(PageSpec::new(1024).on(loc))?;
        let mut seen = Vec::new();
        for i in 0..50u8 {
            let d = mmsb::SparseDelta::from_pairs([(u64::from(i) * 7, &[i; 9][..])])?;
            state.update_page(p, mmsb::Payload::Sparse(d))?;
            seen.push(state.query_page(p)?);
        }
        Ok(seen)
    });
    assert_eq!(out.len(), 50);
}

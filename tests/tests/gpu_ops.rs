//! GPU compare, diff, merge, migration and error cases, each checked
//! against the CPU. Without a device each test prints
//! `SKIPPED: no CUDA device (...)`.

use mmsb::{Config, DenseDelta, Error, Location, Mmsb, PageSpec, Payload, Result, SparseDelta, Update};
use mmsb_tests::{gpu_available, on_cpu_and_gpu, random_payload, Rng};

/// Two pages at `loc` differing in a random pattern; returns the GPU (or
/// CPU) compare count and diff, and the diff applied to the old page.
fn compare_and_diff(loc: Location, seed: u64, len: u64) -> Result<(u64, Payload, Vec<u8>)> {
    let state = Mmsb::start(Config::temporary())?;
    let mut rng = Rng::new(seed);
    let a = state.create_page(PageSpec::new(len).on(loc))?;
    let b = state.create_page(PageSpec::new(len).on(loc))?;
    let base = rng.bytes(len as usize);
    state.update_page(a, Payload::Full(base.clone()))?;
    state.update_page(b, Payload::Full(base))?;
    for _ in 0..3 {
        state.update_page(b, random_payload(&mut rng, len))?;
    }
    let count = state.compare_pages(a, b)?;
    let diff = state.diff_pages(a, b)?;
    state.update_page(a, diff.clone())?;
    assert_eq!(state.compare_pages(a, b)?, 0);
    Ok((count, diff, state.query_page(a)?))
}

#[test]
fn gpu_compare_and_diff_match_cpu() {
    for (i, len) in [1u64, 7, 16, 33, 100, 4096, 4097, 100_003, 1 << 20].into_iter().enumerate() {
        on_cpu_and_gpu!("gpu_compare_and_diff_match_cpu", |loc| compare_and_diff(loc, 40 + i as u64, len));
    }
}

#[test]
fn gpu_diff_equals_payload_diff_of_the_bytes() {
    if !gpu_available("gpu_diff_equals_payload_diff_of_the_bytes") {
        return;
    }
    let state = Mmsb::start(Config::temporary()).expect("start");
    let mut rng = Rng::new(8);
    for len in [5u64, 64, 65, 4096, 70_000] {
        let a = state.create_page(PageSpec::new(len).on(Location::Gpu(0))).expect("page");
        let b = state.create_page(PageSpec::new(len).on(Location::Gpu(0))).expect("page");
        state.update_page(b, random_payload(&mut rng, len)).expect("update");
        let want =
            Payload::diff(&state.query_page(a).expect("a"), &state.query_page(b).expect("b")).expect("diff");
        assert_eq!(state.diff_pages(a, b).expect("gpu diff"), want, "len {len}");
    }
}

#[test]
fn gpu_migration_round_trips_keep_bytes_and_epoch() {
    let locs = mmsb_tests::locations("gpu_migration_round_trips_keep_bytes_and_epoch", true);
    let state = Mmsb::start(Config::temporary()).expect("start");
    let mut rng = Rng::new(21);
    for len in [1u64, 4099, 1 << 20] {
        let p = state.create_page(PageSpec::new(len).named("m")).expect("page");
        for _ in 0..5 {
            state.update_page(p, random_payload(&mut rng, len)).expect("update");
        }
        let bytes = state.query_page(p).expect("query");
        let epoch = state.page_info(p).expect("info").epoch;
        // Every location to every other and back.
        for &from in &locs {
            for &to in &locs {
                state.migrate_page(p, from).expect("migrate");
                state.migrate_page(p, to).expect("migrate");
                let info = state.page_info(p).expect("info");
                assert_eq!(info.location, to);
                assert_eq!(info.epoch, epoch);
                assert_eq!(info.meta["name"], b"m");
                assert_eq!(state.query_page(p).expect("query"), bytes, "{from} -> {to}, len {len}");
            }
        }
        // Updates keep working after a move.
        let last = *locs.last().unwrap_or(&Location::Cpu);
        state.migrate_page(p, last).expect("migrate");
        let e = state.update_page(p, Payload::Full(vec![9; len as usize])).expect("update");
        assert_eq!(e.get(), epoch.get() + 1);
        assert_eq!(state.query_page(p).expect("query"), vec![9; len as usize]);
    }
    state.verify().expect("invariants");
}

#[test]
fn gpu_bad_deltas_are_typed_errors_and_change_nothing() {
    on_cpu_and_gpu!("gpu_bad_deltas_are_typed_errors_and_change_nothing", |loc| -> Result<Vec<u8>> {
        let state = Mmsb::start(Config::temporary())?;
        let p = state.create_page(PageSpec::new(100).on(loc))?;
        state.update_page(p, Payload::Full(vec![1; 100]))?;
        let before = state.query_page(p)?;
        let bad = [
            Payload::Full(vec![0; 99]),
            Payload::Sparse(SparseDelta::from_pairs([(98, &[0u8; 3][..])])?),
            Payload::Dense(DenseDelta::from_options(&[Some(1u8); 101])?),
        ];
        for b in bad {
            let err = state.update_page(p, b).expect_err("must be refused");
            assert!(matches!(err, Error::InvalidDelta { .. }), "{err}");
        }
        // A batch whose last update is bad applies nothing.
        let good = Payload::Full(vec![7; 100]);
        let err = state
            .update_batch(vec![Update::new(p, good), Update::new(p, Payload::Full(vec![0; 3]))])
            .expect_err("must be refused");
        assert!(matches!(err, Error::InvalidDelta { .. }));
        let err = state.update_page_at(p, Payload::Full(vec![7; 100]), mmsb::Epoch(0)).expect_err("stale");
        assert!(matches!(err, Error::StaleEpoch { .. }));
        assert_eq!(state.query_page(p)?, before);
        assert_eq!(state.page_info(p)?.epoch.get(), 1);
        state.query_page(p)
    });
}

#[test]
fn gpu_pages_without_a_device_are_typed_errors() {
    let state = Mmsb::start(Config::temporary()).expect("start");
    match mmsb::gpu::device_count() {
        Err(_) => {
            println!("SKIPPED: no CUDA device; checking the NoDevice path instead");
            for loc in [Location::Gpu(0), Location::Unified] {
                let err = state.create_page(PageSpec::new(16).on(loc)).expect_err("no device");
                assert!(matches!(err, Error::NoDevice { .. }), "{err}");
            }
        }
        Ok(n) => {
            let err =
                state.create_page(PageSpec::new(16).on(Location::Gpu(n + 3))).expect_err("no such device");
            assert!(matches!(err, Error::NoDevice { .. }), "{err}");
        }
    }
    assert!(state.page_ids().is_empty(), "a failed create leaves no page");
}

#[test]
fn gpu_read_page_refuses_device_pages() {
    if !gpu_available("gpu_read_page_refuses_device_pages") {
        return;
    }
    let state = Mmsb::start(Config::temporary()).expect("start");
    let p = state.create_page(PageSpec::new(8).on(Location::Gpu(0))).expect("page");
    let err = state.read_page(p).expect_err("device page");
    assert!(matches!(err, Error::UnsupportedLocation { .. }));
    assert_eq!(state.query_page(p).expect("query"), vec![0; 8], "pages start zeroed");
}

#[test]
fn gpu_merge_kernel_matches_cpu_merge() {
    if !gpu_available("gpu_merge_kernel_matches_cpu_merge") {
        return;
    }
    let mut rng = Rng::new(77);
    for len in [1u64, 31, 32, 33, 100, 4096, 4099, 70_001] {
        let (Payload::Dense(a), Payload::Dense(b)) = (dense(&mut rng, len), dense(&mut rng, len)) else {
            unreachable!("dense() builds dense payloads")
        };
        let want = Payload::Dense(a.clone()).merge(&Payload::Dense(b.clone()), len).expect("cpu merge");
        let got = mmsb::gpu::merge_dense(&a, &b).expect("gpu merge");
        assert_eq!(Payload::Dense(got), want, "len {len}");
    }
}

fn dense(rng: &mut Rng, len: u64) -> Payload {
    let opts: Vec<Option<u8>> =
        (0..len).map(|_| if rng.below(3) == 0 { Some(rng.next_u64() as u8) } else { None }).collect();
    Payload::Dense(DenseDelta::from_options(&opts).expect("dense"))
}

#[test]
fn gpu_transfer_bytes_are_counted_in_stats() -> mmsb::Result<()> {
    if !mmsb_tests::gpu_available("gpu_transfer_bytes_are_counted_in_stats") {
        return Ok(());
    }
    let s = mmsb::Mmsb::start(mmsb::Config::temporary())?;
    let p = s.create_page(mmsb::PageSpec::new(4096).on(mmsb::Location::Gpu(0)))?;
    let before = s.stats().gpus.iter().find(|(d, _)| *d == 0).map(|(_, g)| (g.h2d_bytes, g.d2h_bytes));
    let (h2d0, d2h0) = before.unwrap_or((0, 0));
    s.update_page(p, mmsb::Payload::Full(vec![7; 4096]))?;
    assert_eq!(s.query_page(p)?, vec![7; 4096]);
    let (h2d1, d2h1) = s
        .stats()
        .gpus
        .iter()
        .find(|(d, _)| *d == 0)
        .map(|(_, g)| (g.h2d_bytes, g.d2h_bytes))
        .unwrap_or((0, 0));
    assert!(h2d1 >= h2d0 + 4096, "upload counted: {h2d0} -> {h2d1}");
    assert!(d2h1 >= d2h0 + 4096, "download counted: {d2h0} -> {d2h1}");
    Ok(())
}

/// Increments of pages at `loc`: the kinds and sizes of three checkpoints
/// (a full one, then increments with changed blocks, a deleted page, a
/// created one and a page migrated to `loc`), and the state after a
/// restart through the chain.
#[allow(clippy::type_complexity)]
fn increments_at(loc: Location) -> Result<(Vec<String>, u128, Vec<Vec<u8>>)> {
    let dir = tempfile::tempdir()?;
    let mut rng = Rng::new(77);
    let lens = [3u64, 4096, 4097, 100_003, 1 << 20, 3 << 20];
    let mut kinds = Vec::new();
    let (ids, hash, moved) = {
        let s = Mmsb::start(Config::at(dir.path()))?;
        let mut ids = Vec::new();
        for &len in &lens {
            let p = s.create_page(PageSpec::new(len).on(loc))?;
            s.update_page(p, Payload::Full(rng.bytes(len as usize)))?;
            ids.push(p);
        }
        let cpu_page = s.create_page(PageSpec::new(9000))?;
        s.update_page(cpu_page, Payload::Full(rng.bytes(9000)))?;
        kinds.push(s.checkpoint()?);
        // A random payload on the small pages, a few short runs on the
        // others (an increment holds the blocks they touch).
        for (k, &len) in lens.iter().enumerate() {
            if len <= 4097 {
                s.update_page(ids[k], random_payload(&mut rng, len))?;
            } else {
                for _ in 0..3 {
                    let at = rng.below(len - 16);
                    let n = 1 + rng.below(15) as usize;
                    let run = rng.bytes(n);
                    s.update_page(ids[k], Payload::Sparse(SparseDelta::from_pairs([(at, &run[..])])?))?;
                }
            }
        }
        // A sparse change of a few bytes in the largest page.
        s.update_page(ids[5], Payload::Sparse(SparseDelta::from_pairs([(2_000_000u64, &[9u8; 5][..])])?))?;
        kinds.push(s.checkpoint()?);
        s.delete_page(ids[2])?;
        let created = s.create_page(PageSpec::new(5000).on(loc))?;
        s.update_page(created, Payload::Full(rng.bytes(5000)))?;
        s.migrate_page(cpu_page, loc)?;
        s.update_page(ids[4], Payload::Sparse(SparseDelta::from_pairs([(4095u64, &[1u8, 2][..])])?))?;
        kinds.push(s.checkpoint()?);
        let h = s.state_hash()?;
        s.stop()?;
        (s.page_ids(), h, cpu_page)
    };
    // The kinds (the page counts differ: the migration is an entry on a
    // GPU, nothing on the CPU).
    let kinds = kinds.iter().map(|i| format!("{:?}", i.kind)).collect();
    let s = Mmsb::start(Config::at(dir.path()))?;
    assert!(s.recovery_report().is_clean(), "{}", s.recovery_report());
    assert_eq!(s.state_hash()?, hash);
    let migrated = s.page_info(moved)?;
    assert_eq!(migrated.location, loc, "the migration came back through the chain");
    let bytes = ids.iter().map(|p| s.query_page(*p)).collect::<Result<Vec<_>>>()?;
    Ok((kinds, hash, bytes))
}

#[test]
fn gpu_increments_gather_the_changed_blocks_like_the_cpu() {
    let (kinds, ..) = on_cpu_and_gpu!("gpu_increments_gather_the_changed_blocks_like_the_cpu", increments_at);
    assert!(
        kinds[0] == "Full" && kinds[1].starts_with("Increment") && kinds[2].starts_with("Increment"),
        "{kinds:?}"
    );
}

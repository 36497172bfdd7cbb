//! Derived pages on a GPU: CPU recompute functions over GPU pages, and
//! device recompute functions (a kernel registered by name and version),
//! checked against the same derivations on the CPU. Without a device the
//! GPU tests print `SKIPPED: no CUDA device (...)`.

use mmsb::gpu::DeviceFunction;
use mmsb::{
    CheckpointKind, Config, Error, Location, Mmsb, PageId, PageSpec, Payload, PropagationMode, Result,
    SparseDelta, Update,
};
use mmsb_tests::{gpu_available, random_payload, Rng};

/// A kernel written by hand in PTX: byte `i` of the output is the largest
/// byte `i` of the parents (0 past a shorter parent's end).
const MAX_PTX: &str = include_str!("../data/bytewise_max.ptx");
const MAX_ENTRY: &str = "mmsb_test_bytewise_max";

/// The same function on the CPU.
fn bytewise_max(ins: &[&[u8]], out: &mut [u8]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = ins.iter().map(|p| p.get(i).copied().unwrap_or(0)).max().unwrap_or(0);
    }
}

fn sparse(at: u64, bytes: &[u8]) -> Payload {
    Payload::Sparse(SparseDelta::from_pairs([(at, bytes)]).expect("one run"))
}

fn device_max() -> DeviceFunction {
    // SAFETY: the kernel reads bytes [0, len) of each input and writes
    // bytes [0, out_len) of the output, nothing else.
    unsafe { DeviceFunction::from_ptx(MAX_PTX, MAX_ENTRY) }.expect("the PTX declares the entry")
}

/// How the derived pages of [`dag`] are placed and computed.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// Every page in host memory, CPU functions.
    Cpu,
    /// GPU pages (but one CPU source and one CPU derived page), CPU functions.
    GpuCpuFunctions,
    /// The same pages, the GPU-derived ones computed by the kernel.
    GpuDeviceFunctions,
}

const LEN: u64 = 3 * 4096 + 5;

/// What a run of [`dag`] gives: the state hash after each step, the final
/// bytes of every page, the recomputes cut off and the checkpoints that
/// were increments.
type Outcome = (Vec<u128>, Vec<Vec<u8>>, u64, usize);

/// Sources s0 (GPU), s1 (CPU), s2 (GPU, half length); derived
/// d1 = max(s0, s1) and d2 = max(d1, s2) on the GPU, d3 = max(d1, d2) on the
/// CPU (a CPU function below device-computed pages) and d4 = max(d3, s0) on
/// the GPU: a diamond, CPU and GPU parents, cut-offs. Random writes, single
/// and batched, with full and incremental checkpoints and restarts between
/// them when `restarts` is set; returns the state hash after each step, the final bytes of
/// every page and the number of recomputes cut off.
fn dag(
    kind: Kind,
    seed: u64,
    dir: &std::path::Path,
    mode: PropagationMode,
    restarts: bool,
) -> Result<Outcome> {
    let gpu = if kind == Kind::Cpu { Location::Cpu } else { Location::Gpu(0) };
    // Chains of up to three increments: the checkpoints below are full
    // ones and increments in turn, and each restart recovers through one.
    let config = || Config { propagation: mode, ..Config::at(dir) }.checkpoint_chain(3);
    let mut state = Mmsb::start(config())?;
    let s0 = state.create_page(PageSpec::new(LEN).on(gpu).named("s0"))?;
    let s1 = state.create_page(PageSpec::new(LEN).named("s1"))?;
    let s2 = state.create_page(PageSpec::new(LEN / 2).on(gpu).named("s2"))?;
    let d1 = state.create_page(PageSpec::new(LEN).on(gpu).named("d1"))?;
    let d2 = state.create_page(PageSpec::new(LEN).on(gpu).named("d2"))?;
    let d3 = state.create_page(PageSpec::new(LEN).named("d3"))?;
    let d4 = state.create_page(PageSpec::new(LEN).on(gpu).named("d4"))?;
    // The functions, registered again after each restart.
    let register = |state: &Mmsb| -> Result<&'static str> {
        state.register_function("max", 1, bytewise_max)?;
        Ok(if kind == Kind::GpuDeviceFunctions {
            state.register_device_function("max_gpu", 1, device_max())?;
            "max_gpu"
        } else {
            "max"
        })
    };
    let on_gpu = register(&state)?;
    state.declare_derived(d1, on_gpu, &[s0, s1])?;
    state.declare_derived(d2, on_gpu, &[d1, s2])?;
    state.declare_derived(d3, "max", &[d1, d2])?;
    state.declare_derived(d4, on_gpu, &[d3, s0])?;
    let sources = [(s0, LEN), (s1, LEN), (s2, LEN / 2)];
    let mut rng = Rng::new(seed);
    let mut hashes = Vec::new();
    let mut cut_off = 0;
    let mut increments = 0;
    for step in 0..40 {
        match step % 4 {
            // A batch over two sources.
            3 => {
                let (a, b) = (sources[rng.below(3) as usize], sources[rng.below(3) as usize]);
                let mut ups = vec![Update::new(a.0, random_payload(&mut rng, a.1))];
                if b.0 != a.0 {
                    ups.push(Update::new(b.0, random_payload(&mut rng, b.1)));
                }
                state.update_batch(ups)?;
            }
            // Zeros somewhere: often changes no maximum (a cut-off).
            2 => {
                let (p, len) = sources[rng.below(3) as usize];
                let at = rng.below(len - 64);
                state.update_page(p, sparse(at, &[0u8; 64]))?;
            }
            _ => {
                let (p, len) = sources[rng.below(3) as usize];
                state.update_page(p, random_payload(&mut rng, len))?;
            }
        }
        if mode == PropagationMode::Deferred {
            cut_off += state.propagate()?.cut_off;
        }
        // Checkpoints (full, then increments of the GPU pages' changed
        // blocks) and restarts that recover from them: the state goes on
        // exactly where it was.
        if restarts && step % 5 == 4 {
            increments += usize::from(state.checkpoint()?.kind != CheckpointKind::Full);
        }
        if restarts && step % 13 == 12 {
            let before = state.state_hash()?;
            state.stop()?;
            state = Mmsb::start(config())?;
            register(&state)?;
            assert_eq!(state.state_hash()?, before, "{kind:?}: restart at step {step}");
        }
        hashes.push(state.state_hash()?);
    }
    let pages =
        [s0, s1, s2, d1, d2, d3, d4].iter().map(|&p| state.query_page(p)).collect::<Result<Vec<_>>>()?;
    let d4_bytes = &pages[6];
    let mut want = vec![0u8; LEN as usize];
    bytewise_max(&[&pages[5], &pages[0]], &mut want);
    assert_eq!(d4_bytes, &want, "{kind:?}: d4 is max(d3, s0) at the end");
    state.stop()?;
    Ok((hashes, pages, cut_off, increments))
}

#[test]
fn gpu_derived_pages_match_the_cpu_with_either_kind_of_function() -> Result<()> {
    if !gpu_available("gpu_derived_pages_match_the_cpu_with_either_kind_of_function") {
        return Ok(());
    }
    for mode in [PropagationMode::Immediate, PropagationMode::Deferred] {
        for seed in [1, 2] {
            let mut runs = Vec::new();
            for kind in [Kind::Cpu, Kind::GpuCpuFunctions, Kind::GpuDeviceFunctions] {
                let dir = tempfile::tempdir()?;
                runs.push((kind, dag(kind, seed, dir.path(), mode, true)?, dir));
            }
            let (_, (cpu_hashes, cpu_pages, cpu_cut, _), _) = &runs[0];
            for (kind, (hashes, pages, cut, _), _) in &runs[1..] {
                assert_eq!(pages, cpu_pages, "{kind:?} {mode:?} seed {seed}: page bytes");
                assert_eq!(hashes, cpu_hashes, "{kind:?} {mode:?} seed {seed}: state hash after every step");
                assert_eq!(cut, cpu_cut, "{kind:?} {mode:?} seed {seed}: cut-offs");
            }
            // The log holds the derived deltas: a reopen with no function
            // registered replays to the same state.
            for (kind, (hashes, _, _, _), dir) in &runs {
                let again = Mmsb::start(Config::at(dir.path()))?;
                assert_eq!(again.state_hash()?, *hashes.last().expect("steps"), "{kind:?}: replay");
                again.stop()?;
            }
        }
    }
    Ok(())
}

#[test]
fn derived_pages_are_the_same_through_checkpoints_and_restarts() -> Result<()> {
    // The CPU half of the differential test above, which runs here without
    // a device: the same workload with and without the checkpoints and
    // restarts gives the same state hash after every step and the same pages.
    for mode in [PropagationMode::Immediate, PropagationMode::Deferred] {
        let (plain_dir, durable_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
        let plain = dag(Kind::Cpu, 3, plain_dir.path(), mode, false)?;
        let durable = dag(Kind::Cpu, 3, durable_dir.path(), mode, true)?;
        assert_eq!(durable.0, plain.0, "{mode:?}: state hash after every step");
        assert_eq!(durable.1, plain.1, "{mode:?}: page bytes");
        assert_eq!(durable.2, plain.2, "{mode:?}: cut-offs");
        // Some of the checkpoints were increments.
        assert!(durable.3 > 0, "{mode:?}: every checkpoint was a full one");
    }
    Ok(())
}

#[test]
fn gpu_device_function_downloads_only_what_changed() -> Result<()> {
    if !gpu_available("gpu_device_function_downloads_only_what_changed") {
        return Ok(());
    }
    const BIG: u64 = 16 << 20;
    let state = Mmsb::start(Config::temporary())?;
    let a = state.create_page(PageSpec::new(BIG).on(Location::Gpu(0)))?;
    let b = state.create_page(PageSpec::new(BIG).on(Location::Gpu(0)))?;
    let d = state.create_page(PageSpec::new(BIG).on(Location::Gpu(0)))?;
    state.register_device_function("max", 1, device_max())?;
    state.declare_derived(d, "max", &[a, b])?;
    let d2h = |s: &Mmsb| s.stats().gpus.iter().find(|(o, _)| *o == 0).map_or(0, |(_, g)| g.d2h_bytes);
    let before = d2h(&state);
    let epoch = state.page_info(d)?.epoch;
    state.update_page(a, sparse(1 << 20, &[9u8; 64]))?;
    let moved = d2h(&state) - before;
    assert_eq!(&state.query_page(d)?[1 << 20..(1 << 20) + 64], &[9u8; 64][..]);
    eprintln!("device recompute of a 16 MiB page after a 64-byte write: {moved} bytes downloaded");
    assert!(moved < BIG / 4, "{moved} bytes came back for a 64-byte change of a {BIG}-byte page");
    assert_eq!(state.page_info(d)?.epoch.0, epoch.0 + 1, "one derived delta");
    // Scattered changes, first and last bytes included, on both parents.
    let mut rng = Rng::new(5);
    for _ in 0..4 {
        let mut pairs: Vec<(u64, Vec<u8>)> =
            vec![(0, vec![rng.next_u64() as u8 | 1]), (BIG - 3, vec![200, 201, 202])];
        for _ in 0..20 {
            let at = 8 + rng.below(BIG / 64 - 1) * 63;
            pairs.push((at, (0..1 + rng.below(40)).map(|_| rng.next_u64() as u8).collect()));
        }
        pairs.sort_by_key(|p| p.0);
        pairs.dedup_by_key(|p| p.0);
        let target = if rng.below(2) == 0 { a } else { b };
        let payload = Payload::Sparse(SparseDelta::from_pairs(pairs.iter().map(|(o, v)| (*o, &v[..])))?);
        state.update_page(target, payload)?;
        let mut want = vec![0u8; BIG as usize];
        bytewise_max(&[&state.query_page(a)?, &state.query_page(b)?], &mut want);
        assert!(state.query_page(d)? == want, "d = max(a, b) after scattered writes");
    }
    Ok(())
}

#[test]
fn gpu_device_function_errors_change_nothing() -> Result<()> {
    if !gpu_available("gpu_device_function_errors_change_nothing") {
        return Ok(());
    }
    let state = Mmsb::start(Config::temporary())?;
    let a = state.create_page(PageSpec::new(256).on(Location::Gpu(0)))?;
    let d = state.create_page(PageSpec::new(256).on(Location::Gpu(0)))?;
    let host = state.create_page(PageSpec::new(256))?;
    state.register_device_function("max", 1, device_max())?;
    // A device function derives GPU pages only.
    let err = state.declare_derived(host, "max", &[a]).expect_err("a page in host memory");
    assert!(matches!(err, Error::UnsupportedLocation { .. }), "{err}");
    assert!(state.derivation(host)?.is_none(), "nothing declared");
    // PTX the driver refuses: the write that needs it is refused whole.
    let broken = MAX_PTX.replace("max.u32", "max.bogus");
    // SAFETY: as device_max; this PTX does not even load.
    let broken = unsafe { DeviceFunction::from_ptx(broken, MAX_ENTRY) }?;
    state.register_device_function("broken", 1, broken)?;
    state.declare_derived(d, "max", &[a])?;
    let err = state.declare_derived(d, "broken", &[a]).expect_err("PTX that does not load");
    assert!(matches!(err, Error::Recompute { .. }), "{err}");
    let epochs = (state.page_info(a)?.epoch, state.page_info(d)?.epoch);
    state.update_page(a, Payload::Full(vec![5; 256]))?;
    assert_eq!(state.query_page(d)?, vec![5; 256], "the working function still derives d");
    assert!(state.page_info(a)?.epoch > epochs.0);
    Ok(())
}

#[test]
fn device_functions_check_their_ptx_without_a_device() {
    // SAFETY: refused before anything could run.
    let err = unsafe { DeviceFunction::from_ptx(MAX_PTX, "no_such_kernel") }.expect_err("no such entry");
    assert!(matches!(err, Error::Function { .. }), "{err}");
    // SAFETY: refused before anything could run.
    let err = unsafe { DeviceFunction::from_ptx("  ", MAX_ENTRY) }.expect_err("empty");
    assert!(matches!(err, Error::Function { .. }), "{err}");
    // SAFETY: refused before anything could run.
    let err = unsafe { DeviceFunction::from_ptx(format!("{MAX_PTX}\0"), MAX_ENTRY) }.expect_err("NUL");
    assert!(matches!(err, Error::Function { .. }), "{err}");
    let f = device_max();
    assert_eq!((f.entry(), f.block()), (MAX_ENTRY, 256));
    assert!(device_max().with_block(100).is_err());
    assert_eq!(device_max().with_block(512).expect("512").block(), 512);
}

#[test]
fn device_functions_register_like_cpu_functions() -> Result<()> {
    // Names and versions are shared between the two kinds, with or
    // without a device: registering needs no GPU.
    let state = Mmsb::start(Config::temporary())?;
    state.register_device_function("f", 2, device_max())?;
    assert!(state.has_function("f", 2));
    let err = state.register_function("f", 1, bytewise_max).expect_err("an older version");
    assert!(matches!(err, Error::Function { .. }), "{err}");
    state.register_function("f", 3, bytewise_max)?;
    assert!(state.has_function("f", 3));
    // A CPU page cannot be derived by a device function.
    state.register_device_function("g", 1, device_max())?;
    let p = state.create_page(PageSpec::new(8))?;
    let q = state.create_page(PageSpec::new(8))?;
    let err = state.declare_derived(q, "g", &[p]).expect_err("host page");
    assert!(matches!(err, Error::UnsupportedLocation { .. }), "{err}");
    let _: Option<PageId> = state.page_named("none");
    Ok(())
}

/// What a run of [`chain`] gives: the state hash after each step, the
/// final bytes of every page, the recomputes cut off and those whose
/// result came from a run ahead of the level loop.
type ChainOutcome = (Vec<u128>, Vec<Vec<u8>>, u64, u64);

/// Sources g0, g1 and six derived pages over five levels, every page on
/// the GPU when `device` is set (device functions) and in host memory
/// otherwise (CPU functions): e1 = max(g0, g1), e2 = max(e1, g1),
/// e3 = max(e1, e2) (a diamond), e4 = max(e3, g0), e5 = max(g1, g1) and
/// e6 = max(e5, e4). Random writes to the sources, zeros that often change
/// no maximum (cut-offs above pages that a run ahead has already
/// launched), batches, and now and then a write to e3 itself, so that a
/// later run ahead computes an e3 that differs from the page while the
/// level loop never recomputes e3 (its parents cut off): the pages below
/// it must then be computed from the page, not from that output.
fn chain(device: bool, seed: u64, dir: &std::path::Path, mode: PropagationMode) -> Result<ChainOutcome> {
    let at = if device { Location::Gpu(0) } else { Location::Cpu };
    let state = Mmsb::start(Config { propagation: mode, ..Config::at(dir) })?;
    let page = |name: &str| state.create_page(PageSpec::new(LEN).on(at).named(name));
    let (g0, g1) = (page("g0")?, page("g1")?);
    let e: Vec<PageId> = (1..=6).map(|i| page(&format!("e{i}"))).collect::<Result<_>>()?;
    let f = if device {
        state.register_device_function("max_gpu", 1, device_max())?;
        "max_gpu"
    } else {
        state.register_function("max", 1, bytewise_max)?;
        "max"
    };
    state.declare_derived(e[0], f, &[g0, g1])?;
    state.declare_derived(e[1], f, &[e[0], g1])?;
    state.declare_derived(e[2], f, &[e[0], e[1]])?;
    state.declare_derived(e[3], f, &[e[2], g0])?;
    state.declare_derived(e[4], f, &[g1, g1])?;
    state.declare_derived(e[5], f, &[e[4], e[3]])?;
    let mut rng = Rng::new(seed);
    let (mut hashes, mut cut_off, mut ahead) = (Vec::new(), 0, 0);
    for step in 0..48 {
        let source = if rng.below(2) == 0 { g0 } else { g1 };
        match step % 6 {
            0 | 1 => state.update_page(source, random_payload(&mut rng, LEN)).map(drop)?,
            2 => state.update_page(source, sparse(rng.below(LEN - 256), &[0u8; 256])).map(drop)?,
            3 => state
                .update_batch(vec![
                    Update::new(g0, sparse(rng.below(LEN - 64), &[0u8; 64])),
                    Update::new(g1, random_payload(&mut rng, LEN)),
                ])
                .map(drop)?,
            // The derived page written directly: e4 and e6 follow it.
            4 => state
                .update_page(e[2], sparse(rng.below(LEN - 32), &[rng.below(255) as u8 + 1; 32]))
                .map(drop)?,
            // A low byte in g0 only: usually nothing changes below it.
            _ => state.update_page(g0, sparse(rng.below(LEN), &[1])).map(drop)?,
        }
        if mode == PropagationMode::Deferred {
            let stats = state.propagate()?;
            cut_off += stats.cut_off;
            ahead += stats.ahead;
        }
        hashes.push(state.state_hash()?);
    }
    let pages = [g0, g1].iter().chain(&e).map(|&p| state.query_page(p)).collect::<Result<Vec<_>>>()?;
    state.stop()?;
    Ok((hashes, pages, cut_off, ahead))
}

#[test]
fn gpu_device_chains_run_ahead_and_match_the_cpu() -> Result<()> {
    if !gpu_available("gpu_device_chains_run_ahead_and_match_the_cpu") {
        return Ok(());
    }
    for mode in [PropagationMode::Immediate, PropagationMode::Deferred] {
        for seed in [11, 12, 13] {
            let (cpu_dir, gpu_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
            let cpu = chain(false, seed, cpu_dir.path(), mode)?;
            let gpu = chain(true, seed, gpu_dir.path(), mode)?;
            assert_eq!(gpu.1, cpu.1, "{mode:?} seed {seed}: page bytes");
            assert_eq!(gpu.0, cpu.0, "{mode:?} seed {seed}: state hash after every step");
            assert_eq!(gpu.2, cpu.2, "{mode:?} seed {seed}: cut-offs");
            assert_eq!(cpu.3, 0, "nothing runs ahead on the CPU");
            if mode == PropagationMode::Deferred {
                assert!(gpu.3 > 0, "seed {seed}: no device recompute was run ahead");
            }
            let again = Mmsb::start(Config::at(gpu_dir.path()))?;
            assert_eq!(again.state_hash()?, *gpu.0.last().expect("steps"), "replay without the kernel");
            again.stop()?;
        }
    }
    Ok(())
}

#[test]
fn device_chains_write_derived_pages_like_their_functions() -> Result<()> {
    // The CPU half of the test above (which needs a device): the workload
    // runs, writes to a derived page included, and every derived page is
    // its function of its parents at the end, but for e3, written directly.
    let dir = tempfile::tempdir()?;
    let (hashes, pages, cut_off, _) = chain(false, 11, dir.path(), PropagationMode::Deferred)?;
    assert_eq!(hashes.len(), 48);
    assert!(cut_off > 0, "some recompute was cut off");
    let max = |ins: &[&[u8]]| {
        let mut out = vec![0u8; LEN as usize];
        bytewise_max(ins, &mut out);
        out
    };
    let [g0, g1, e1, e2, _e3, e4, e5, e6] = &pages[..] else { panic!("eight pages") };
    assert_eq!(e1, &max(&[g0, g1]));
    assert_eq!(e2, &max(&[e1, g1]));
    assert_eq!(e4, &max(&[&pages[4], g0]));
    assert_eq!(e5, &max(&[g1]));
    assert_eq!(e6, &max(&[e5, e4]));
    Ok(())
}

//! GPU rows, from [`crate::gpu_harness`]: every kernel next to the
//! device's own device-to-device copy bandwidth measured in the same run.

use crate::gpu_harness::{run, BenchConfig};
use crate::Row;

/// The GPU rows on device 0, or why there are none.
///
/// # Errors
/// A sentence saying why no GPU row was measured (no driver, no device,
/// or the device failed).
pub fn rows(quick: bool) -> Result<Vec<Row>, String> {
    let info = mmsb::gpu::probe().map_err(|e| match e {
        mmsb::Error::NoDevice { .. } => e.to_string(),
        other => format!("the GPU could not be started: {other}"),
    })?;
    let cfg = if quick {
        BenchConfig { large: 64 << 20, iters: 10, ..BenchConfig::default() }
    } else {
        BenchConfig::default()
    };
    let report = run(&cfg).map_err(|e| format!("the GPU benchmark failed on {}: {e}", info.name))?;
    let device = report.device.clone();
    Ok(report
        .rows
        .iter()
        .map(|r| match r.ratio {
            Some(_) => Row::throughput(
                &r.name,
                r.gbps,
                "GB/s",
                "cuMemcpyDtoD (read + written)",
                report.copy_gbps,
                ratio_target(&r.name),
            )
            .on(&device),
            // Allocation rows: nanoseconds against the driver's allocate
            // and free of the same size, at most 1 µs.
            None if r.name.starts_with("gpu_alloc_pooled") => {
                let (limit_name, limit) = r.limit.clone().unwrap_or_else(|| ("-".into(), f64::NAN));
                Row::latency(&r.name, r.seconds * 1e9, "ns", &limit_name, limit * 1e9, Some(1000.0))
                    .on(&device)
            }
            // Latency rows have no limit: the figure stands alone.
            None => Row::latency(&r.name, r.seconds * 1e6, "us", &r.note, f64::NAN, latency_target(&r.name))
                .on(&device),
        })
        .collect())
}

/// The GPU targets, as ratios to the device copy: 0.85 for the dense
/// kernels on large pages, 0.6 for the 100,000-delta batch (one launch);
/// none for the copy itself, the end-to-end batch and the sparse rows,
/// whose target is the search-free CUDA C kernel of the same layouts
/// (`scripts/sparse_bound.cu`, which `scripts/gpu-check.sh` runs beside
/// them; this command has no CUDA compiler to build it).
fn ratio_target(name: &str) -> Option<f64> {
    if name.starts_with("cuda_") || name.ends_with("_e2e") || name.starts_with("gpu_apply_sparse") {
        None
    } else if name.starts_with("gpu_apply_batch") {
        Some(0.6)
    } else {
        Some(0.85)
    }
}

/// At most 20 µs for one 1 KiB delta to a GPU page, end to end.
fn latency_target(name: &str) -> Option<f64> {
    name.starts_with("gpu_update_1k_delta_latency").then_some(20.0)
}

/// The kernel of the derived-page rows (hand-written PTX, shared with the
/// tests): byte `i` of the output is the largest byte `i` of the parents.
const MAX_PTX: &str = include_str!("../../tests/data/bytewise_max.ptx");

/// Derived pages on device 0: a page derived from two GPU pages, written
/// 1 KiB at a time, by a device recompute function against the same
/// derivation by a CPU function (which reads copies of the parents and
/// uploads its delta). Two rows: the time of one write with its
/// propagation (median), and the bytes that came back from the device per
/// write.
///
/// # Errors
/// A sentence saying why no row was measured.
pub fn derive_rows(quick: bool) -> Result<Vec<Row>, String> {
    let info = mmsb::gpu::probe().map_err(|e| e.to_string())?;
    let mib: u64 = if quick { 16 } else { 64 };
    let iters = if quick { 20 } else { 50 };
    let run = |device: bool| -> mmsb::Result<(f64, f64)> {
        let len = mib << 20;
        let state = mmsb::Mmsb::start(mmsb::Config::temporary())?;
        let gpu = mmsb::Location::Gpu(0);
        let a = state.create_page(mmsb::PageSpec::new(len).on(gpu))?;
        let b = state.create_page(mmsb::PageSpec::new(len).on(gpu))?;
        let d = state.create_page(mmsb::PageSpec::new(len).on(gpu))?;
        if device {
            // SAFETY: the kernel reads each input inside its length and
            // writes only its output (tests/data/bytewise_max.ptx).
            let f = unsafe { mmsb::gpu::DeviceFunction::from_ptx(MAX_PTX, "mmsb_test_bytewise_max") }?;
            state.register_device_function("max", 1, f)?;
        } else {
            state.register_function("max", 1, |ins: &[&[u8]], out: &mut [u8]| {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = ins.iter().map(|p| p[i]).max().unwrap_or(0);
                }
            })?;
        }
        state.declare_derived(d, "max", &[a, b])?;
        let down =
            |s: &mmsb::Mmsb| s.stats().gpus.iter().find(|(o, _)| *o == 0).map_or(0, |(_, g)| g.d2h_bytes);
        let mut times = Vec::with_capacity(iters);
        let mut moved = 0;
        for k in 0..iters + 3 {
            let at = (k as u64 * 7_919_993) % (len - 1024);
            let bytes = vec![(k % 250) as u8 + 1; 1024];
            let payload = mmsb::Payload::Sparse(mmsb::SparseDelta::from_pairs([(at, &bytes[..])])?);
            let before = down(&state);
            let t = std::time::Instant::now();
            state.update_page(a, payload)?;
            let dt = t.elapsed().as_secs_f64();
            if k >= 3 {
                times.push(dt);
                moved += down(&state) - before;
            }
        }
        times.sort_by(f64::total_cmp);
        Ok((times[times.len() / 2], moved as f64 / iters as f64))
    };
    let fail = |e: mmsb::Error| format!("the derived-page rows failed on {}: {e}", info.name);
    let (dev_t, dev_b) = run(true).map_err(fail)?;
    let (cpu_t, cpu_b) = run(false).map_err(fail)?;
    // A chain of device functions, run ahead (every level queued at once)
    // and level by level, alternated.
    let mut ahead = Vec::new();
    let mut by_level = Vec::new();
    for round in 0..4 {
        let on = round % 2 == 0;
        mmsb::internals::set_run_ahead(on);
        let t = chain_write(iters).map_err(fail);
        mmsb::internals::set_run_ahead(true);
        if on { &mut ahead } else { &mut by_level }.push(t?);
    }
    let mid = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (ahead, by_level) = (mid(&mut ahead), mid(&mut by_level));
    let base = format!("gpu_derive_{mib}m_1k_write");
    Ok(vec![
        Row::latency(
            &format!("{base}_device_fn"),
            dev_t * 1e6,
            "us",
            "the same derivation by a CPU function",
            cpu_t * 1e6,
            None,
        )
        .on(&info.name),
        Row::latency(
            &format!("gpu_derive_chain_{CHAIN_LEVELS}x4k_write_run_ahead"),
            ahead * 1e6,
            "us",
            "the same chain level by level",
            by_level * 1e6,
            None,
        )
        .on(&info.name),
        Row::latency(
            &format!("{base}_bytes_down"),
            dev_b,
            "B",
            "the same derivation by a CPU function",
            cpu_b,
            None,
        )
        .on(&info.name),
    ])
}

/// Levels of the chain of [`chain_write`].
const CHAIN_LEVELS: usize = 8;

/// A 4 KiB GPU page `a` and a chain of [`CHAIN_LEVELS`] derived pages on
/// the same device, each the device function max of the one above and a
/// zero page (so each level copies the write down): the median time of a
/// 64-byte write to `a` with its propagation through the chain.
fn chain_write(iters: usize) -> mmsb::Result<f64> {
    const LEN: u64 = 4096;
    let state = mmsb::Mmsb::start(mmsb::Config::temporary())?;
    let gpu = mmsb::Location::Gpu(0);
    let a = state.create_page(mmsb::PageSpec::new(LEN).on(gpu))?;
    let zero = state.create_page(mmsb::PageSpec::new(LEN).on(gpu))?;
    // SAFETY: the kernel reads each input inside its length and writes
    // only its output (tests/data/bytewise_max.ptx).
    let f = unsafe { mmsb::gpu::DeviceFunction::from_ptx(MAX_PTX, "mmsb_test_bytewise_max") }?;
    state.register_device_function("max", 1, f)?;
    let mut above = a;
    for _ in 0..CHAIN_LEVELS {
        let d = state.create_page(mmsb::PageSpec::new(LEN).on(gpu))?;
        state.declare_derived(d, "max", &[above, zero])?;
        above = d;
    }
    let mut times = Vec::with_capacity(iters);
    for k in 0..iters + 3 {
        let at = (k as u64 * 64) % (LEN - 64);
        let payload =
            mmsb::Payload::Sparse(mmsb::SparseDelta::from_pairs([(at, &[(k % 250) as u8 + 1; 64][..])])?);
        let t = std::time::Instant::now();
        state.update_page(a, payload)?;
        if k >= 3 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

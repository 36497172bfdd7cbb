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

/// The GPU issue's targets, as ratios to the device copy: 0.85 for the
/// kernels on large pages, 0.6 for the 100,000-delta batch (one launch);
/// none for the copy itself and the end-to-end batch.
fn ratio_target(name: &str) -> Option<f64> {
    if name.starts_with("cuda_") || name.ends_with("_e2e") {
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

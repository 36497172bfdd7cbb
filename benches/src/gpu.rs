//! GPU rows, from [`mmsb::gpu::bench`]: every kernel next to the device's
//! own device-to-device copy bandwidth measured in the same run.

use crate::Row;
use mmsb::gpu::bench::{run, BenchConfig};

/// The GPU rows on device 0, or why there are none.
///
/// # Errors
/// A sentence saying why no GPU row was measured (no driver, no device,
/// or the device failed).
pub fn rows(quick: bool) -> Result<Vec<Row>, String> {
    let info = mmsb::gpu::probe().map_err(|e| format!("no GPU: {e}"))?;
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
                None,
            )
            .on(&device),
            // Latency rows have no limit: the figure stands alone.
            None => Row::latency(&r.name, r.seconds * 1e6, "us", &r.note, f64::NAN, None).on(&device),
        })
        .collect())
}

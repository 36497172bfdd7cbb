//! The GPU layer: the only module of the crate that touches the CUDA driver.
//!
//! | layer | file | what it does |
//! |---|---|---|
//! | driver calls | `driver.rs` | `Result` wrappers over `cudarc::driver::result`; all `unsafe` FFI |
//! | memory | `pool.rs` | pooled device blocks (size classes, slabs, cache, stats) |
//! | packing | `batch.rs` | many deltas → one staging image of descriptors, runs, masks and data |
//! | ranges | `range.rs` | typed device ranges: made from allocations, checked slices and checks |
//! | device | `device.rs` | context, stream, cached kernel module, pinned staging, delta queue |
//!
//! Device memory is named by typed device ranges (`DeviceRange`), which
//! can only be taken from a live allocation; a function that still takes a
//! raw device address is `unsafe`. The benchmark harness lives in the
//! `mmsb-benches` crate and reaches the layer through the crate's
//! `internals` feature.
//!
//! The driver is loaded at run time. Without a driver library, or with no
//! device, [`probe`] and [`open`] return [`Error::NoDevice`] and never
//! panic, so the crate runs (CPU only) on machines with no GPU.
//!
//! # When a delta reaches the device
//!
//! Deltas to GPU pages are validated on the host, logged, queued per device
//! (deltas to the same page are merged while queued) and applied by
//! [`Gpu::flush`] with one upload and one `mmsb_apply_batch` launch, or,
//! when the queue holds at most 16 runs and 2 KiB of sparse or whole-page
//! bytes, one `mmsb_apply_inline` launch that carries the bytes in its
//! parameters (no upload). The page's epoch advances when the delta is accepted. What the caller is
//! guaranteed depends on [`GpuApply`] (`Config::gpu_apply`):
//!
//! - [`GpuApply::Immediate`] (the default): `update_page`/`update_batch`
//!   flush every device whose pages the call touched before returning. When
//!   the call returns `Ok`, its deltas are on the device; when the device
//!   fails, that call returns the error.
//! - [`GpuApply::Deferred`]: the queue is flushed by the next read of a page
//!   on that device (`query_page`, compare, diff, snapshot, checkpoint), by
//!   [`crate::Mmsb::flush_gpu`], or when it grows past its threshold inside
//!   a write. Many small writes then share one upload and one launch, and a
//!   device failure is reported by whichever of those calls flushes.
//!
//! In both modes reads flush first, so they always see every accepted
//! delta, and the log holds every accepted delta, so replay rebuilds the
//! state. A flush that fails inside a write has lost deltas that were
//! already logged: the write returns the error and the log is poisoned
//! (memory and log disagree), exactly as for a failed host apply; recover
//! by reopening the state, which replays the log.
//!
//! ```
//! match mmsb::gpu::probe() {
//!     Ok(info) => println!("GPU {}: {}", info.ordinal, info.name),
//!     Err(e) => println!("CPU only: {e}"),
//! }
//! ```

pub(crate) mod batch;
mod device;
mod driver;
mod function;
#[cfg(feature = "internals")]
pub(crate) mod internals;
mod pool;
pub(crate) mod ptx;
mod range;
mod storage;

pub(crate) use device::opened as opened_device;
pub use device::{device_count, open, probe, DeviceExport, Gpu, GpuInfo};
pub(crate) use device::{GpuPage, Ran};
pub use function::{DeviceFunction, DEFAULT_BLOCK};
pub use pool::GpuPoolStats;
pub(crate) use storage::Storage;

use crate::delta::Payload;
use crate::types::page::Location;
use crate::{Error, Result};

/// Create a zeroed GPU page for `location` (`Gpu(n)` or `Unified`).
pub(crate) fn create_page(location: Location, len: u64) -> Result<GpuPage> {
    match location {
        Location::Gpu(n) => open(n)?.alloc_page(len, false),
        Location::Unified => open(0)?.alloc_page(len, true),
        Location::Cpu => Err(Error::UnsupportedLocation { op: "gpu::create_page", location }),
    }
}

/// Check that `location` can hold pages now: the CPU always can; a GPU
/// location needs its device to open.
///
/// # Errors
/// [`Error::NoDevice`] when the device is missing.
pub(crate) fn check_location(location: Location) -> Result<()> {
    match location {
        Location::Cpu => Ok(()),
        Location::Gpu(n) => open(n).map(drop),
        Location::Unified => open(0).map(drop),
    }
}

/// Create a GPU page for `location` holding a copy of `bytes`.
pub(crate) fn page_from(location: Location, bytes: &[u8]) -> Result<GpuPage> {
    match location {
        Location::Gpu(n) => open(n)?.page_from(bytes, false),
        Location::Unified => open(0)?.page_from(bytes, true),
        Location::Cpu => Err(Error::UnsupportedLocation { op: "gpu::page_from", location }),
    }
}

/// Number of differing bytes of two pages on the same device, and the
/// difference mask (host `u64` words, bit `i` for byte `i`).
pub(crate) fn compare(a: &GpuPage, b: &GpuPage) -> Result<(Vec<u64>, u64)> {
    check_pair(a, b)?;
    a.gpu().compare_ranges(a.range(), b.range())
}

/// The payload that turns `old` into `new` (same device, same length):
/// identical to [`Payload::diff`] of their bytes. The comparison runs on the
/// device; what comes back is a summary of its mask and the bytes the
/// payload holds (see [`Gpu::changed_runs`]).
pub(crate) fn diff(old: &GpuPage, new: &GpuPage) -> Result<Payload> {
    check_pair(old, new)?;
    let (runs, _) = old.gpu().changed_runs(old.range(), new.range())?;
    crate::delta::diff_from_fetch(runs, old.len(), |ranges| {
        let mut parts = new.gpu().gather(&[(new.range(), ranges)])?;
        Ok(parts.pop().unwrap_or_default())
    })
}

/// The bytes of `ranges` of each page (pages of one device), packed in
/// order, gathered on the device by one launch and downloaded at once (see
/// [`Gpu::gather`]).
pub(crate) fn gather(pages: &[(&GpuPage, &[std::ops::Range<u64>])]) -> Result<Vec<Vec<u8>>> {
    let Some((first, _)) = pages.first() else { return Ok(Vec::new()) };
    let parts: Vec<_> = pages.iter().map(|(p, r)| (p.range(), *r)).collect();
    first.gpu().gather(&parts)
}

/// Run device function `f` for a derived page whose current bytes are
/// `old`, over `inputs` (pages of `old`'s device, in argument order). The
/// output is compared with `old` on the device; `None` when they are
/// equal, else the payload that turns `old` into the output (the one
/// [`Payload::diff`] of the two would give; only the bytes it holds are
/// downloaded) and the output page.
///
/// # Errors
/// [`Error::Gpu`] (a PTX the driver refuses, a faulting kernel, an input
/// on another device), [`Error::GpuMemory`].
pub(crate) fn recompute(
    f: &DeviceFunction,
    old: &GpuPage,
    inputs: &[&GpuPage],
) -> Result<Option<(Payload, GpuPage)>> {
    let mut chain = old.gpu().chain();
    let new = f.queue(&mut chain, old, inputs.iter().map(|p| (*p).clone()).collect())?;
    // Equal pages diff to nothing, and nothing of the output is downloaded.
    Ok(chain.run()?.payload(0)?.map(|payload| (payload, new)))
}

/// Load device function `f` on the device of `page` (once per device).
///
/// # Errors
/// [`Error::Gpu`] when the driver refuses the PTX.
pub(crate) fn load_function(f: &DeviceFunction, page: &GpuPage) -> Result<()> {
    f.module(page.gpu()).map(drop)
}

/// A copy of `page` on its device with `payloads` applied: the new bytes
/// of a page a write changes, for the device recomputes below it.
pub(crate) fn staged_copy(page: &GpuPage, payloads: &[&Payload]) -> Result<GpuPage> {
    page.gpu().staged_copy(page, payloads)
}

/// A page of device `like`'s GPU holding a copy of `bytes` (an input of a
/// device recompute that is not on that device).
pub(crate) fn upload_like(like: &GpuPage, bytes: &[u8]) -> Result<GpuPage> {
    like.gpu().page_from(bytes, false)
}

/// Whether `a` and `b` are the same page memory (not just equal bytes).
pub(crate) fn same_page(a: &GpuPage, b: &GpuPage) -> bool {
    a.is(b)
}

/// Whether two GPU pages live on the same device.
pub(crate) fn same_device(a: &GpuPage, b: &GpuPage) -> bool {
    std::sync::Arc::ptr_eq(a.gpu(), b.gpu())
}

/// When deltas accepted for GPU pages are applied on the device; see the
/// module docs for what each mode guarantees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum GpuApply {
    /// Each write applies its GPU deltas before it returns.
    #[default]
    Immediate,
    /// Writes queue GPU deltas; reads, [`crate::Mmsb::flush_gpu`] and a
    /// full queue apply them.
    Deferred,
}

/// After a commit: flush the devices behind `pages` (every one in
/// [`GpuApply::Immediate`], those whose queue has grown past its threshold
/// in [`GpuApply::Deferred`]).
pub(crate) fn after_commit<'a>(mode: GpuApply, pages: impl Iterator<Item = &'a GpuPage>) -> Result<()> {
    // Almost always one device: a short list beats a set.
    let mut seen: Vec<&std::sync::Arc<Gpu>> = Vec::new();
    for p in pages {
        let g = p.gpu();
        if !seen.iter().any(|s| std::sync::Arc::ptr_eq(s, g)) {
            seen.push(g);
            if mode == GpuApply::Immediate || g.flush_due() {
                g.flush()?;
            }
        }
    }
    Ok(())
}

fn check_pair(a: &GpuPage, b: &GpuPage) -> Result<()> {
    if a.len() != b.len() {
        return Err(Error::invalid_delta(
            None,
            format!("cannot diff pages of {} and {} bytes", a.len(), b.len()),
        ));
    }
    if !same_device(a, b) {
        return Err(Error::UnsupportedLocation {
            op: "gpu compare of pages on different devices",
            location: Location::Gpu(b.gpu().info().ordinal),
        });
    }
    Ok(())
}

/// Merge two dense deltas with the `mmsb_delta_merge` kernel on device 0:
/// the same result as [`Payload::merge`] of the two.
///
/// # Errors
/// [`Error::NoDevice`]; [`Error::InvalidDelta`] for different lengths.
pub fn merge_dense(first: &crate::DenseDelta, second: &crate::DenseDelta) -> Result<crate::DenseDelta> {
    open(0)?.merge_dense(first, second)
}

/// Apply every queued delta on every opened device.
///
/// # Errors
/// The first device error.
pub fn flush_all() -> Result<()> {
    let Ok(n) = device_count() else { return Ok(()) };
    for i in 0..n {
        if let Some(g) = device::opened(i) {
            g.flush()?;
        }
    }
    Ok(())
}

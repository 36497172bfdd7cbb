//! The GPU layer's plumbing for the project's own benchmarks and tests,
//! re-exported as `mmsb::internals` under the `internals` feature. Not part
//! of the supported API: it changes whenever the GPU layer does.
//!
//! Everything here is safe and typed. Device memory is a pooled
//! [`DeviceBlock`] and the [`DeviceRange`]s taken from it; every operation
//! checks that its ranges are on its device and of fitting lengths.
//! Asynchronous launches go through [`launches`], whose scope waits for the
//! device before the ranges' borrows end; sparse runs and batched updates
//! are checked when their [`RunTable`] or [`Updates`] is built.

pub use super::pool::DeviceBlock;
pub use super::range::{DeviceRange, RangeError};
pub use gpu_kernels::body::RUN_CHUNK;
pub use shared_types::RunDesc;

use super::batch::{self, Item};
use super::device::{self, Gpu};
use crate::delta::{Payload, Run};
use crate::Result;
use std::marker::PhantomData;

/// A pooled device block of `len` bytes on `gpu` (contents undefined).
///
/// # Errors
/// [`crate::Error::GpuMemory`] when the device is out of memory; driver
/// errors.
pub fn alloc(gpu: &Gpu, len: u64) -> Result<DeviceBlock> {
    gpu.alloc(len)
}

/// Copy `src` into `dst` (same length, on `gpu`'s device) and wait.
///
/// # Errors
/// [`crate::Error::Gpu`] around a [`RangeError`] for a range on another
/// device or of another length; driver errors.
pub fn upload(gpu: &Gpu, dst: DeviceRange<'_>, src: &[u8]) -> Result<()> {
    gpu.upload(dst, src)
}

/// Apply `gpu`'s queued deltas, then copy `src` into `out` (same length)
/// and wait.
///
/// # Errors
/// As [`upload`].
pub fn download(gpu: &Gpu, src: DeviceRange<'_>, out: &mut [u8]) -> Result<()> {
    gpu.download(src, out)
}

/// Wait for all work queued on `gpu`'s stream.
///
/// # Errors
/// Driver errors, including those of earlier asynchronous work.
pub fn sync(gpu: &Gpu) -> Result<()> {
    gpu.sync()
}

/// One `cuMemAlloc` of `len` bytes on `gpu` and its `cuMemFree`: the
/// driver calls the pool saves.
///
/// # Errors
/// Driver errors.
pub fn driver_alloc_free(gpu: &Gpu, len: u64) -> Result<()> {
    gpu.driver_alloc_free(len)
}

/// Cut `runs` into [`RunDesc`] pieces of at most `chunk` bytes whose inner
/// boundaries fall on 16-byte page offsets, with data offsets into the
/// runs' concatenated bytes (what the host's packer does with
/// [`RUN_CHUNK`]).
pub fn run_descs(runs: &[Run], chunk: u64) -> Vec<RunDesc> {
    device::run_descs(runs, chunk)
}

/// Run `f`, which may launch asynchronous work on `gpu` through the
/// [`Launches`] it is given, then wait for the device (also when `f`
/// fails or panics). Every range a launch takes is borrowed for `'s`,
/// which outlives this call, so no allocation the work uses can be
/// released before the work has finished.
///
/// ```no_run
/// # fn f(dev: &mmsb::gpu::Gpu) -> mmsb::Result<()> {
/// use mmsb::internals::gpu::{alloc, launches};
/// let block = alloc(dev, 4096)?;
/// launches(dev, |l| l.zero(block.range()))?;
/// # Ok(())
/// # }
/// ```
///
/// A block that could be dropped inside the scope cannot be launched on:
///
/// ```compile_fail
/// # fn f(dev: &mmsb::gpu::Gpu) -> mmsb::Result<()> {
/// use mmsb::internals::gpu::{alloc, launches};
/// launches(dev, |l| {
///     let block = alloc(dev, 4096)?;
///     l.zero(block.range()) // `block` does not live long enough
/// })
/// # }
/// ```
///
/// # Errors
/// The first error of `f`, or else the wait's.
pub fn launches<'s, R>(gpu: &'s Gpu, f: impl FnOnce(&Launches<'s>) -> Result<R>) -> Result<R> {
    /// Waits for the device when a panic unwinds through the scope.
    struct WaitOnUnwind<'g>(&'g Gpu);
    impl Drop for WaitOnUnwind<'_> {
        fn drop(&mut self) {
            // Nothing can be reported from here; the device's next
            // operation reports a failed stream.
            let _ = self.0.sync();
        }
    }
    let guard = WaitOnUnwind(gpu);
    let out = f(&Launches { gpu, _scope: PhantomData });
    std::mem::forget(guard);
    let waited = gpu.sync();
    let out = out?;
    waited?;
    Ok(out)
}

/// Asynchronous launches on one device's stream, inside [`launches`].
///
/// Each launch checks its ranges (on this device, lengths, alignment,
/// outputs apart from inputs) before it queues anything; the scope waits
/// for the device at its end.
pub struct Launches<'s> {
    gpu: &'s Gpu,
    /// Invariant in `'s`: ranges borrowed for less than the scope cannot
    /// be passed in.
    _scope: PhantomData<&'s mut &'s ()>,
}

impl std::fmt::Debug for Launches<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launches").field("device", &self.gpu.info().ordinal).finish()
    }
}

// SAFETY (every method below): each range, run table and batch image is
// borrowed for 's, which outlives the `launches` call that made `self`;
// that call waits for the stream before it returns or unwinds, so the
// allocations stay allocated until the queued work has finished.
impl<'s> Launches<'s> {
    /// Copy `src` to `dst` (same length, apart) with `cuMemcpyDtoDAsync`.
    ///
    /// # Errors
    /// [`crate::Error::Gpu`] around a [`RangeError`] when the ranges do not
    /// fit; driver errors.
    pub fn memcpy_dtod(&self, dst: DeviceRange<'s>, src: DeviceRange<'s>) -> Result<()> {
        // SAFETY: see the comment on this impl.
        unsafe { self.gpu.memcpy_dtod(dst, src) }
    }

    /// Copy `src` to `dst` (same length, apart) with the page copy kernel.
    ///
    /// # Errors
    /// As [`Launches::memcpy_dtod`].
    pub fn copy(&self, dst: DeviceRange<'s>, src: DeviceRange<'s>) -> Result<()> {
        // SAFETY: see the comment on this impl.
        unsafe { self.gpu.copy(dst, src) }
    }

    /// Zero `dst` with the page zero kernel.
    ///
    /// # Errors
    /// As [`Launches::memcpy_dtod`].
    pub fn zero(&self, dst: DeviceRange<'s>) -> Result<()> {
        // SAFETY: see the comment on this impl.
        unsafe { self.gpu.zero(dst) }
    }

    /// Set every byte of `dst` to `value` with `cuMemsetD8Async`.
    ///
    /// # Errors
    /// As [`Launches::memcpy_dtod`].
    pub fn fill(&self, dst: DeviceRange<'s>, value: u8) -> Result<()> {
        // SAFETY: see the comment on this impl.
        unsafe { self.gpu.fill(dst, value) }
    }

    /// Dense masked apply: `dst` takes the bytes of `data` (same length)
    /// whose bits are set in `mask` (at least `ceil(len / 32)` 4-aligned
    /// `u32` words); `dst` apart from both.
    ///
    /// # Errors
    /// As [`Launches::memcpy_dtod`].
    pub fn apply_dense(
        &self,
        dst: DeviceRange<'s>,
        data: DeviceRange<'s>,
        mask: DeviceRange<'s>,
    ) -> Result<()> {
        // SAFETY: see the comment on this impl.
        unsafe { self.gpu.apply_dense(dst, data, mask) }
    }

    /// Compare `a` and `b` (same length): the difference mask to `mask` (at
    /// least `ceil(len / 32)` 4-aligned `u32` words), the number of
    /// differing bytes added to the `u64` in `count` (8 bytes, 8-aligned;
    /// zero it first with [`Launches::fill`]); outputs apart from
    /// everything else.
    ///
    /// # Errors
    /// As [`Launches::memcpy_dtod`].
    pub fn compare(
        &self,
        a: DeviceRange<'s>,
        b: DeviceRange<'s>,
        mask: DeviceRange<'s>,
        count: DeviceRange<'s>,
    ) -> Result<()> {
        // SAFETY: see the comment on this impl.
        unsafe { self.gpu.compare(a, b, mask, count) }
    }

    /// Sparse apply of the runs of `runs` to `page` (the length the table
    /// was checked against), their bytes read from `data` (at least the
    /// table's data length, apart from `page` by whole 16-byte blocks).
    ///
    /// # Errors
    /// As [`Launches::memcpy_dtod`].
    pub fn apply_sparse(
        &self,
        page: DeviceRange<'s>,
        data: DeviceRange<'s>,
        runs: &'s RunTable,
    ) -> Result<()> {
        const OP: &str = "sparse apply";
        page.exactly(OP, runs.page_len)?;
        data.at_least(OP, runs.data_len)?;
        // SAFETY: see the comment on this impl; RunTable::new checked that
        // its runs are in order, apart, inside a page of page_len bytes and
        // read inside data_len bytes, which the two checks above match.
        unsafe { self.gpu.apply_sparse(page, data, runs.block.range(), runs.count) }
    }

    /// The batched apply kernel over `image`: every update it was packed
    /// from.
    ///
    /// # Errors
    /// As [`Launches::memcpy_dtod`].
    pub fn apply_batch(&self, image: &'s BatchImage<'s>) -> Result<()> {
        // SAFETY: see the comment on this impl; the image was packed by
        // Updates::upload from updates checked by Updates::new (payloads fit
        // their ranges, ranges apart and on the image's device), whose
        // pages are borrowed for the image's 's, and no one else can write
        // the image block.
        unsafe { self.gpu.apply_batch(image.block.range(), image.descs) }
    }
}

/// Sparse run descriptors on the device, checked against the page and
/// data lengths they are for.
pub struct RunTable {
    block: DeviceBlock,
    count: u64,
    page_len: u64,
    data_len: u64,
}

impl std::fmt::Debug for RunTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunTable")
            .field("runs", &self.count)
            .field("page_len", &self.page_len)
            .field("data_len", &self.data_len)
            .finish()
    }
}

impl RunTable {
    /// Check `runs` (in order, apart, inside a page of `page_len` bytes,
    /// their bytes inside a data buffer of `data_len` bytes) and upload them
    /// to `gpu`.
    ///
    /// # Errors
    /// [`crate::Error::Gpu`] around [`RangeError::BadEntry`] for a run that
    /// does not fit; device errors.
    pub fn new(gpu: &Gpu, runs: &[RunDesc], page_len: u64, data_len: u64) -> Result<Self> {
        check_runs(runs, page_len, data_len)?;
        let bytes: &[u8] = bytemuck::cast_slice(runs);
        let block = gpu.alloc(bytes.len() as u64)?;
        gpu.upload(block.range().slice(0, bytes.len() as u64)?, bytes)?;
        Ok(Self { block, count: runs.len() as u64, page_len, data_len })
    }

    /// Number of run descriptors.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether the table holds no run.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// Check that `runs` are in order, apart, inside a page of `page_len` bytes
/// and read inside `data_len` bytes.
fn check_runs(runs: &[RunDesc], page_len: u64, data_len: u64) -> std::result::Result<(), RangeError> {
    let bad = |index, reason| RangeError::BadEntry { op: "run table", index, reason };
    let mut prev_end = 0;
    for (i, r) in runs.iter().enumerate() {
        let end = r.offset.checked_add(r.len).filter(|&e| e <= page_len);
        let Some(end) = end else { return Err(bad(i, "the run reaches past the page")) };
        if r.offset < prev_end {
            return Err(bad(i, "the run is out of order or overlaps the one before"));
        }
        if r.data_offset.checked_add(r.len).is_none_or(|e| e > data_len) {
            return Err(bad(i, "the run's bytes reach past the data"));
        }
        prev_end = end;
    }
    Ok(())
}

/// Deltas for distinct device ranges, checked once, for the batched apply
/// kernel: applied end to end with [`Updates::apply`] (pack into pinned
/// staging, one upload, one launch, wait, as a flush does), or packed once
/// into a [`BatchImage`] whose launch alone can be timed.
pub struct Updates<'a> {
    device: Option<u32>,
    items: Vec<Item<'a>>,
}

impl std::fmt::Debug for Updates<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updates").field("device", &self.device).field("len", &self.items.len()).finish()
    }
}

impl<'a> Updates<'a> {
    /// Check each payload against its range, the ranges on one device and
    /// apart.
    ///
    /// # Errors
    /// [`crate::Error::InvalidDelta`] for a payload that does not fit its
    /// range; [`crate::Error::Gpu`] around a [`RangeError`] for ranges on
    /// two devices or overlapping.
    pub fn new(targets: impl IntoIterator<Item = (DeviceRange<'a>, &'a Payload)>) -> Result<Self> {
        const OP: &str = "batched updates";
        let mut device = None;
        let mut items = Vec::new();
        for (range, payload) in targets {
            payload.check(range.len())?;
            let d = *device.get_or_insert(range.device());
            range.on(OP, d)?;
            items.push(Item { page: range.ptr(), len: range.len(), payload });
        }
        let mut spans: Vec<(u64, u64)> =
            items.iter().filter(|i| i.len > 0).map(|i| (i.page, i.len)).collect();
        spans.sort_unstable();
        if spans.windows(2).any(|w| w[0].0 + w[0].1 > w[1].0) {
            return Err(RangeError::Overlap { op: OP }.into());
        }
        Ok(Self { device, items })
    }

    /// Number of updates.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there is no update.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes of the packed image (descriptors, runs, masks and data).
    pub fn image_len(&self) -> u64 {
        batch::plan(&self.items).lay.total()
    }

    fn check_device(&self, op: &'static str, gpu: &Gpu) -> Result<()> {
        match self.device {
            Some(d) if d != gpu.info().ordinal => {
                Err(RangeError::WrongDevice { op, expected: gpu.info().ordinal, found: d }.into())
            }
            _ => Ok(()),
        }
    }

    /// Apply every update on `gpu` as a flush does (pack into pinned
    /// staging, one upload, one launch) and wait.
    ///
    /// # Errors
    /// [`crate::Error::Gpu`] around a [`RangeError`] when the ranges are on
    /// another device; device errors.
    pub fn apply(&self, gpu: &Gpu) -> Result<()> {
        self.check_device("batched apply", gpu)?;
        // SAFETY: Updates::new checked every payload against its range and
        // the ranges apart and on one device, checked above to be gpu's;
        // the ranges are borrowed for 'a, which outlives this call.
        unsafe { gpu.apply_items(&self.items) }
    }

    /// Pack the image into `host` (at least [`Updates::image_len`] bytes),
    /// upload it to a new block on `gpu` and return it, ready to launch.
    ///
    /// # Errors
    /// As [`Updates::apply`]; [`RangeError::TooShort`] for a short `host`.
    pub fn upload(&self, gpu: &Gpu, host: &mut [u8]) -> Result<BatchImage<'a>> {
        const OP: &str = "batch image";
        self.check_device(OP, gpu)?;
        let plan = batch::plan(&self.items);
        let total = plan.lay.total();
        if (host.len() as u64) < total {
            return Err(RangeError::TooShort { op: OP, needed: total, found: host.len() as u64 }.into());
        }
        let block = gpu.alloc(total)?;
        let range = block.range().slice(0, total)?;
        batch::pack_planned(&plan, &self.items, host, range.ptr());
        gpu.upload(range, &host[..total as usize])?;
        Ok(BatchImage { block, descs: plan.lay.descs, _pages: PhantomData })
    }

    /// Pack the image again into `host` (at least [`Updates::image_len`]
    /// bytes) for `image`'s address, without touching the device: the
    /// host half of [`Updates::apply`], to time alone.
    ///
    /// # Errors
    /// [`crate::Error::Gpu`] around [`RangeError::TooShort`] for a short
    /// `host` or an image of other updates.
    pub fn pack(&self, host: &mut [u8], image: &BatchImage<'_>) -> Result<()> {
        const OP: &str = "batch pack";
        let plan = batch::plan(&self.items);
        let total = plan.lay.total();
        if (host.len() as u64) < total {
            return Err(RangeError::TooShort { op: OP, needed: total, found: host.len() as u64 }.into());
        }
        let range = image.block.range();
        range.at_least(OP, total)?;
        batch::pack_planned(&plan, &self.items, host, range.ptr());
        Ok(())
    }
}

/// A packed batch on the device, made by [`Updates::upload`]; launched
/// with [`Launches::apply_batch`]. It borrows the updates' pages for `'a`.
pub struct BatchImage<'a> {
    block: DeviceBlock,
    descs: u64,
    _pages: PhantomData<&'a ()>,
}

impl std::fmt::Debug for BatchImage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchImage").field("bytes", &self.block.len()).field("descs", &self.descs).finish()
    }
}

impl BatchImage<'_> {
    /// Number of apply descriptors (blocks of the launch).
    pub fn descs(&self) -> u64 {
        self.descs
    }

    /// Bytes of the image.
    pub fn len(&self) -> u64 {
        self.block.len()
    }

    /// Always `false`: an image holds at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    /// A range at a made-up address: these tests never reach a device.
    fn fake(ptr: u64, len: u64, device: u32) -> DeviceRange<'static> {
        // SAFETY: the range is only checked and packed, never launched on.
        unsafe { DeviceRange::new(ptr, len, device) }
    }

    fn run(offset: u64, len: u64, data_offset: u64) -> RunDesc {
        RunDesc { offset, len, data_offset }
    }

    #[test]
    fn run_tables_are_checked() {
        let ok = [run(0, 10, 0), run(10, 5, 10), run(20, 12, 20)];
        assert_eq!(check_runs(&ok, 32, 32), Ok(()));
        assert_eq!(check_runs(&[], 0, 0), Ok(()));
        let bad = |runs: &[RunDesc], page, data| match check_runs(runs, page, data) {
            Err(RangeError::BadEntry { index, .. }) => index,
            other => panic!("{other:?}"),
        };
        assert_eq!(bad(&ok, 31, 32), 2);
        assert_eq!(bad(&ok, 32, 31), 2);
        assert_eq!(bad(&[run(0, 10, 0), run(9, 1, 10)], 32, 32), 1);
        assert_eq!(bad(&[run(5, 1, 0), run(0, 1, 1)], 32, 32), 1);
        assert_eq!(bad(&[run(u64::MAX, 2, 0)], u64::MAX, 32), 0);
        assert_eq!(bad(&[run(0, 2, u64::MAX)], 32, u64::MAX), 0);
    }

    #[test]
    fn updates_are_checked_when_built() {
        let full = Payload::Full(vec![1; 100]);
        let short = Payload::Full(vec![1; 99]);
        let u = Updates::new([(fake(0x1000, 100, 0), &full), (fake(0x1064, 100, 0), &full)])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(u.len(), 2);
        assert!(u.image_len() >= 2 * 100 + 2 * 64);
        assert!(Updates::new(std::iter::empty()).is_ok_and(|u| u.is_empty()));
        let err = |r: Result<Updates<'_>>| match r {
            Err(Error::Gpu { source, .. }) => source.downcast::<RangeError>().map(|e| *e).ok(),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("accepted"),
        };
        let overlap = Updates::new([(fake(0x1000, 100, 0), &full), (fake(0x1063, 100, 0), &full)]);
        assert_eq!(err(overlap), Some(RangeError::Overlap { op: "batched updates" }));
        let devices = Updates::new([(fake(0x1000, 100, 0), &full), (fake(0x1000, 100, 1), &full)]);
        assert!(matches!(err(devices), Some(RangeError::WrongDevice { expected: 0, found: 1, .. })));
        let misfit = Updates::new([(fake(0x1000, 100, 0), &short)]);
        assert!(matches!(misfit, Err(Error::InvalidDelta { .. })));
    }
}

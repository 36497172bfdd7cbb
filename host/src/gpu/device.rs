//! One GPU: context, stream, the cached kernel module, the device pool, the
//! pinned staging buffers and the queue of deltas waiting for a batched
//! launch.

use super::batch::{self, Item};
use super::driver::{self, DevicePtr, Module, Pinned};
use super::pool::{DeviceBlock, DevicePool, GpuPoolStats, DEFAULT_CACHE_BUDGET};
use super::range::DeviceRange;
use crate::delta::{DenseDelta, Payload, Run};
use crate::{Error, Result};
use cudarc::driver::{sys, CudaContext, CudaStream};
use gpu_kernels::body::{lanes, windows, BLOCK};
use gpu_kernels::names;
use parking_lot::Mutex;
use shared_types::{ApplyDesc, MergeArgs, PageArgs};
use std::collections::HashMap;
use std::ffi::c_void;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, OnceLock};
#[cfg(any(test, feature = "internals"))]
use {gpu_kernels::body::piece_len, shared_types::RunDesc};

/// Largest pinned staging chunk for uploads and downloads.
const STAGING_CHUNK: usize = 64 << 20;
/// Queued payload bytes that trigger a flush.
const FLUSH_BYTES: u64 = 256 << 20;
/// Queued deltas that trigger a flush.
const FLUSH_ITEMS: usize = 1 << 20;

/// What is known about a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuInfo {
    /// Device ordinal.
    pub ordinal: u32,
    /// Marketing name (e.g. "NVIDIA H100 80GB HBM3").
    pub name: String,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// Streaming multiprocessors.
    pub sm_count: u32,
    /// Total device memory in bytes.
    pub total_memory: u64,
    /// Whether managed (unified) memory is supported.
    pub managed_memory: bool,
}

/// The bytes of a GPU page: a pooled device block or a managed range.
pub(crate) enum PageMem {
    Device(DeviceBlock),
    Managed { ptr: DevicePtr, ctx: Arc<CudaContext> },
}

impl PageMem {
    fn ptr(&self) -> DevicePtr {
        match self {
            PageMem::Device(b) => b.ptr(),
            PageMem::Managed { ptr, .. } => *ptr,
        }
    }
}

impl Drop for PageMem {
    fn drop(&mut self) {
        if let PageMem::Managed { ptr, ctx, .. } = self {
            // A failed free cannot be reported here.
            // SAFETY: ptr came from alloc_managed and is freed once (here).
            // Queued work on this range holds the Arc that owns us, and
            // every operation on a page waits for the stream, so all of it
            // has finished.
            let _ = unsafe { driver::free(ctx, *ptr) };
        }
    }
}

/// A page whose bytes live on a GPU (device or managed memory). A clone
/// is a second handle to the same memory (a propagation holds one to a
/// page it recomputed on the device).
#[derive(Clone)]
pub(crate) struct GpuPage {
    gpu: Arc<Gpu>,
    mem: Arc<PageMem>,
    len: u64,
}

impl std::fmt::Debug for GpuPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuPage")
            .field("device", &self.gpu.info.ordinal)
            .field("ptr", &format_args!("{:#x}", self.mem.ptr()))
            .field("len", &self.len)
            .field("managed", &matches!(*self.mem, PageMem::Managed { .. }))
            .finish()
    }
}

impl GpuPage {
    /// Whether `other` is this page's memory (a handle to the same
    /// allocation, of the same length).
    pub(crate) fn is(&self, other: &GpuPage) -> bool {
        Arc::ptr_eq(&self.mem, &other.mem) && self.len == other.len
    }

    /// The device serving this page.
    pub(crate) fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// The page's bytes, borrowing the page.
    pub(crate) fn range(&self) -> DeviceRange<'_> {
        // SAFETY: mem is one live allocation of at least len bytes on this
        // page's device (a pool block asked for len bytes, or a managed
        // range of len bytes), owned through the Arc the page holds for
        // the borrow's life.
        unsafe { DeviceRange::new(self.mem.ptr(), self.len, self.gpu.info.ordinal) }
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Queue `payload` (validated against the page length by the caller).
    pub(crate) fn enqueue(&self, payload: Payload) {
        self.gpu.enqueue(&self.mem, self.len, payload);
    }

    /// Copy the bytes out (after applying queued deltas).
    pub(crate) fn download(&self) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.len as usize];
        self.gpu.download(self.range(), &mut out)?;
        Ok(out)
    }
}

/// The device memory of one GPU page, handed to another library (a DLPack
/// export for PyTorch, CuPy or JAX). It keeps the memory allocated while
/// it lives, whatever happens to the page meanwhile (a migration, a
/// deletion): an address taken from it never dangles while it is held.
///
/// Writes made through the address by another library bypass the log;
/// [`crate::Mmsb::commit_device_writes`] captures them as a delta.
pub struct DeviceExport {
    gpu: Arc<Gpu>,
    mem: Arc<PageMem>,
    len: u64,
}

impl std::fmt::Debug for DeviceExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceExport")
            .field("device", &self.gpu.info.ordinal)
            .field("address", &format_args!("{:#x}", self.mem.ptr()))
            .field("len", &self.len)
            .finish()
    }
}

impl DeviceExport {
    /// The ordinal of the device holding the memory.
    pub fn device(&self) -> u32 {
        self.gpu.info.ordinal
    }

    /// The device address of the page's first byte (a CUDA `CUdeviceptr`).
    /// Only another library's device code can use it; the memory stays
    /// allocated while this export lives.
    pub fn address(&self) -> u64 {
        self.mem.ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the export covers no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the memory is CUDA managed (unified) memory.
    pub fn is_managed(&self) -> bool {
        matches!(*self.mem, PageMem::Managed { .. })
    }

    /// Wait for all work queued on the device's context, on every stream
    /// (another library's kernels on the primary context included).
    ///
    /// # Errors
    /// [`Error::Gpu`] when the device fails.
    pub fn synchronize(&self) -> Result<()> {
        self.gpu.ctx.synchronize().map_err(driver::gpu_err("cuCtxSynchronize"))
    }
}

impl GpuPage {
    /// Export the page's memory: its queued deltas applied and the
    /// device's stream drained first, so the bytes are current for a
    /// consumer on any stream.
    pub(crate) fn export(&self) -> Result<DeviceExport> {
        self.gpu.flush()?;
        self.gpu.sync()?;
        Ok(DeviceExport { gpu: self.gpu.clone(), mem: self.mem.clone(), len: self.len })
    }

    /// Whether `e` exports this page's memory (and not memory the page has
    /// since left).
    pub(crate) fn is_exported_as(&self, e: &DeviceExport) -> bool {
        Arc::ptr_eq(&self.mem, &e.mem)
    }
}

struct Pending {
    items: Vec<(Arc<PageMem>, u64, Payload)>,
    index: HashMap<DevicePtr, usize, BuildHasherDefault<PtrHasher>>,
    bytes: u64,
}

/// Hasher for device addresses: they are distinct, 256-byte aligned
/// numbers, so one multiply spreads them well (SipHash costs more than the
/// rest of an enqueue).
#[derive(Default)]
struct PtrHasher(u64);

impl Hasher for PtrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v >> 8).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

struct Staging {
    up: Option<Pinned>,
    down: Option<Pinned>,
    device: Option<DeviceBlock>,
}

/// A GPU with its context, stream, kernels, memory pool and delta queue.
///
/// Obtained with [`open`]; shared by every page on the device.
pub struct Gpu {
    info: GpuInfo,
    // Field order is drop order: queued pages and staging go back to the
    // pool before it and the module go, and the context goes last.
    pending: Mutex<Pending>,
    staging: Mutex<Staging>,
    pool: DevicePool,
    module: Module,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
    /// Bytes copied host → device and device → host so far.
    h2d_bytes: std::sync::atomic::AtomicU64,
    d2h_bytes: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("info", &self.info).field("pool", &self.pool).finish()
    }
}

/// Check that the driver library exists and initialises; the number of devices.
fn init_driver() -> std::result::Result<u32, String> {
    let present = std::panic::catch_unwind(|| {
        // SAFETY: probing only tries to open the library by name.
        unsafe { sys::is_culib_present() }
    })
    .unwrap_or(false);
    if !present {
        return Err("the CUDA driver library (libcuda.so) is not installed".into());
    }
    let init = std::panic::catch_unwind(|| {
        cudarc::driver::result::init()?;
        cudarc::driver::result::device::get_count()
    });
    match init {
        Ok(Ok(n)) if n > 0 => Ok(n as u32),
        Ok(Ok(_)) => Err("the CUDA driver reports no devices".into()),
        Ok(Err(e)) => Err(format!("cuInit failed: {e}")),
        Err(_) => Err("the CUDA driver library could not be loaded".into()),
    }
}

fn driver_state() -> &'static std::result::Result<u32, String> {
    static STATE: OnceLock<std::result::Result<u32, String>> = OnceLock::new();
    STATE.get_or_init(init_driver)
}

/// Number of CUDA devices.
///
/// # Errors
/// [`Error::NoDevice`] when the driver is missing, fails to initialise or
/// reports no device. Never panics.
pub fn device_count() -> Result<u32> {
    driver_state().clone().map_err(|reason| Error::NoDevice { reason })
}

static DEVICES: OnceLock<Mutex<HashMap<u32, Arc<Gpu>>>> = OnceLock::new();

/// Device `ordinal` if it has been opened already.
pub(crate) fn opened(ordinal: u32) -> Option<Arc<Gpu>> {
    DEVICES.get().and_then(|m| m.lock().get(&ordinal).cloned())
}

/// Open (once per process) device `ordinal`.
///
/// # Errors
/// [`Error::NoDevice`] when there is no such device; [`Error::Gpu`] when the
/// context, stream or kernel module cannot be set up.
pub fn open(ordinal: u32) -> Result<Arc<Gpu>> {
    let n = device_count()?;
    if ordinal >= n {
        return Err(Error::NoDevice { reason: format!("device {ordinal} requested, {n} present") });
    }
    let mut map = DEVICES.get_or_init(Default::default).lock();
    if let Some(g) = map.get(&ordinal) {
        return Ok(g.clone());
    }
    let g = Arc::new(Gpu::create(ordinal)?);
    map.insert(ordinal, g.clone());
    Ok(g)
}

/// Probe for device 0: its description, or why there is none.
///
/// # Errors
/// As [`open`].
pub fn probe() -> Result<GpuInfo> {
    open(0).map(|g| g.info.clone())
}

fn ceil_div(a: u64, b: u64) -> u64 {
    a.div_ceil(b)
}

impl Gpu {
    fn create(ordinal: u32) -> Result<Gpu> {
        if let Some(why) = crate::gpu::ptx::SKIPPED {
            return Err(Error::Gpu { context: format!("starting device {ordinal}"), source: why.into() });
        }
        let ctx = CudaContext::new(ordinal as usize)
            .map_err(driver::gpu_err(format!("creating a context on device {ordinal}")))?;
        let attr = |a| ctx.attribute(a).map_err(driver::gpu_err("cuDeviceGetAttribute"));
        let sm_count = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?.max(1) as u32;
        let managed = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY)? != 0;
        let info = GpuInfo {
            ordinal,
            name: ctx.name().map_err(driver::gpu_err("cuDeviceGetName"))?,
            compute_capability: ctx.compute_capability().map_err(driver::gpu_err("compute capability"))?,
            sm_count,
            total_memory: ctx.total_mem().map_err(driver::gpu_err("cuDeviceTotalMem"))? as u64,
            managed_memory: managed,
        };
        let stream = ctx.new_stream().map_err(driver::gpu_err("cuStreamCreate"))?;
        let module = Module::load(&ctx, crate::gpu::ptx::PTX, names::ALL)?;
        let pool = DevicePool::new(ctx.clone(), ordinal, DEFAULT_CACHE_BUDGET);
        Ok(Gpu {
            info,
            pending: Mutex::new(Pending { items: Vec::new(), index: HashMap::default(), bytes: 0 }),
            staging: Mutex::new(Staging { up: None, down: None, device: None }),
            pool,
            module,
            stream,
            ctx,
            h2d_bytes: Default::default(),
            d2h_bytes: Default::default(),
        })
    }

    /// The device's description.
    pub fn info(&self) -> &GpuInfo {
        &self.info
    }

    /// Device pool statistics.
    pub fn pool_stats(&self) -> GpuPoolStats {
        use std::sync::atomic::Ordering::Relaxed;
        GpuPoolStats {
            h2d_bytes: self.h2d_bytes.load(Relaxed),
            d2h_bytes: self.d2h_bytes.load(Relaxed),
            ..self.pool.stats()
        }
    }

    fn count_h2d(&self, n: usize) {
        self.h2d_bytes.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    fn count_d2h(&self, n: usize) {
        self.d2h_bytes.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    fn cu_stream(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }

    /// Check that `r` lives on this device.
    fn mine(&self, op: &'static str, r: &DeviceRange<'_>) -> Result<()> {
        Ok(r.on(op, self.info.ordinal)?)
    }

    /// Wait for all queued device work.
    pub(crate) fn sync(&self) -> Result<()> {
        driver::sync(&self.ctx, self.cu_stream())
    }

    /// A pooled device block of `len` bytes (contents undefined).
    #[cfg(feature = "internals")]
    pub(crate) fn alloc(&self, len: u64) -> Result<DeviceBlock> {
        self.pool.alloc(len)
    }

    /// One `cuMemAlloc` of `len` bytes and its `cuMemFree`, bypassing the
    /// pool (the driver calls the pool saves).
    #[cfg(feature = "internals")]
    pub(crate) fn driver_alloc_free(&self, len: u64) -> Result<()> {
        let p = driver::alloc(&self.ctx, self.info.ordinal, len)?;
        // SAFETY: p was just allocated on this context, is used by no work
        // and is freed once.
        unsafe { driver::free(&self.ctx, p) }
    }

    /// A zeroed page of `len` bytes in device memory, or managed memory
    /// when `unified` is set.
    pub(crate) fn alloc_page(self: &Arc<Self>, len: u64, unified: bool) -> Result<GpuPage> {
        let mem = if unified {
            if !self.info.managed_memory {
                return Err(Error::UnsupportedLocation {
                    op: "create_page",
                    location: crate::Location::Unified,
                });
            }
            let ptr = driver::alloc_managed(&self.ctx, self.info.ordinal, len)?;
            let mem = PageMem::Managed { ptr, ctx: self.ctx.clone() };
            // Hints: a device that cannot take them still works correctly.
            // SAFETY: ptr/len is the managed range just allocated, owned by
            // mem, which lives past the sync below.
            if unsafe { driver::advise_managed(&self.ctx, ptr, len, self.info.ordinal) }.is_ok() {
                // SAFETY: as above; the stream is this context's.
                let _ = unsafe {
                    driver::prefetch_managed(&self.ctx, ptr, len, Some(self.info.ordinal), self.cu_stream())
                };
            }
            mem
        } else {
            PageMem::Device(self.pool.alloc(len)?)
        };
        let page = GpuPage { gpu: self.clone(), mem: Arc::new(mem), len };
        // SAFETY: the page is only reachable from here and lives past the
        // sync below (on an error the stream has failed).
        unsafe { self.zero(page.range())? };
        self.sync()?;
        Ok(page)
    }

    /// Load a module of foreign PTX (a device recompute function) on this
    /// device, looking up `entry`.
    ///
    /// # Errors
    /// [`Error::Gpu`] when the driver refuses the PTX or finds no such
    /// entry.
    pub(crate) fn load_module(&self, ptx: &str, entry: &str) -> Result<Module> {
        Module::load(&self.ctx, ptx, &[entry])
    }

    /// Start a run of device recomputes on this device (see [`Chain`]).
    pub(crate) fn chain(self: &Arc<Self>) -> Chain {
        Chain { gpu: self.clone(), jobs: Vec::new() }
    }

    /// The payload that turns a page into `new` (same length), from the
    /// difference mask of the two (kept on the device by [`Chain`]): only
    /// a summary of the mask and the bytes the payload holds come back.
    fn payload_from_mask(&self, mask: &DeviceBlock, new: DeviceRange<'_>) -> Result<Payload> {
        let len = new.len();
        let runs =
            runs_from_mask_bytes(self.nonzero_bytes(mask.range().slice(0, ceil_div(len, 32) * 4)?)?, len);
        crate::delta::diff_from_fetch(runs, len, |ranges| {
            let mut parts = self.gather(&[(new, ranges)])?;
            Ok(parts.pop().unwrap_or_default())
        })
    }

    /// A new page of this device holding `page`'s bytes (copied on the
    /// device) with `payloads` applied in order: a write's new bytes, made
    /// where they will be read.
    pub(crate) fn staged_copy(self: &Arc<Self>, page: &GpuPage, payloads: &[&Payload]) -> Result<GpuPage> {
        self.mine("staged copy", &page.range())?;
        // The page's queued deltas first: the copy starts from its bytes.
        self.flush()?;
        // Every byte of the new page is written by the copy below, so it
        // is not zeroed first.
        let copy = GpuPage {
            gpu: self.clone(),
            mem: Arc::new(PageMem::Device(self.pool.alloc(page.len())?)),
            len: page.len(),
        };
        // SAFETY: both ranges are live pages of this device of one length
        // (distinct allocations), borrowed for the whole call; the flush
        // below waits for the stream.
        unsafe { self.memcpy_dtod(copy.range(), page.range())? };
        for p in payloads {
            copy.enqueue((*p).clone());
        }
        self.flush()?;
        self.sync()?;
        Ok(copy)
    }

    /// A page holding a copy of `bytes`.
    pub(crate) fn page_from(self: &Arc<Self>, bytes: &[u8], unified: bool) -> Result<GpuPage> {
        let page = self.alloc_page(bytes.len() as u64, unified)?;
        self.upload(page.range(), bytes)?;
        Ok(page)
    }

    fn grid_for(&self, work: u64, per_sm: u32) -> u32 {
        let cap = u64::from(self.info.sm_count) * u64::from(per_sm);
        ceil_div(work.max(1), u64::from(BLOCK)).min(cap).max(1) as u32
    }

    /// # Safety
    /// `args` must match the kernel's parameter and address valid memory.
    unsafe fn launch1<T>(&self, name: &str, grid: u32, args: &mut T) -> Result<()> {
        let f = self.module.function(name)?;
        let mut params = [(args as *mut T).cast::<c_void>()];
        // SAFETY: per the caller.
        unsafe { driver::launch(&self.ctx, f, name, grid, BLOCK, self.cu_stream(), &mut params) }
    }

    /// Zero the bytes of `dst` (asynchronous).
    ///
    /// # Safety
    /// The allocation behind `dst` must stay allocated until the stream has
    /// been synchronised.
    pub(crate) unsafe fn zero(&self, dst: DeviceRange<'_>) -> Result<()> {
        self.mine("page zero", &dst)?;
        let (ptr, len) = (dst.ptr(), dst.len());
        let mut a = PageArgs { dst: ptr, len, ..PageArgs::default() };
        let grid = self.grid_for(windows(ptr, len), 64);
        // SAFETY: dst is a live range of this device (checked above) that
        // stays allocated until the stream is synchronised (the caller);
        // PageArgs is the kernel's parameter.
        unsafe { self.launch1(names::PAGE_ZERO, grid, &mut a) }
    }

    /// Set every byte of `dst` to `value` with `cuMemsetD8Async`.
    ///
    /// # Safety
    /// As [`Gpu::zero`].
    pub(crate) unsafe fn fill(&self, dst: DeviceRange<'_>, value: u8) -> Result<()> {
        self.mine("fill", &dst)?;
        // SAFETY: dst is a live range of this device (checked above) that
        // stays allocated until the stream is synchronised (the caller).
        unsafe { driver::memset(&self.ctx, dst.ptr(), value, dst.len(), self.cu_stream()) }
    }

    /// Copy `src` to `dst` (same length, apart) with `cuMemcpyDtoDAsync`.
    ///
    /// # Safety
    /// Both allocations must stay allocated until the stream has been
    /// synchronised.
    pub(crate) unsafe fn memcpy_dtod(&self, dst: DeviceRange<'_>, src: DeviceRange<'_>) -> Result<()> {
        const OP: &str = "cuMemcpyDtoD";
        self.mine(OP, &dst)?;
        self.mine(OP, &src)?;
        src.exactly(OP, dst.len())?;
        dst.apart(OP, &src)?;
        // SAFETY: both are live ranges of this device of the same length,
        // apart (checked above), kept allocated until the stream is
        // synchronised (the caller).
        unsafe { driver::copy_dtod(&self.ctx, dst.ptr(), src.ptr(), dst.len(), self.cu_stream()) }
    }

    /// Copy `src` to `dst` (same length, apart) with the copy kernel
    /// (asynchronous).
    ///
    /// # Safety
    /// As [`Gpu::memcpy_dtod`].
    #[cfg(feature = "internals")]
    pub(crate) unsafe fn copy(&self, dst: DeviceRange<'_>, src: DeviceRange<'_>) -> Result<()> {
        const OP: &str = "page copy";
        self.mine(OP, &dst)?;
        self.mine(OP, &src)?;
        src.exactly(OP, dst.len())?;
        dst.apart(OP, &src)?;
        let (d, len) = (dst.ptr(), dst.len());
        let mut a = PageArgs { dst: d, src: src.ptr(), len, ..PageArgs::default() };
        let grid = self.grid_for(windows(d, len), 64);
        // SAFETY: as in memcpy_dtod; PageArgs is the kernel's parameter.
        unsafe { self.launch1(names::PAGE_COPY, grid, &mut a) }
    }

    /// Dense masked apply (asynchronous): `dst` takes the bytes of `data`
    /// (same length) whose bits are set in `mask` (`ceil(len / 32)` 4-aligned
    /// `u32` words at least), all three apart.
    ///
    /// # Safety
    /// The three allocations must stay allocated until the stream has been
    /// synchronised.
    #[cfg(feature = "internals")]
    pub(crate) unsafe fn apply_dense(
        &self,
        dst: DeviceRange<'_>,
        data: DeviceRange<'_>,
        mask: DeviceRange<'_>,
    ) -> Result<()> {
        const OP: &str = "dense apply";
        for r in [&dst, &data, &mask] {
            self.mine(OP, r)?;
        }
        let (d, len) = (dst.ptr(), dst.len());
        data.exactly(OP, len)?;
        mask.at_least(OP, ceil_div(len, 32) * 4)?;
        mask.aligned(OP, 4)?;
        dst.apart(OP, &data)?;
        dst.apart(OP, &mask)?;
        let mut a = PageArgs { dst: d, src: data.ptr(), mask: mask.ptr(), len, out: 0 };
        let grid = self.grid_for(windows(d, len), 64);
        // SAFETY: every range is live on this device, dst and data hold len
        // bytes, mask the words the kernel reads (4-aligned), the output is
        // apart from the inputs (checked above); they stay allocated until
        // the stream is synchronised (the caller).
        unsafe { self.launch1(names::APPLY_DENSE, grid, &mut a) }
    }

    /// Sparse apply of the `run_count` [`RunDesc`]s at the start of `runs`
    /// to `page`, their bytes read from `data` (asynchronous).
    ///
    /// # Safety
    /// Every run must lie inside `page` and its bytes inside `data`; the
    /// runs must be in order and apart. The allocations must stay allocated
    /// until the stream has been synchronised. Runs at most `RUN_CHUNK`
    /// long balance best (any length is correct).
    #[cfg(feature = "internals")]
    pub(crate) unsafe fn apply_sparse(
        &self,
        page: DeviceRange<'_>,
        data: DeviceRange<'_>,
        runs: DeviceRange<'_>,
        run_count: u64,
    ) -> Result<()> {
        const OP: &str = "sparse apply";
        for r in [&page, &data, &runs] {
            self.mine(OP, r)?;
        }
        let need = run_count.saturating_mul(size_of::<RunDesc>() as u64);
        runs.at_least(OP, need)?;
        runs.aligned(OP, 8)?;
        page.apart(OP, &runs)?;
        // The kernel reads the data in whole 16-byte blocks.
        if data.blocks_overlap(&page) {
            return Err(super::range::RangeError::Overlap { op: OP }.into());
        }
        let mut a = ApplyDesc {
            page: page.ptr(),
            len: page.len(),
            data: data.ptr(),
            runs: runs.ptr(),
            run_count,
            kind: shared_types::kind::SPARSE,
            ..ApplyDesc::default()
        };
        // One warp per group of runs; the block scheduler balances them.
        let groups = run_count.div_ceil(gpu_kernels::body::GROUP);
        let grid = self.grid_for(groups * u64::from(gpu_kernels::body::WARP), 64);
        // SAFETY: the ranges are live on this device, the run table holds
        // run_count descriptors and nothing the kernel writes overlaps what
        // it reads (checked above); the runs' bounds and the allocations'
        // life are the caller's.
        unsafe { self.launch1(names::APPLY_SPARSE, grid, &mut a) }
    }

    /// Compare `a` and `b` (same length): the difference mask to `mask`
    /// (`ceil(len / 32)` 4-aligned `u32` words at least), the number of
    /// differing bytes added to the `u64` at `count` (8 bytes, 8-aligned)
    /// (asynchronous).
    ///
    /// # Safety
    /// The four allocations must stay allocated until the stream has been
    /// synchronised.
    pub(crate) unsafe fn compare(
        &self,
        a: DeviceRange<'_>,
        b: DeviceRange<'_>,
        mask: DeviceRange<'_>,
        count: DeviceRange<'_>,
    ) -> Result<()> {
        const OP: &str = "page compare";
        for r in [&a, &b, &mask, &count] {
            self.mine(OP, r)?;
        }
        let len = a.len();
        b.exactly(OP, len)?;
        mask.at_least(OP, ceil_div(len, 32) * 4)?;
        mask.aligned(OP, 4)?;
        count.exactly(OP, 8)?;
        count.aligned(OP, 8)?;
        for r in [&a, &b, &count] {
            mask.apart(OP, r)?;
        }
        count.apart(OP, &a)?;
        count.apart(OP, &b)?;
        let mut p = PageArgs { dst: a.ptr(), src: b.ptr(), mask: mask.ptr(), out: count.ptr(), len };
        // Few blocks: one atomic per warp at the end.
        let grid = self.grid_for(lanes(len), 8);
        // SAFETY: the ranges are live on this device, a and b hold len
        // bytes, mask the words the kernel writes, count one aligned u64,
        // and the outputs are apart from each other and the inputs (checked
        // above); they stay allocated until the stream is synchronised (the
        // caller).
        unsafe { self.launch1(names::PAGE_COMPARE, grid, &mut p) }
    }

    /// Dense merge (asynchronous).
    ///
    /// # Safety
    /// Every buffer in `args` valid for its length.
    pub(crate) unsafe fn merge(&self, mut args: MergeArgs) -> Result<()> {
        let grid = self.grid_for(lanes(args.len), 64);
        // SAFETY: per the caller.
        unsafe { self.launch1(names::DELTA_MERGE, grid, &mut args) }
    }

    /// Batched apply of the `count` descriptors at the start of `image`
    /// (asynchronous).
    ///
    /// # Safety
    /// Every descriptor valid (each address it holds live for what the
    /// kernel does with it until the stream has been synchronised); no two
    /// write the same byte.
    pub(crate) unsafe fn apply_batch(&self, image: DeviceRange<'_>, count: u64) -> Result<()> {
        const OP: &str = "batched apply";
        self.mine(OP, &image)?;
        image.at_least(OP, count.saturating_mul(size_of::<ApplyDesc>() as u64))?;
        image.aligned(OP, 16)?;
        let f = self.module.function(names::APPLY_BATCH)?;
        let (mut d, mut n) = (image.ptr(), count);
        let mut params = [(&mut d as *mut u64).cast::<c_void>(), (&mut n as *mut u64).cast::<c_void>()];
        let grid = count.clamp(1, i32::MAX as u64) as u32;
        // SAFETY: per the caller; the parameters are two u64 values.
        unsafe {
            driver::launch(&self.ctx, f, names::APPLY_BATCH, grid, BLOCK, self.cu_stream(), &mut params)
        }
    }

    /// Copy `src` to `dst` (of the same length, on this device) through the
    /// pinned staging buffer (synchronous).
    ///
    /// # Errors
    /// [`Error::Gpu`] around a [`RangeError`](super::range::RangeError) when
    /// `dst` is on another device or of another length; driver errors.
    pub(crate) fn upload(&self, dst: DeviceRange<'_>, src: &[u8]) -> Result<()> {
        self.mine("upload", &dst)?;
        dst.exactly("upload", src.len() as u64)?;
        let mut st = self.staging.lock();
        let cap = src.len().clamp(1, STAGING_CHUNK);
        let pinned = ensure_pinned(&self.ctx, &mut st.up, cap)?;
        let step = pinned.capacity();
        for (k, chunk) in src.chunks(step).enumerate() {
            let buf = &mut pinned.as_mut_slice()[..chunk.len()];
            buf.copy_from_slice(chunk);
            let at = dst.ptr() + (k * step) as u64;
            // SAFETY: dst is a live range of this device of src.len() bytes
            // (checked above; its borrow keeps the allocation for the whole
            // call); the pinned buffer stays untouched until the sync below.
            unsafe { driver::copy_htod(&self.ctx, at, buf, self.cu_stream())? };
            self.sync()?;
            self.count_h2d(chunk.len());
        }
        Ok(())
    }

    /// Copy the bytes of `src` to `out` (of the same length) through the
    /// pinned staging buffer, after applying queued deltas (synchronous).
    ///
    /// # Errors
    /// As [`Gpu::upload`].
    pub(crate) fn download(&self, src: DeviceRange<'_>, out: &mut [u8]) -> Result<()> {
        self.flush()?;
        self.download_raw(src, out)
    }

    fn enqueue(&self, mem: &Arc<PageMem>, len: u64, payload: Payload) {
        let mut p = self.pending.lock();
        let key = mem.ptr();
        p.bytes += payload_bytes(&payload);
        if let Some(&i) = p.index.get(&key) {
            // Same page queued already: one merged payload keeps the launch
            // free of write conflicts. Both were validated against len.
            let merged = p.items[i].2.merge(&payload, len).unwrap_or(payload);
            p.items[i].2 = merged;
        } else {
            let i = p.items.len();
            p.items.push((mem.clone(), len, payload));
            p.index.insert(key, i);
        }
    }

    /// Whether the queue is large enough that it should be flushed now.
    pub(crate) fn flush_due(&self) -> bool {
        let p = self.pending.lock();
        p.bytes >= FLUSH_BYTES || p.items.len() >= FLUSH_ITEMS
    }

    /// Number of pages with deltas waiting in the queue.
    pub fn queued(&self) -> usize {
        self.pending.lock().items.len()
    }

    /// Apply every queued delta with one upload and one launch (or one
    /// launch alone when they fit its parameters), and wait.
    ///
    /// # Errors
    /// [`Error::Gpu`] / [`Error::GpuMemory`]; the queue is emptied either way.
    pub fn flush(&self) -> Result<()> {
        // The queue stays locked until the batch has completed: a reader
        // whose own flush finds the queue empty must not overtake a batch
        // another thread is still applying.
        let mut p = self.pending.lock();
        p.index.clear();
        p.bytes = 0;
        let items = std::mem::take(&mut p.items);
        if items.is_empty() {
            return Ok(());
        }
        let refs: Vec<Item<'_>> =
            items.iter().map(|(mem, len, payload)| Item { page: mem.ptr(), len: *len, payload }).collect();
        // SAFETY: each item's memory is held by its queue entry (alive
        // until after the call, which waits for the device) and holds len
        // bytes of this device; its payload was validated against len
        // before it was queued; the index keeps one entry per page, and
        // distinct pages are distinct allocations.
        let res = unsafe { self.apply_items(&refs) };
        drop(refs);
        drop(items);
        drop(p);
        res
    }

    /// Pack, upload and launch `items` (each page at most once), and wait.
    ///
    /// # Safety
    /// Each item's `page` must be the address of `len` bytes of one live
    /// allocation of this device that stays allocated for the call, its
    /// payload checked against `len`, and no two items' bytes may overlap.
    pub(crate) unsafe fn apply_items(&self, items: &[Item<'_>]) -> Result<()> {
        // A small flush (the usual one in immediate mode) travels in the
        // launch's parameters: no staging copy, one driver call fewer.
        if let Some(mut a) = batch::inline(items) {
            let grid = a.bytes.div_ceil(u64::from(BLOCK)) as u32;
            // SAFETY: every run's address is a byte range of an item's page
            // (the payloads were checked against the pages' lengths), live
            // for the call (the caller) and written by no other run (items
            // are apart, runs of a payload do not overlap); the sync below
            // waits for the kernel. The driver copies the parameters at the
            // launch, so `a` may go when this returns.
            unsafe { self.launch1(names::APPLY_INLINE, grid, &mut a)? };
            self.count_h2d(a.bytes as usize + a.count as usize * size_of::<shared_types::RunDesc>());
            return self.sync();
        }
        let plan = batch::plan(items);
        let lay = plan.lay;
        if lay.descs == 0 {
            return Ok(());
        }
        let total = lay.total();
        let mut guard = self.staging.lock();
        let st = &mut *guard;
        let dev_fits = st.device.as_ref().is_some_and(|b| b.len() >= total);
        if !dev_fits {
            st.device = None;
            st.device = Some(self.pool.alloc(total.next_power_of_two())?);
        }
        let block = st
            .device
            .as_ref()
            .ok_or_else(|| Error::Gpu { context: "device staging".into(), source: "not allocated".into() })?;
        let dst = block.range().slice(0, total)?;
        let pinned = ensure_pinned(&self.ctx, &mut st.up, total as usize)?;
        let image = &mut pinned.as_mut_slice()[..total as usize];
        batch::pack_planned(&plan, items, image, dst.ptr());
        // SAFETY: dst is `total` bytes of the device staging block, which
        // the locked staging keeps until after the sync below; the image is
        // not touched again until that sync; the packer only wrote
        // addresses of the items' pages (live for the call, apart, payloads
        // checked: the caller) and of the staging block.
        unsafe {
            driver::copy_htod(&self.ctx, dst.ptr(), image, self.cu_stream())?;
            self.apply_batch(dst, lay.descs)?;
        }
        self.count_h2d(image.len());
        self.sync()
    }

    /// Compare two ranges of this device of the same length: the
    /// difference mask (as the host's `u64` words) and the number of
    /// differing bytes.
    ///
    /// # Errors
    /// [`Error::Gpu`] around a [`RangeError`](super::range::RangeError) when
    /// a range is on another device or the lengths differ; driver errors.
    pub(crate) fn compare_ranges(&self, a: DeviceRange<'_>, b: DeviceRange<'_>) -> Result<(Vec<u64>, u64)> {
        let len = a.len();
        let (mask, n) = self.compared("range compare", a, b)?;
        let words64 = ceil_div(len, 64) as usize;
        let mut words = vec![0u64; words64];
        let mask_bytes = ceil_div(len, 32) as usize * 4;
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
        self.download_raw(mask.range().slice(0, mask_bytes as u64)?, &mut bytes[..mask_bytes])?;
        Ok((words, n))
    }

    /// Compare `a` and `b` (ranges of this device of one length, queued
    /// deltas applied first) into a new difference mask
    /// (`ceil(len / 32)` `u32` words, a bit per byte) and count the bytes
    /// that differ; waits for the count.
    fn compared(
        &self,
        op: &'static str,
        a: DeviceRange<'_>,
        b: DeviceRange<'_>,
    ) -> Result<(DeviceBlock, u64)> {
        self.mine(op, &a)?;
        self.mine(op, &b)?;
        b.exactly(op, a.len())?;
        self.flush()?;
        let mask = self.pool.alloc(ceil_div(a.len(), 32) * 4)?;
        let count = self.pool.alloc(8)?;
        // SAFETY: a and b borrow their allocations for the whole call, mask
        // and count live to its end, and the download below waits for the
        // stream before any of them can go (the mask is returned, so it
        // outlives every later use).
        unsafe {
            self.fill(count.range(), 0)?;
            self.compare(a, b, mask.range(), count.range())?;
        }
        let mut n = [0u64; 1];
        self.download_raw(count.range(), bytemuck::cast_slice_mut(&mut n))?;
        Ok((mask, n[0]))
    }

    /// The maximal runs where `a` and `b` (ranges of this device of one
    /// length) differ, and the number of differing bytes. The comparison's
    /// mask (a bit per byte) stays on the device: what comes back is a
    /// summary of it (a bit per mask byte, summarised again while it is
    /// over 64 KiB, so at most 64 KiB) and the mask bytes the summary
    /// marks, so that a small change of a large range downloads tens of
    /// KiB, not the 1/8 of it a whole mask would be. Queued deltas are
    /// applied first.
    ///
    /// # Errors
    /// [`Error::Gpu`] for a range of another device or unequal lengths;
    /// [`Error::GpuMemory`]; driver errors.
    pub(crate) fn changed_runs(&self, a: DeviceRange<'_>, b: DeviceRange<'_>) -> Result<(Vec<Run>, u64)> {
        let len = a.len();
        let (mask, n) = self.compared("changed runs", a, b)?;
        if n == 0 {
            return Ok((Vec::new(), 0));
        }
        let runs =
            runs_from_mask_bytes(self.nonzero_bytes(mask.range().slice(0, ceil_div(len, 32) * 4)?)?, len);
        Ok((runs, n))
    }

    /// The bytes of `r` (a range of this device) that are not zero, as
    /// (offset, value), ascending. A small range is downloaded; a larger
    /// one is compared with zeros on the device, and only the bytes its
    /// mask (found the same way) marks are gathered.
    fn nonzero_bytes(&self, r: DeviceRange<'_>) -> Result<Vec<(u64, u8)>> {
        const SMALL: u64 = 64 << 10;
        let len = r.len();
        if len <= SMALL {
            let mut v = vec![0u8; len as usize];
            self.download_raw(r, &mut v)?;
            return Ok(v.iter().enumerate().filter(|(_, b)| **b != 0).map(|(i, b)| (i as u64, *b)).collect());
        }
        let zeros = self.pool.alloc(len)?;
        // SAFETY: zeros lives to the end of the call, and the compare below
        // waits for the stream before returning.
        unsafe { self.zero(zeros.range())? };
        let marks_len = ceil_div(len, 32) * 4;
        let (marks, n) = self.compared("nonzero bytes", r, zeros.range().slice(0, len)?)?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut ranges: Vec<std::ops::Range<u64>> = Vec::new();
        for (k, v) in self.nonzero_bytes(marks.range().slice(0, marks_len)?)? {
            for bit in 0..8 {
                let at = k * 8 + bit;
                if at < len && v >> bit & 1 == 1 {
                    match ranges.last_mut() {
                        Some(x) if x.end == at => x.end += 1,
                        _ => ranges.push(at..at + 1),
                    }
                }
            }
        }
        let got = self.gather(&[(r, &ranges)])?.pop().unwrap_or_default();
        let mut bytes = got.into_iter();
        let mut out = Vec::new();
        for x in &ranges {
            for at in x.clone() {
                let Some(v) = bytes.next() else {
                    return Err(Error::Invariant("gathered fewer mask bytes than marked".into()));
                };
                out.push((at, v));
            }
        }
        Ok(out)
    }

    /// The bytes of `ranges` (each inside its page, ascending) of each page
    /// of this device, packed in order: one launch copies every range into
    /// one device buffer (the batched apply kernel's full-copy descriptors,
    /// at most 64 KiB each), and one download brings the buffer back.
    /// Queued deltas are applied first. What an increment of GPU pages
    /// needs: only the changed blocks cross the bus.
    ///
    /// # Errors
    /// [`Error::Gpu`] for a range outside its page or a page of another
    /// device; [`Error::GpuMemory`]; driver errors.
    pub(crate) fn gather(
        &self,
        parts: &[(DeviceRange<'_>, &[std::ops::Range<u64>])],
    ) -> Result<Vec<Vec<u8>>> {
        const OP: &str = "gather";
        for (r, ranges) in parts {
            self.mine(OP, r)?;
            let mut end = 0;
            for x in ranges.iter() {
                if x.start < end || x.start > x.end || x.end > r.len() {
                    return Err(Error::Gpu {
                        context: OP.into(),
                        source: format!(
                            "range {x:?} of a page of {} bytes (ranges ascending, inside it)",
                            r.len()
                        )
                        .into(),
                    });
                }
                end = x.end;
            }
        }
        self.flush()?;
        // Pieces (source address, offset in the gathered bytes, length);
        // each range starts 16-aligned in the gathered bytes.
        let mut pieces: Vec<(u64, u64, u64)> = Vec::new();
        let mut spans: Vec<Vec<(u64, u64)>> = Vec::with_capacity(parts.len());
        let mut off = 0u64;
        for (r, ranges) in parts {
            let mut s = Vec::with_capacity(ranges.len());
            for x in ranges.iter() {
                off = off.next_multiple_of(16);
                let mut o = x.start;
                while o < x.end {
                    let n = batch::SEGMENT.min(x.end - o);
                    pieces.push((r.ptr() + o, off + (o - x.start), n));
                    o += n;
                }
                s.push((off, x.end - x.start));
                off += x.end - x.start;
            }
            spans.push(s);
        }
        if pieces.is_empty() {
            return Ok(spans.iter().map(|_| Vec::new()).collect());
        }
        let descs_bytes = (pieces.len() * size_of::<ApplyDesc>()) as u64;
        let data_at = descs_bytes.next_multiple_of(16);
        let block = self.pool.alloc(data_at + off)?;
        let image = block.range().slice(0, data_at + off)?;
        let base = image.ptr() + data_at;
        let mut work = 0;
        let descs: Vec<ApplyDesc> = pieces
            .iter()
            .map(|&(src, at, n)| {
                let d = ApplyDesc {
                    page: base + at,
                    len: n,
                    data: src,
                    kind: shared_types::kind::FULL,
                    work_start: work,
                    ..ApplyDesc::default()
                };
                work += n.div_ceil(16);
                d
            })
            .collect();
        self.upload(image.slice(0, descs_bytes)?, bytemuck::cast_slice(&descs))?;
        // The 16-byte alignment leaves gaps between ranges that no
        // descriptor writes; they are downloaded with the rest, so they
        // are zeroed first (the download never reads uninitialised memory).
        let gathered: u64 = spans.iter().flatten().map(|x| x.1).sum();
        if gathered != off {
            // SAFETY: the data part of `block`, which lives to the end of
            // the call; the download below waits for the stream.
            unsafe { self.zero(image.slice(data_at, off)?)? };
        }
        // SAFETY: every descriptor copies n bytes from inside a page range
        // of this device (checked above; the ranges borrow their pages for
        // the whole call) to its own part of `block`, which lives to the end
        // of the call; the download below waits for the stream; no two
        // descriptors write the same byte (the offsets are disjoint).
        unsafe { self.apply_batch(image, pieces.len() as u64)? };
        let mut all = vec![0u8; off as usize];
        self.download_raw(image.slice(data_at, off)?, &mut all)?;
        Ok(spans
            .into_iter()
            .map(|s| {
                let mut v = Vec::with_capacity(s.iter().map(|x| x.1 as usize).sum());
                for (at, n) in s {
                    v.extend_from_slice(&all[at as usize..(at + n) as usize]);
                }
                v
            })
            .collect())
    }

    /// Download without flushing (the caller already did).
    fn download_raw(&self, src: DeviceRange<'_>, out: &mut [u8]) -> Result<()> {
        self.mine("download", &src)?;
        src.exactly("download", out.len() as u64)?;
        let mut st = self.staging.lock();
        let pinned = ensure_pinned(&self.ctx, &mut st.down, out.len().clamp(1, STAGING_CHUNK))?;
        let step = pinned.capacity();
        for (k, chunk) in out.chunks_mut(step).enumerate() {
            let buf = &mut pinned.as_mut_slice()[..chunk.len()];
            // SAFETY: src is a live range of this device of out.len() bytes
            // (checked above; its borrow keeps the allocation for the whole
            // call); buf is read after the sync.
            unsafe { driver::copy_dtoh(&self.ctx, buf, src.ptr() + (k * step) as u64, self.cu_stream())? };
            self.sync()?;
            self.count_d2h(buf.len());
            chunk.copy_from_slice(buf);
        }
        Ok(())
    }

    /// Merge two dense deltas over `len`-byte pages on the device.
    pub(crate) fn merge_dense(&self, first: &DenseDelta, second: &DenseDelta) -> Result<DenseDelta> {
        let len = first.len();
        if second.len() != len {
            return Err(Error::invalid_delta(
                None,
                format!("cannot merge dense deltas of {len} and {} bytes", second.len()),
            ));
        }
        let mbytes = ceil_div(len, 64) * 8;
        let bufs = [
            self.pool.alloc(mbytes)?,
            self.pool.alloc(len)?,
            self.pool.alloc(mbytes)?,
            self.pool.alloc(len)?,
            self.pool.alloc(mbytes)?,
            self.pool.alloc(len)?,
        ];
        // The first `n` bytes of buffer `i` (a block asked for 0 bytes
        // holds 1).
        let part = |i: usize, n: u64| bufs[i].range().slice(0, n);
        self.upload(part(0, mbytes)?, bytemuck::cast_slice(first.mask_words()))?;
        self.upload(part(1, len)?, first.data())?;
        self.upload(part(2, mbytes)?, bytemuck::cast_slice(second.mask_words()))?;
        self.upload(part(3, len)?, second.data())?;
        let args = MergeArgs {
            mask1: bufs[0].ptr(),
            data1: bufs[1].ptr(),
            mask2: bufs[2].ptr(),
            data2: bufs[3].ptr(),
            out_mask: bufs[4].ptr(),
            out_data: bufs[5].ptr(),
            len,
        };
        // SAFETY: every buffer was sized for len bytes / ceil(len / 64)
        // words, the outputs are distinct blocks from the inputs, and all
        // live past the downloads below, which wait for the stream.
        unsafe { self.merge(args)? };
        let mut words = vec![0u64; mbytes as usize / 8];
        let mut data = vec![0u8; len as usize];
        {
            let wb: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
            let n = ceil_div(len, 32) as usize * 4;
            self.download_raw(part(4, n as u64)?, &mut wb[..n])?;
        }
        self.download_raw(part(5, len)?, &mut data)?;
        DenseDelta::from_words(words, data)
    }
}

/// Payload bytes that a flush will upload (for the flush threshold).
fn payload_bytes(p: &Payload) -> u64 {
    match p {
        Payload::Dense(d) => d.len() + d.len() / 8,
        Payload::Sparse(s) => s.data().len() as u64 + 24 * s.runs().len() as u64,
        Payload::Full(b) => b.len() as u64,
    }
}

fn ensure_pinned<'a>(
    ctx: &Arc<CudaContext>,
    slot: &'a mut Option<Pinned>,
    cap: usize,
) -> Result<&'a mut Pinned> {
    if slot.as_ref().is_none_or(|p| p.capacity() < cap) {
        *slot = None;
        *slot = Some(Pinned::new(ctx, cap.next_power_of_two())?);
    }
    slot.as_mut()
        .ok_or_else(|| Error::Gpu { context: "pinned staging".into(), source: "not allocated".into() })
}

/// Device recomputes of one device, queued back to back on its stream,
/// each followed by the comparison of its output with the page's current
/// bytes. A recompute may read the output of one queued before it: the
/// stream orders them, and the host waits once, after the last, for the
/// counts of differing bytes ([`Chain::run`]). The difference masks stay on
/// the device until a payload is asked for ([`Ran::payload`]).
pub(crate) struct Chain {
    gpu: Arc<Gpu>,
    jobs: Vec<ChainJob>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("device", &self.gpu.info.ordinal)
            .field("jobs", &self.jobs.len())
            .finish()
    }
}

/// One recompute of a [`Chain`]: what it runs, what it reads and where its
/// output and difference mask go.
struct ChainJob {
    module: Arc<Module>,
    entry: Box<str>,
    block: u32,
    old: GpuPage,
    inputs: Vec<GpuPage>,
    out: GpuPage,
    mask: DeviceBlock,
}

impl Chain {
    /// Add a run of kernel `entry` of `module` (loaded on this device)
    /// with blocks of `block` threads over `inputs` into a new zeroed page
    /// of `old`'s length, compared with `old`. Nothing runs before
    /// [`Chain::run`]; the output, returned here, may be an input of a
    /// later recompute of the chain.
    ///
    /// # Safety
    /// The kernel must read only the input ranges and write only the
    /// output range (its [`shared_types::RecomputeArgs`] parameter says
    /// where they are): the driver cannot hold a kernel to that.
    ///
    /// # Errors
    /// [`Error::Gpu`] for a page of another device or an entry the module
    /// lacks; [`Error::GpuMemory`].
    pub(crate) unsafe fn add(
        &mut self,
        module: Arc<Module>,
        entry: &str,
        block: u32,
        old: &GpuPage,
        inputs: Vec<GpuPage>,
    ) -> Result<GpuPage> {
        const OP: &str = "device recompute function";
        let gpu = &self.gpu;
        gpu.mine(OP, &old.range())?;
        for p in &inputs {
            gpu.mine(OP, &p.range())?;
        }
        module.function(entry)?;
        let len = old.len();
        let out = GpuPage { gpu: gpu.clone(), mem: Arc::new(PageMem::Device(gpu.pool.alloc(len)?)), len };
        let mask = gpu.pool.alloc(ceil_div(len, 32) * 4)?;
        self.jobs.push(ChainJob {
            module,
            entry: entry.into(),
            block,
            old: old.clone(),
            inputs,
            out: out.clone(),
            mask,
        });
        Ok(out)
    }

    /// Queue every recompute in order after the device's queued deltas,
    /// and wait once for all of them.
    ///
    /// # Errors
    /// [`Error::Gpu`] for a launch the driver refuses or a kernel that
    /// faults; [`Error::GpuMemory`].
    pub(crate) fn run(self) -> Result<Ran> {
        let gpu = self.gpu.clone();
        gpu.flush()?;
        // The input tables of all the kernels, uploaded at once before any
        // of them is queued.
        let mut table: Vec<shared_types::DeviceInput> = Vec::new();
        let mut at = Vec::with_capacity(self.jobs.len());
        for job in &self.jobs {
            at.push(table.len());
            table.extend(
                job.inputs.iter().map(|p| shared_types::DeviceInput { ptr: p.range().ptr(), len: p.len() }),
            );
        }
        let row = size_of::<shared_types::DeviceInput>() as u64;
        let tables = gpu.pool.alloc((table.len() as u64 * row).max(16))?;
        if !table.is_empty() {
            gpu.upload(tables.range().slice(0, table.len() as u64 * row)?, bytemuck::cast_slice(&table))?;
        }
        let counts = gpu.pool.alloc(self.jobs.len().max(1) as u64 * 8)?;
        let queued = self.queue(&tables, &at, &counts);
        let mut n = vec![0u64; self.jobs.len()];
        let waited = match queued {
            Ok(()) => gpu
                .download_raw(counts.range().slice(0, n.len() as u64 * 8)?, bytemuck::cast_slice_mut(&mut n)),
            Err(e) => Err(e),
        };
        if let Err(e) = waited {
            // Nothing queued may outlive its buffers: wait (the stream may
            // have failed, and then this fails too) before they go.
            let _ = gpu.sync();
            return Err(e);
        }
        Ok(Ran { gpu, jobs: self.jobs, counts: n })
    }

    /// Queue the kernels and comparisons of [`Chain::run`].
    fn queue(&self, tables: &DeviceBlock, at: &[usize], counts: &DeviceBlock) -> Result<()> {
        let gpu = &self.gpu;
        let row = size_of::<shared_types::DeviceInput>() as u64;
        // SAFETY: the counts block is owned by the caller, which waits for
        // the stream before letting it go.
        unsafe { gpu.fill(counts.range(), 0)? };
        for (k, job) in self.jobs.iter().enumerate() {
            let len = job.out.len();
            // SAFETY: the output is owned by the job, which outlives the
            // stream's work (the caller waits before dropping it).
            unsafe { gpu.zero(job.out.range())? };
            let f = job.module.function(&job.entry)?;
            let mut args = shared_types::RecomputeArgs {
                inputs: tables.range().ptr() + at[k] as u64 * row,
                n_inputs: job.inputs.len() as u64,
                out: job.out.range().ptr(),
                out_len: len,
            };
            let cap = u64::from(gpu.info.sm_count) * 32;
            let grid = ceil_div(len.max(1), u64::from(job.block)).min(cap).max(1) as u32;
            let mut params = [(&mut args as *mut shared_types::RecomputeArgs).cast::<c_void>()];
            // SAFETY: args matches the kernel's one parameter (the ABI of
            // RecomputeArgs); every address in it is a live range of this
            // device (the inputs and the output held by the job, the
            // table's rows in the caller's block) that stays allocated
            // until the caller has waited for the stream. That the kernel
            // stays inside those ranges is the promise of `Chain::add`.
            unsafe {
                driver::launch(&gpu.ctx, f, &job.entry, grid, job.block, gpu.cu_stream(), &mut params)?
            };
            // SAFETY: the page, the output and the mask are held by the job
            // and the count by the caller until the stream has been waited
            // for; `compare` checks lengths and that they are apart.
            unsafe {
                gpu.compare(
                    job.old.range(),
                    job.out.range(),
                    job.mask.range(),
                    counts.range().slice(k as u64 * 8, 8)?,
                )?
            };
        }
        Ok(())
    }
}

/// The recomputes of a [`Chain`], done: for each, in the order added, the
/// number of bytes where its output differs from the page.
pub(crate) struct Ran {
    gpu: Arc<Gpu>,
    jobs: Vec<ChainJob>,
    counts: Vec<u64>,
}

impl std::fmt::Debug for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ran").field("device", &self.gpu.info.ordinal).field("counts", &self.counts).finish()
    }
}

impl Ran {
    /// Bytes where output `k` differs from its page.
    pub(crate) fn count(&self, k: usize) -> u64 {
        self.counts[k]
    }

    /// The page recompute `k` was compared with.
    pub(crate) fn old(&self, k: usize) -> &GpuPage {
        &self.jobs[k].old
    }

    /// The pages recompute `k` read, in argument order.
    pub(crate) fn inputs(&self, k: usize) -> &[GpuPage] {
        &self.jobs[k].inputs
    }

    /// The output of recompute `k`.
    pub(crate) fn output(&self, k: usize) -> &GpuPage {
        &self.jobs[k].out
    }

    /// The payload that turns recompute `k`'s page into its output (the
    /// one [`Payload::diff`] of the two would give); `None` when they are
    /// equal. Only a summary of the mask, the mask bytes it marks and the
    /// payload's bytes are downloaded.
    ///
    /// # Errors
    /// Driver errors; [`Error::GpuMemory`].
    pub(crate) fn payload(&self, k: usize) -> Result<Option<Payload>> {
        if self.counts[k] == 0 {
            return Ok(None);
        }
        let job = &self.jobs[k];
        self.gpu.payload_from_mask(&job.mask, job.out.range()).map(Some)
    }
}

/// Maximal runs of set bits in a mask of `len` bits given by its non-zero
/// bytes (offset, value), ascending: bit `b` of byte `k` is bit `8k + b`.
fn runs_from_mask_bytes(bytes: impl IntoIterator<Item = (u64, u8)>, len: u64) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for (k, v) in bytes {
        for bit in 0..8 {
            let at = k * 8 + bit;
            if at >= len {
                break;
            }
            if v >> bit & 1 == 1 {
                match runs.last_mut() {
                    Some(r) if r.offset + r.len == at => r.len += 1,
                    _ => runs.push(Run { offset: at, len: 1 }),
                }
            }
        }
    }
    runs
}

/// Cut runs into [`RunDesc`] pieces of at most `chunk` bytes (see
/// [`piece_len`]) for the sparse kernel, with data offsets into the
/// concatenated run bytes.
#[cfg(any(test, feature = "internals"))]
pub(crate) fn run_descs(runs: &[Run], chunk: u64) -> Vec<RunDesc> {
    let mut out = Vec::with_capacity(runs.len());
    let mut at = 0;
    for r in runs {
        let mut o = 0;
        while o < r.len {
            let n = piece_len(r.offset, r.len, o, chunk);
            out.push(RunDesc { offset: r.offset + o, len: n, data_offset: at + o });
            o += n;
        }
        at += r.len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_driver_is_no_device_not_a_panic() {
        // On machines without CUDA this is the NoDevice path; with a GPU it
        // opens the device. Either way it returns.
        match probe() {
            Ok(info) => assert!(info.sm_count > 0),
            Err(Error::NoDevice { reason }) => assert!(!reason.is_empty()),
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn mask_runs_match_byte_scan() {
        let len = 300u64;
        let mut words = vec![0u64; 5];
        let set = |w: &mut Vec<u64>, i: u64| w[(i / 64) as usize] |= 1 << (i % 64);
        for i in (0..10).chain(60..140).chain([200, 202]).chain(290..300) {
            set(&mut words, i);
        }
        words[4] |= u64::MAX << 44; // dead bits past len are ignored
        let bytes: Vec<(u64, u8)> = bytemuck::cast_slice::<u64, u8>(&words)
            .iter()
            .enumerate()
            .filter(|(_, b)| **b != 0)
            .map(|(k, b)| (k as u64, *b))
            .collect();
        let runs = runs_from_mask_bytes(bytes, len);
        assert_eq!(
            runs,
            vec![
                Run { offset: 0, len: 10 },
                Run { offset: 60, len: 80 },
                Run { offset: 200, len: 1 },
                Run { offset: 202, len: 1 },
                Run { offset: 290, len: 10 },
            ]
        );
        let d = run_descs(&[Run { offset: 5, len: 2500 }, Run { offset: 3000, len: 1 }], 1024);
        assert_eq!(d.len(), 4);
        // The first piece ends on a 16-byte page offset (1024 - 5 % 16).
        assert_eq!(d[0], RunDesc { offset: 5, len: 1019, data_offset: 0 });
        assert_eq!(d[2], RunDesc { offset: 5 + 2043, len: 457, data_offset: 2043 });
        assert_eq!(d[3], RunDesc { offset: 3000, len: 1, data_offset: 2500 });
    }
}

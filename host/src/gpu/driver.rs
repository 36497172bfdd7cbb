//! Thin `Result` wrappers over the CUDA driver calls MMSB uses (through
//! `cudarc::driver::result`). Driver errors become [`Error::Gpu`], out of
//! memory becomes [`Error::GpuMemory`]. Each call binds the context to the
//! calling thread first, so callers on any thread are served.

use crate::{Error, Result};
use cudarc::driver::result::{self as cu, DriverError};
use cudarc::driver::{sys, CudaContext};
use std::ffi::{c_void, CString};
use std::sync::Arc;

/// A device address as the driver hands it out.
pub(crate) type DevicePtr = u64;

/// Wrap a driver error, naming the operation.
pub(crate) fn gpu_err(context: impl Into<String>) -> impl FnOnce(DriverError) -> Error {
    let context = context.into();
    move |e| Error::Gpu { context, source: Box::new(e) }
}

fn is_oom(e: &DriverError) -> bool {
    e.0 == sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY
}

fn bind(ctx: &CudaContext) -> Result<()> {
    ctx.bind_to_thread().map_err(gpu_err("binding the CUDA context"))
}

/// Allocate `bytes` of device memory (contents undefined).
pub(crate) fn alloc(ctx: &CudaContext, ordinal: u32, bytes: u64) -> Result<DevicePtr> {
    bind(ctx)?;
    // SAFETY: cuMemAlloc has no preconditions beyond a current context; the
    // memory is only handed out as raw bytes.
    unsafe { cu::malloc_sync(bytes as usize) }.map_err(|e| {
        if is_oom(&e) {
            Error::GpuMemory { device: ordinal, requested: bytes, reason: e.to_string() }
        } else {
            Error::Gpu { context: format!("cuMemAlloc({bytes})"), source: Box::new(e) }
        }
    })
}

/// Free device or managed memory from [`alloc`] / [`alloc_managed`].
///
/// # Safety
/// `ptr` must come from [`alloc`] or [`alloc_managed`] on `ctx`, be freed
/// exactly once, and no device work using it may still be running.
pub(crate) unsafe fn free(ctx: &CudaContext, ptr: DevicePtr) -> Result<()> {
    bind(ctx)?;
    // SAFETY: per the caller.
    unsafe { cu::free_sync(ptr) }.map_err(gpu_err("cuMemFree"))
}

/// Allocate `bytes` of managed (unified) memory attached globally.
pub(crate) fn alloc_managed(ctx: &CudaContext, ordinal: u32, bytes: u64) -> Result<DevicePtr> {
    bind(ctx)?;
    // SAFETY: cuMemAllocManaged has no preconditions beyond a current context.
    unsafe { cu::malloc_managed(bytes as usize, sys::CUmemAttach_flags::CU_MEM_ATTACH_GLOBAL) }.map_err(|e| {
        if is_oom(&e) {
            Error::GpuMemory { device: ordinal, requested: bytes, reason: e.to_string() }
        } else {
            Error::Gpu { context: format!("cuMemAllocManaged({bytes})"), source: Box::new(e) }
        }
    })
}

fn device_location(ordinal: u32) -> sys::CUmemLocation {
    sys::CUmemLocation { type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE, id: ordinal as i32 }
}

fn host_location() -> sys::CUmemLocation {
    sys::CUmemLocation { type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_HOST, id: 0 }
}

/// Advise the driver that the managed range prefers device `ordinal` and is
/// accessed by it (hints only: failures are reported, nothing else changes).
///
/// # Safety
/// `ptr` and `bytes` must be a live range from [`alloc_managed`] on `ctx`.
pub(crate) unsafe fn advise_managed(
    ctx: &CudaContext,
    ptr: DevicePtr,
    bytes: u64,
    ordinal: u32,
) -> Result<()> {
    bind(ctx)?;
    for advice in [
        sys::CUmem_advise::CU_MEM_ADVISE_SET_PREFERRED_LOCATION,
        sys::CUmem_advise::CU_MEM_ADVISE_SET_ACCESSED_BY,
    ] {
        // SAFETY: per the caller, ptr/bytes is a live managed range.
        unsafe { cu::mem_advise(ptr, bytes as usize, advice, device_location(ordinal)) }
            .map_err(gpu_err("cuMemAdvise"))?;
    }
    Ok(())
}

/// Prefetch a managed range to device `ordinal` (`Some`) or to the host.
///
/// # Safety
/// `ptr` and `bytes` must be a range from [`alloc_managed`] on `ctx` that
/// stays allocated until the stream has been synchronised, and `stream` a
/// live stream of `ctx`.
pub(crate) unsafe fn prefetch_managed(
    ctx: &CudaContext,
    ptr: DevicePtr,
    bytes: u64,
    to: Option<u32>,
    stream: sys::CUstream,
) -> Result<()> {
    bind(ctx)?;
    let loc = to.map_or_else(host_location, device_location);
    // SAFETY: per the caller.
    unsafe { cu::mem_prefetch_async(ptr, bytes as usize, loc, stream) }.map_err(gpu_err("cuMemPrefetchAsync"))
}

/// Page-locked host memory.
pub(crate) struct Pinned {
    ptr: *mut u8,
    cap: usize,
    ctx: Arc<CudaContext>,
}

// SAFETY: the buffer is plain host memory owned by this value; access goes
// through &self / &mut self.
unsafe impl Send for Pinned {}
// SAFETY: &self gives no access to the bytes; only &mut self does.
unsafe impl Sync for Pinned {}

impl Pinned {
    /// Allocate `cap` (at least 1) bytes of pinned host memory.
    pub(crate) fn new(ctx: &Arc<CudaContext>, cap: usize) -> Result<Self> {
        let cap = cap.max(1);
        bind(ctx)?;
        // SAFETY: cuMemHostAlloc has no preconditions beyond a current context.
        let ptr = unsafe { cu::malloc_host(cap, 0) }.map_err(gpu_err(format!("cuMemHostAlloc({cap})")))?;
        if ptr.is_null() {
            return Err(Error::Gpu {
                context: "cuMemHostAlloc".into(),
                source: "returned a null pointer".into(),
            });
        }
        // SAFETY: cap freshly allocated bytes; zero them so the slices below
        // never expose uninitialised memory.
        unsafe { std::ptr::write_bytes(ptr.cast::<u8>(), 0, cap) };
        Ok(Self { ptr: ptr.cast(), cap, ctx: ctx.clone() })
    }

    pub(crate) fn capacity(&self) -> usize {
        self.cap
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid and initialised for cap bytes while self
        // lives, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.cap) }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: ptr came from malloc_host and is freed once; every copy
            // using it was synchronised before the owner let go of it.
            let _ = unsafe { cu::free_host(self.ptr.cast::<c_void>()) };
        }
    }
}

/// Asynchronous host → device copy.
///
/// # Safety
/// `dst` must be valid for `src.len()` bytes, and `src` must stay alive and
/// unchanged until the stream has been synchronised.
pub(crate) unsafe fn copy_htod(
    ctx: &CudaContext,
    dst: DevicePtr,
    src: &[u8],
    stream: sys::CUstream,
) -> Result<()> {
    bind(ctx)?;
    // SAFETY: per the caller.
    unsafe { cu::memcpy_htod_async(dst, src, stream) }.map_err(gpu_err("cuMemcpyHtoDAsync"))
}

/// Asynchronous device → host copy.
///
/// # Safety
/// `src` must be valid for `dst.len()` bytes, and `dst` must stay alive and
/// unused until the stream has been synchronised.
pub(crate) unsafe fn copy_dtoh(
    ctx: &CudaContext,
    dst: &mut [u8],
    src: DevicePtr,
    stream: sys::CUstream,
) -> Result<()> {
    bind(ctx)?;
    // SAFETY: per the caller.
    unsafe { cu::memcpy_dtoh_async(dst, src, stream) }.map_err(gpu_err("cuMemcpyDtoHAsync"))
}

/// Asynchronous device → device copy.
///
/// # Safety
/// Both ranges valid device memory of `bytes` bytes until the stream has
/// been synchronised.
pub(crate) unsafe fn copy_dtod(
    ctx: &CudaContext,
    dst: DevicePtr,
    src: DevicePtr,
    bytes: u64,
    stream: sys::CUstream,
) -> Result<()> {
    bind(ctx)?;
    // SAFETY: per the caller.
    unsafe { cu::memcpy_dtod_async(dst, src, bytes as usize, stream) }.map_err(gpu_err("cuMemcpyDtoDAsync"))
}

/// Asynchronous byte fill.
///
/// # Safety
/// `dst` valid device memory of `bytes` bytes.
pub(crate) unsafe fn memset(
    ctx: &CudaContext,
    dst: DevicePtr,
    value: u8,
    bytes: u64,
    stream: sys::CUstream,
) -> Result<()> {
    bind(ctx)?;
    // SAFETY: per the caller.
    unsafe { cu::memset_d8_async(dst, value, bytes as usize, stream) }.map_err(gpu_err("cuMemsetD8Async"))
}

/// Wait for all work queued on `stream`.
pub(crate) fn sync(ctx: &CudaContext, stream: sys::CUstream) -> Result<()> {
    bind(ctx)?;
    // SAFETY: the stream is a live stream of this context.
    unsafe { cu::stream::synchronize(stream) }.map_err(gpu_err("cuStreamSynchronize"))
}

/// A loaded PTX module and its kernels, unloaded on drop.
pub(crate) struct Module {
    module: sys::CUmodule,
    functions: Vec<(Box<str>, sys::CUfunction)>,
    ctx: Arc<CudaContext>,
}

// SAFETY: module and function handles are immutable driver objects usable
// from any thread once the context is bound.
unsafe impl Send for Module {}
// SAFETY: as above; nothing mutates them after loading.
unsafe impl Sync for Module {}

impl Module {
    /// Load `ptx` and look up every name in `names`.
    pub(crate) fn load<N: AsRef<str>>(ctx: &Arc<CudaContext>, ptx: &str, names: &[N]) -> Result<Self> {
        bind(ctx)?;
        let image = CString::new(ptx)
            .map_err(|e| Error::Gpu { context: "loading the PTX module".into(), source: Box::new(e) })?;
        // SAFETY: image is a NUL-terminated PTX text that outlives the call.
        let module =
            unsafe { cu::module::load_data(image.as_ptr().cast()) }.map_err(gpu_err("cuModuleLoadData"))?;
        let mut m = Module { module, functions: Vec::with_capacity(names.len()), ctx: ctx.clone() };
        for name in names {
            let name = name.as_ref();
            let cname =
                CString::new(name).map_err(|e| Error::Gpu { context: name.into(), source: Box::new(e) })?;
            // SAFETY: module is a live module handle.
            let f = unsafe { cu::module::get_function(m.module, cname) }
                .map_err(gpu_err(format!("cuModuleGetFunction({name})")))?;
            m.functions.push((name.into(), f));
        }
        Ok(m)
    }

    /// The kernel called `name`.
    pub(crate) fn function(&self, name: &str) -> Result<sys::CUfunction> {
        self.functions.iter().find(|(n, _)| &**n == name).map(|(_, f)| *f).ok_or_else(|| Error::Gpu {
            context: format!("kernel {name}"),
            source: "not in the loaded module".into(),
        })
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: the module was loaded once and is unloaded once; its
            // functions are not used after the owner drops it.
            let _ = unsafe { cu::module::unload(self.module) };
        }
    }
}

/// Launch `f` with `grid` blocks of `block` threads and the given parameters.
///
/// # Safety
/// `params` must point at values whose types match the kernel's parameters,
/// and every device address inside them must be valid for what the kernel
/// does with it until the stream has been synchronised.
pub(crate) unsafe fn launch(
    ctx: &CudaContext,
    f: sys::CUfunction,
    name: &str,
    grid: u32,
    block: u32,
    stream: sys::CUstream,
    params: &mut [*mut c_void],
) -> Result<()> {
    bind(ctx)?;
    // SAFETY: per the caller.
    unsafe { cu::launch_kernel(f, (grid.max(1), 1, 1), (block, 1, 1), 0, stream, params) }
        .map_err(gpu_err(format!("launching {name}")))
}

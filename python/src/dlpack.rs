//! DLPack export (the unversioned `DLManagedTensor` of DLPack 0.8, which
//! every consumer reads: `torch.from_dlpack`, `cupy.from_dlpack`,
//! `jax.dlpack.from_dlpack`, `numpy.from_dlpack`).
//!
//! A page is exported as a one-dimensional tensor of `uint8`, one element
//! per page byte, with no strides (compact). The capsule's tensor owns a
//! [`Holder`] that keeps the memory alive: for a GPU page the device
//! export (the allocation stays while the consumer's tensor lives), for a
//! CPU page the read guard (the page's read lock stays held). DLPack
//! before 1.0 has no read-only flag: a consumer may write through a CPU
//! export, which the page's lock does not prevent; such writes are not
//! logged and are the consumer's error. Documented in docs/PYTHON.md.

use pyo3::ffi;
use pyo3::prelude::*;
use std::ffi::{c_void, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// `kDLCPU`.
pub(crate) const DEVICE_CPU: i32 = 1;
/// `kDLCUDA`.
pub(crate) const DEVICE_CUDA: i32 = 2;
/// `kDLCUDAManaged`.
pub(crate) const DEVICE_CUDA_MANAGED: i32 = 13;

const NAME: &CStr = c"dltensor";
const USED_NAME: &CStr = c"used_dltensor";

#[repr(C)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *mut i64,
    strides: *mut i64,
    byte_offset: u64,
}

#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

/// What keeps an export's memory valid.
pub(crate) enum Keep {
    /// The device memory of a GPU page.
    Device {
        /// The export.
        _export: mmsb::gpu::DeviceExport,
    },
    /// A CPU page's read guard (a Python object) and its export count,
    /// decremented when the consumer lets go.
    Host {
        /// The guard object.
        _guard: Py<PyAny>,
        /// Its export count.
        exports: Arc<AtomicUsize>,
    },
}

impl Drop for Keep {
    fn drop(&mut self) {
        if let Keep::Host { exports, .. } = self {
            exports.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The managed tensor and what it points into, freed by the deleter.
struct Holder {
    managed: DLManagedTensor,
    shape: [i64; 1],
    _keep: Keep,
}

unsafe extern "C" fn deleter(t: *mut DLManagedTensor) {
    if t.is_null() {
        return;
    }
    // SAFETY: `t` is the `managed` field of a leaked `Box<Holder>` whose
    // address is in `manager_ctx`; DLPack calls the deleter once.
    let holder = unsafe { (*t).manager_ctx } as *mut Holder;
    // SAFETY: as above: the box is reclaimed exactly once.
    drop(unsafe { Box::from_raw(holder) });
}

unsafe extern "C" fn capsule_destructor(capsule: *mut ffi::PyObject) {
    // A consumer that took the tensor renamed the capsule to
    // "used_dltensor" and owns it; otherwise it is still ours.
    // SAFETY: called by the interpreter with a live capsule and the GIL.
    if unsafe { ffi::PyCapsule_IsValid(capsule, NAME.as_ptr()) } != 1 {
        return;
    }
    // SAFETY: the capsule is valid under NAME (checked above).
    let t = unsafe { ffi::PyCapsule_GetPointer(capsule, NAME.as_ptr()) } as *mut DLManagedTensor;
    if t.is_null() {
        // SAFETY: the GIL is held; a destructor must not leave an error set.
        unsafe { ffi::PyErr_Clear() };
        return;
    }
    // SAFETY: the pointer is the managed tensor this module created, not
    // consumed (the name is unchanged), so its deleter has not run.
    unsafe { deleter(t) };
}

/// A "dltensor" capsule over `len` bytes at `data` on `device`, keeping
/// `keep` alive until the consumer's tensor (or the unused capsule) goes.
///
/// `data` must be valid for `len` bytes for as long as `keep` lives:
/// callers derive it from `keep` itself.
pub(crate) fn capsule(
    py: Python<'_>,
    data: *mut c_void,
    len: u64,
    device: (i32, i32),
    keep: Keep,
) -> PyResult<Py<PyAny>> {
    let mut holder = Box::new(Holder {
        managed: DLManagedTensor {
            dl_tensor: DLTensor {
                data,
                device: DLDevice { device_type: device.0, device_id: device.1 },
                ndim: 1,
                dtype: DLDataType { code: 1, bits: 8, lanes: 1 },
                shape: std::ptr::null_mut(),
                strides: std::ptr::null_mut(),
                byte_offset: 0,
            },
            manager_ctx: std::ptr::null_mut(),
            deleter: Some(deleter),
        },
        shape: [len as i64],
        _keep: keep,
    });
    holder.managed.dl_tensor.shape = holder.shape.as_mut_ptr();
    let raw = Box::into_raw(holder);
    // SAFETY: `raw` is a live, leaked box; the fields are plain data.
    unsafe {
        (*raw).managed.manager_ctx = raw as *mut c_void;
    }
    // SAFETY: `raw` outlives the capsule until a deleter runs; the name is
    // a static string; the destructor only frees an unconsumed tensor.
    let cap = unsafe {
        ffi::PyCapsule_New(
            std::ptr::addr_of_mut!((*raw).managed) as *mut c_void,
            NAME.as_ptr(),
            Some(capsule_destructor),
        )
    };
    if cap.is_null() {
        // SAFETY: the capsule was not made, so nobody else owns the box.
        drop(unsafe { Box::from_raw(raw) });
        return Err(PyErr::fetch(py));
    }
    // SAFETY: `cap` is a new, owned reference.
    Ok(unsafe { Bound::from_owned_ptr(py, cap) }.unbind())
}

/// Whether a capsule was consumed (for tests of the protocol).
pub(crate) fn consumed(capsule: &Bound<'_, PyAny>) -> bool {
    // SAFETY: any object may be asked; a non-capsule answers 0.
    unsafe { ffi::PyCapsule_IsValid(capsule.as_ptr(), USED_NAME.as_ptr()) == 1 }
}

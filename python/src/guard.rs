//! Zero-copy views: a CPU page's read guard (`PageGuard`) and the tokens
//! through which NumPy sees its bytes (`ViewToken`, the array interface),
//! and a GPU page's device view (`DeviceView`, DLPack).
//!
//! A guard holds the page's read lock (`mmsb::PageRef`). Each NumPy view
//! is made from a fresh token that holds a reference to the guard and
//! counts itself in the guard's export count; the array keeps its token
//! as its base. `release` refuses while the count is not zero, so no view
//! ever outlives the lock, and every method of a released guard raises
//! `ViewReleasedError`. The buffer protocol is not used: it is outside
//! the stable ABI of Python 3.9 (the package is abi3-py39).
//!
//! The read lock is released on the thread that took it (the crate's
//! rule): a guard whose last reference goes on another thread (a NumPy
//! view dropped by a worker) is parked and released by its own thread's
//! next call into the state.

use crate::dlpack::{self, Keep};
use crate::errors::{py_error_now, IntoPy};
use mmsb::{Epoch, Mmsb, PageId, PageRef};
use pyo3::exceptions::PyBufferError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

/// A `PageRef` that is used and dropped only on the thread that made it
/// (its owner), though it may be moved meanwhile: [`PageGuard`] checks the
/// thread before every use, and a guard dropped on another thread parks
/// its `Held` in [`ORPHANS`] for the owner to drop ([`reap`]).
struct Held(PageRef);

// SAFETY: see the type: a `Held` is only moved between threads, never
// used or dropped away from its owner (the read lock's release and the
// crate's per-thread borrow record stay on the thread that took them).
unsafe impl Send for Held {}

/// Guards dropped on a thread other than their owner, by owner.
static ORPHANS: Mutex<Vec<(ThreadId, Held)>> = Mutex::new(Vec::new());
/// `ORPHANS.len()`, read without the lock on every call.
static ORPHAN_COUNT: AtomicUsize = AtomicUsize::new(0);

/// Drop the guards of this thread that were dropped on other threads
/// (called at the start of every state call, so that the page is free
/// again before the call's own work).
pub(crate) fn reap() {
    if ORPHAN_COUNT.load(Ordering::Acquire) == 0 {
        return;
    }
    let me = std::thread::current().id();
    let mine: Vec<Held> = {
        let mut o = ORPHANS.lock().unwrap_or_else(|p| p.into_inner());
        let (mine, rest): (Vec<_>, Vec<_>) = o.drain(..).partition(|(t, _)| *t == me);
        *o = rest;
        ORPHAN_COUNT.store(o.len(), Ordering::Release);
        mine.into_iter().map(|(_, h)| h).collect()
    };
    drop(mine);
}

/// A read guard on one CPU page. Its methods answer on the thread that
/// took it; NumPy views of it may be read on any thread.
#[pyclass(frozen, module = "mmsb._mmsb")]
pub(crate) struct PageGuard {
    guard: Mutex<Option<Held>>,
    owner: ThreadId,
    exports: Arc<AtomicUsize>,
    page: u64,
    epoch: u64,
    len: usize,
    /// The address of the page's bytes, valid while `guard` holds a `Held`.
    ptr: usize,
}

impl Drop for PageGuard {
    fn drop(&mut self) {
        let Some(h) = self.guard.get_mut().unwrap_or_else(|p| p.into_inner()).take() else { return };
        if std::thread::current().id() == self.owner {
            drop(h);
        } else {
            let mut o = ORPHANS.lock().unwrap_or_else(|p| p.into_inner());
            o.push((self.owner, h));
            ORPHAN_COUNT.store(o.len(), Ordering::Release);
        }
    }
}

impl PageGuard {
    pub(crate) fn new(py: Python<'_>, state: &Arc<Mmsb>, page: PageId) -> PyResult<Self> {
        reap();
        // Waiting for the lock without the GIL: a writer holding it may be
        // running a Python recompute function. The closure runs on this
        // thread (`Python::detach` does not move it).
        let r = py.detach(|| state.read_page(page).map(Held)).py()?;
        let (epoch, len, ptr) = (r.0.epoch().get(), r.0.bytes().len(), r.0.bytes().as_ptr() as usize);
        Ok(Self {
            guard: Mutex::new(Some(r)),
            owner: std::thread::current().id(),
            exports: Arc::new(AtomicUsize::new(0)),
            page: page.0,
            epoch,
            len,
            ptr,
        })
    }

    /// Whether the guard is held, checked on its owner thread.
    fn check(&self) -> PyResult<()> {
        if std::thread::current().id() != self.owner {
            return Err(py_error_now(
                "GuardThreadError",
                format!(
                    "the read guard of page {} belongs to the thread that took it; use it there",
                    self.page
                ),
            ));
        }
        if self.guard.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
            return Err(py_error_now(
                "ViewReleasedError",
                format!("the read guard of page {} was released; read the page again", self.page),
            ));
        }
        Ok(())
    }
}

#[pymethods]
impl PageGuard {
    /// The page id.
    #[getter]
    fn page(&self) -> u64 {
        self.page
    }

    /// The page's epoch when the guard was taken (it cannot change while
    /// the guard is held).
    #[getter]
    fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Length in bytes.
    fn __len__(&self) -> usize {
        self.len
    }

    /// Whether the guard was released.
    #[getter]
    fn released(&self) -> bool {
        self.guard.lock().unwrap_or_else(|p| p.into_inner()).is_none()
    }

    /// NumPy views (and DLPack exports) of the page still alive.
    #[getter]
    fn exports(&self) -> usize {
        self.exports.load(Ordering::Acquire)
    }

    /// A new token for one NumPy view (`numpy.asarray(token)`).
    fn _token(slf: Bound<'_, Self>) -> PyResult<ViewToken> {
        let g = slf.get();
        g.check()?;
        g.exports.fetch_add(1, Ordering::AcqRel);
        Ok(ViewToken {
            _guard: slf.clone().into_any().unbind(),
            ptr: g.ptr,
            len: g.len,
            exports: g.exports.clone(),
        })
    }

    /// A copy of the bytes.
    fn tobytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
        self.check()?;
        let held = self.guard.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = held.as_ref().map(|h| h.0.bytes()).unwrap_or(&[]);
        Ok(pyo3::types::PyBytes::new(py, bytes))
    }

    /// Release the read lock. Refused (`ViewsAliveError`) while NumPy
    /// views or DLPack exports of the page are alive: delete them first.
    /// Releasing twice is allowed.
    fn release(&self) -> PyResult<()> {
        if std::thread::current().id() != self.owner {
            return Err(py_error_now(
                "GuardThreadError",
                format!(
                    "the read guard of page {} belongs to the thread that took it; release it there",
                    self.page
                ),
            ));
        }
        let mut held = self.guard.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.exports.load(Ordering::Acquire);
        if n > 0 && held.is_some() {
            return Err(py_error_now(
                "ViewsAliveError",
                format!(
                    "{n} NumPy view(s) or DLPack export(s) of page {} are still alive; delete them before releasing the guard",
                    self.page
                ),
            ));
        }
        drop(held.take());
        Ok(())
    }

    /// DLPack export of the page's bytes (CPU, uint8, read-only by
    /// convention: DLPack before 1.0 has no read-only flag).
    #[pyo3(signature = (stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__(
        slf: Bound<'_, Self>,
        stream: Option<Bound<'_, PyAny>>,
        max_version: Option<Bound<'_, PyAny>>,
        dl_device: Option<(i32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Py<PyAny>> {
        let _ = (stream, max_version);
        if dl_device.is_some_and(|d| d != (dlpack::DEVICE_CPU, 0)) {
            return Err(PyBufferError::new_err("a CPU page exports to the CPU only"));
        }
        if copy == Some(true) {
            return Err(PyBufferError::new_err(
                "MMSB exports pages without copying (copy=True is not offered)",
            ));
        }
        let py = slf.py();
        let g = slf.get();
        g.check()?;
        g.exports.fetch_add(1, Ordering::AcqRel);
        let keep = Keep::Host { _guard: slf.clone().into_any().unbind(), exports: g.exports.clone() };
        dlpack::capsule(py, g.ptr as *mut c_void, g.len as u64, (dlpack::DEVICE_CPU, 0), keep)
    }

    fn __dlpack_device__(&self) -> (i32, i32) {
        (dlpack::DEVICE_CPU, 0)
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __exit__(
        &self,
        _t: Option<Bound<'_, PyAny>>,
        _v: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        self.release()?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let state = if self.released() { "released" } else { "held" };
        format!("PageGuard(page={}, epoch={}, len={}, {state})", self.page, self.epoch, self.len)
    }
}

/// One NumPy view's hold on a guard: `numpy.asarray(token)` reads the
/// bytes in place through `__array_interface__`.
#[pyclass(frozen, module = "mmsb._mmsb")]
pub(crate) struct ViewToken {
    _guard: Py<PyAny>,
    ptr: usize,
    len: usize,
    exports: Arc<AtomicUsize>,
}

impl Drop for ViewToken {
    fn drop(&mut self) {
        self.exports.fetch_sub(1, Ordering::AcqRel);
    }
}

#[pymethods]
impl ViewToken {
    /// NumPy's array interface (version 3): one-dimensional, uint8,
    /// read-only, in place.
    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("version", 3)?;
        d.set_item("shape", (self.len,))?;
        d.set_item("typestr", "|u1")?;
        d.set_item("data", (self.ptr, true))?;
        Ok(d)
    }
}

/// How often `gpu_view` copies a page written meanwhile before it gives up.
const CAPTURE_ATTEMPTS: usize = 64;

/// A GPU page's device memory, exported without a copy (DLPack), with
/// the page's bytes kept on the host at `epoch` when `capture` was asked
/// for, so that `commit` can log what a consumer wrote.
#[pyclass(frozen, module = "mmsb._mmsb")]
pub(crate) struct DeviceView {
    state: Arc<Mmsb>,
    page: PageId,
    export: mmsb::gpu::DeviceExport,
    managed: bool,
    capture: Mutex<Option<(Vec<u8>, Epoch)>>,
}

impl DeviceView {
    pub(crate) fn new(py: Python<'_>, state: &Arc<Mmsb>, page: PageId, capture: bool) -> PyResult<Self> {
        py.detach(|| -> mmsb::Result<Self> {
            let (export, epoch) = state.export_device(page)?;
            let capture = if capture {
                // The bytes at `epoch`: read again until no write came
                // between the export and the copy (a bounded number of
                // times: a page written without pause is refused).
                let mut at = epoch;
                let mut got = None;
                for _ in 0..CAPTURE_ATTEMPTS {
                    let bytes = state.query_page(page)?;
                    let now = state.page_info(page)?.epoch;
                    if now == at {
                        got = Some((bytes, at));
                        break;
                    }
                    at = now;
                }
                match got {
                    Some(c) => Some(c),
                    None => {
                        let actual = state.page_info(page)?.epoch;
                        return Err(mmsb::Error::StaleEpoch { page, expected: at, actual });
                    }
                }
            } else {
                None
            };
            let managed = export.is_managed();
            Ok(Self { state: state.clone(), page, export, managed, capture: Mutex::new(capture) })
        })
        .py()
    }

    fn device_tuple(&self) -> (i32, i32) {
        let kind = if self.managed { dlpack::DEVICE_CUDA_MANAGED } else { dlpack::DEVICE_CUDA };
        (kind, self.export.device() as i32)
    }
}

#[pymethods]
impl DeviceView {
    /// The page id.
    #[getter]
    fn page(&self) -> u64 {
        self.page.0
    }

    /// The device ordinal.
    #[getter]
    fn device(&self) -> u32 {
        self.export.device()
    }

    /// The device address of the page's first byte (for comparison with a
    /// consumer's `data_ptr()`).
    #[getter]
    fn data_ptr(&self) -> u64 {
        self.export.address()
    }

    fn __len__(&self) -> usize {
        self.export.len() as usize
    }

    /// The epoch the captured bytes belong to (`None` without capture).
    #[getter]
    fn epoch(&self) -> Option<u64> {
        self.capture.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(_, e)| e.get())
    }

    #[pyo3(signature = (stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__(
        &self,
        py: Python<'_>,
        stream: Option<Bound<'_, PyAny>>,
        max_version: Option<Bound<'_, PyAny>>,
        dl_device: Option<(i32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Py<PyAny>> {
        // The export drained the device's stream; writes through MMSB since
        // then completed before they returned (immediate GPU apply), so the
        // bytes are ready for a consumer on any stream.
        let _ = (stream, max_version);
        if dl_device.is_some_and(|d| d != self.device_tuple()) {
            return Err(PyBufferError::new_err("a GPU page exports to its own device only"));
        }
        if copy == Some(true) {
            return Err(PyBufferError::new_err(
                "MMSB exports pages without copying (copy=True is not offered)",
            ));
        }
        let e = py.detach(|| self.state.export_device(self.page)).py()?.0;
        if e.address() != self.export.address() {
            return Err(py_error_now(
                "InvalidDeltaError",
                format!("page {} moved since the view was taken; take a new view", self.page.0),
            ));
        }
        let data = e.address() as usize as *mut c_void;
        let len = e.len();
        dlpack::capsule(py, data, len, self.device_tuple(), Keep::Device { _export: e })
    }

    fn __dlpack_device__(&self) -> (i32, i32) {
        self.device_tuple()
    }

    /// Log what consumers wrote through this view since it was taken (or
    /// since the last commit): the bytes that differ from the captured
    /// ones, as one user delta. Returns the new epoch, or `None` when
    /// nothing changed.
    fn commit(&self, py: Python<'_>) -> PyResult<Option<u64>> {
        py.detach(|| {
            let mut cap = self.capture.lock().unwrap_or_else(|p| p.into_inner());
            let Some((before, base)) = cap.as_mut() else {
                return Err(mmsb::Error::Config(
                    "this view was taken with capture=False: it cannot commit writes".into(),
                ));
            };
            let r = self.state.commit_device_writes(self.page, &self.export, before, *base)?;
            if let Some(e) = r {
                *base = e;
            }
            Ok(r.map(|e| e.get()))
        })
        .py()
    }

    fn __repr__(&self) -> String {
        format!(
            "DeviceView(page={}, device={}, len={}, ptr={:#x})",
            self.page.0,
            self.export.device(),
            self.export.len(),
            self.export.address()
        )
    }
}

/// Whether a DLPack capsule was consumed (renamed "used_dltensor").
#[pyfunction]
pub(crate) fn capsule_consumed(capsule: Bound<'_, PyAny>) -> bool {
    dlpack::consumed(&capsule)
}

//! Every `mmsb::Error` as an instance of the Python exception class of the
//! same name in `mmsb.errors` (a hierarchy rooted at `MmsbError`, defined
//! in Python so that classes can also derive from `ValueError`, `KeyError`
//! or `OSError`), with the error's fields as attributes.

use mmsb::Error;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use std::collections::HashMap;
use std::sync::Mutex;

/// The Python exception a recompute function raised, by function name,
/// until the [`Error::Recompute`] it caused is converted (it becomes that
/// exception's `__cause__`).
static RECOMPUTE_CAUSES: Mutex<Option<HashMap<String, PyErr>>> = Mutex::new(None);

/// Remember `err`, raised by recompute function `function`.
pub(crate) fn note_recompute_cause(function: &str, err: PyErr) {
    let mut causes = RECOMPUTE_CAUSES.lock().unwrap_or_else(|p| p.into_inner());
    causes.get_or_insert_with(HashMap::new).insert(function.to_owned(), err);
}

fn take_recompute_cause(function: &str) -> Option<PyErr> {
    let mut causes = RECOMPUTE_CAUSES.lock().unwrap_or_else(|p| p.into_inner());
    causes.as_mut().and_then(|c| c.remove(function))
}

/// An error of `mmsb.errors` by class name, with message and attributes.
pub(crate) fn py_error(py: Python<'_>, class: &str, msg: String, attrs: &[(&str, Py<PyAny>)]) -> PyErr {
    let made = (|| -> PyResult<PyErr> {
        let cls = py.import("mmsb.errors")?.getattr(class)?;
        let inst = cls.call1((msg.clone(),))?;
        for (k, v) in attrs {
            inst.setattr(*k, v)?;
        }
        Ok(PyErr::from_value(inst))
    })();
    made.unwrap_or_else(|e| PyRuntimeError::new_err(format!("{msg} (mmsb.errors.{class} unavailable: {e})")))
}

/// The Python exception for `e`.
pub(crate) fn to_py(e: Error) -> PyErr {
    Python::attach(|py| convert(py, e))
}

fn convert(py: Python<'_>, e: Error) -> PyErr {
    let msg = e.to_string();
    let int = |v: u64| -> Py<PyAny> {
        v.into_pyobject(py).map(|b| b.into_any().unbind()).unwrap_or_else(|_| py.None())
    };
    let text = |s: &str| -> Py<PyAny> {
        s.into_pyobject(py).map(|b| b.into_any().unbind()).unwrap_or_else(|_| py.None())
    };
    let (class, attrs): (&str, Vec<(&str, Py<PyAny>)>) = match &e {
        Error::PageNotFound(p) => ("PageNotFoundError", vec![("page", int(p.0))]),
        Error::PageExists(p) => ("PageExistsError", vec![("page", int(p.0))]),
        Error::InvalidDelta { page, .. } => {
            ("InvalidDeltaError", vec![("page", page.map(|p| int(p.0)).unwrap_or_else(|| py.None()))])
        }
        Error::InvalidPage { .. } => ("InvalidPageError", vec![]),
        Error::StaleEpoch { page, expected, actual } => (
            "StaleEpochError",
            vec![("page", int(page.0)), ("expected", int(expected.get())), ("actual", int(actual.get()))],
        ),
        Error::GpuMemory { device, requested, .. } => {
            ("GpuMemoryError", vec![("device", int(u64::from(*device))), ("requested", int(*requested))])
        }
        Error::Gpu { context, .. } => ("GpuError", vec![("context", text(context))]),
        Error::NoDevice { .. } => ("NoDeviceError", vec![]),
        Error::UnsupportedLocation { op, location } => {
            ("UnsupportedLocationError", vec![("op", text(op)), ("location", text(&location.to_string()))])
        }
        Error::Serialization(_) => ("SerializationError", vec![]),
        Error::GraphCycle { cycle } => {
            let pages: Vec<u64> = cycle.iter().map(|p| p.0).collect();
            let list = pages.into_pyobject(py).map(|b| b.into_any().unbind()).unwrap_or_else(|_| py.None());
            ("GraphCycleError", vec![("cycle", list)])
        }
        Error::InvalidEdge { from, to, .. } => {
            ("InvalidEdgeError", vec![("from_page", int(from.0)), ("to_page", int(to.0))])
        }
        Error::Function { name, .. } => ("FunctionError", vec![("function", text(name))]),
        Error::Recompute { page, function, .. } => {
            ("RecomputeError", vec![("page", int(page.0)), ("function", text(function))])
        }
        Error::Corrupt { offset, .. } => {
            ("CorruptError", vec![("offset", offset.map(int).unwrap_or_else(|| py.None()))])
        }
        Error::Io { .. } => ("IoError", vec![]),
        Error::Poisoned(_) => ("PoisonedError", vec![]),
        Error::Invariant(_) => ("InvariantError", vec![]),
        Error::Config(_) => ("ConfigError", vec![]),
        Error::Stopped => ("StoppedError", vec![]),
        Error::NotAState { dir, .. } => ("NotAStateError", vec![("dir", text(&dir.display().to_string()))]),
        Error::InUse { dir } => ("InUseError", vec![("dir", text(&dir.display().to_string()))]),
        Error::PageBorrowed { page } => ("PageBorrowedError", vec![("page", int(page.0))]),
        Error::TypeLayout { page, .. } => ("TypeLayoutError", vec![("page", int(page.0))]),
        _ => ("MmsbError", vec![]),
    };
    let err = py_error(py, class, msg, &attrs);
    if let Error::Recompute { function, .. } = &e {
        if let Some(cause) = take_recompute_cause(function) {
            err.set_cause(py, Some(cause));
        }
    }
    if let Error::Io { source, .. } = &e {
        if let Some(code) = source.raw_os_error() {
            let _ = err.value(py).setattr("errno", code);
        }
    }
    err
}

/// `Result` of the crate into `PyResult`.
pub(crate) trait IntoPy<T> {
    /// Convert the error.
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for mmsb::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

/// [`py_error`] without attributes, taking the GIL itself.
pub(crate) fn py_error_now(class: &str, msg: String) -> PyErr {
    Python::attach(|py| py_error(py, class, msg, &[]))
}

//! `mmsb._mmsb`: the native module of the `mmsb` Python package.
//!
//! A thin layer over the `mmsb` crate: every operation is one call of its
//! public API (no logic is written twice), made with the GIL released.
//! The Python package (`python/mmsb/__init__.py`) adds the idiom: NumPy
//! conversions, context managers, the batch block, iterators. The
//! reference is docs/PYTHON.md.

mod dlpack;
mod errors;
mod guard;
mod history;
mod state;

use pyo3::prelude::*;

/// The native module.
#[pymodule]
fn _mmsb(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<state::RawState>()?;
    m.add_class::<state::RawPayload>()?;
    m.add_class::<state::RawSubscription>()?;
    m.add_class::<guard::PageGuard>()?;
    m.add_class::<guard::ViewToken>()?;
    m.add_class::<guard::DeviceView>()?;
    m.add_function(wrap_pyfunction!(history::replay_to, m)?)?;
    m.add_function(wrap_pyfunction!(history::page_history, m)?)?;
    m.add_function(wrap_pyfunction!(history::provenance, m)?)?;
    m.add_function(wrap_pyfunction!(state::gpu_probe, m)?)?;
    m.add_function(wrap_pyfunction!(state::bench_rust_updates, m)?)?;
    m.add_function(wrap_pyfunction!(state::apply_ops_in_rust, m)?)?;
    m.add_function(wrap_pyfunction!(guard::capsule_consumed, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

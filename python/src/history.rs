//! The offline side: replay a state directory to an LSN or a logical
//! time, a page's history, the provenance of a version.

use crate::errors::IntoPy;
use mmsb::history::provenance::{chain_with, Origin};
use mmsb::history::replay::{self, Until};
use mmsb::vfs::StdVfs;
use mmsb::{Epoch, Limits, Lsn, PageId};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use std::path::PathBuf;

/// The state of `path` at LSN `lsn`, at logical time `time`, or at the
/// end of the log: `(pages, lsn, timestamp, state_hash)` with `pages` a
/// dict of page id to bytes.
#[pyfunction]
#[pyo3(signature = (path, lsn=None, time=None))]
pub(crate) fn replay_to<'py>(
    py: Python<'py>,
    path: PathBuf,
    lsn: Option<u64>,
    time: Option<u64>,
) -> PyResult<(Bound<'py, PyDict>, u64, u64, String)> {
    let until = match (lsn, time) {
        (Some(_), Some(_)) => {
            return Err(crate::errors::py_error_now("ConfigError", "give lsn or time, not both".into()))
        }
        (Some(l), None) => Until::Lsn(Lsn(l)),
        (None, Some(t)) => Until::Time(t),
        (None, None) => Until::End,
    };
    let r = py.detach(|| replay::replay_dir(&path, until)).py()?;
    let img = r.image;
    let pages = PyDict::new(py);
    for (id, p) in &img.pages {
        pages.set_item(id.0, PyBytes::new(py, &p.bytes))?;
    }
    Ok((pages, img.lsn, img.timestamp, format!("{:032x}", img.state_hash())))
}

/// One version: `(lsn, timestamp, epoch, bytes)`.
type Version<'py> = (u64, u64, u64, Bound<'py, PyBytes>);

/// Every version of `page` in `path`'s history, oldest first:
/// `[(lsn, timestamp, epoch, bytes), ...]`.
#[pyfunction]
pub(crate) fn page_history<'py>(py: Python<'py>, path: PathBuf, page: u64) -> PyResult<Vec<Version<'py>>> {
    let v = py.detach(|| replay::page_history(&StdVfs, &path, PageId(page), &Limits::default())).py()?;
    Ok(v.into_iter().map(|p| (p.lsn.0, p.timestamp, p.epoch.get(), PyBytes::new(py, &p.bytes))).collect())
}

/// The provenance of version `epoch` (default: the latest) of `page`:
/// `(steps, truncated, text)`, each step a dict.
#[pyfunction]
#[pyo3(signature = (path, page, epoch=None))]
pub(crate) fn provenance<'py>(
    py: Python<'py>,
    path: PathBuf,
    page: u64,
    epoch: Option<u64>,
) -> PyResult<(Vec<Bound<'py, PyDict>>, bool, String)> {
    let c =
        py.detach(|| chain_with(&StdVfs, &path, PageId(page), epoch.map(Epoch), &Limits::default())).py()?;
    let mut steps = Vec::with_capacity(c.steps.len());
    for s in &c.steps {
        let d = PyDict::new(py);
        d.set_item("page", s.page.0)?;
        d.set_item("epoch", s.epoch.get())?;
        d.set_item("delta", s.delta.map(|x| x.0))?;
        d.set_item("lsn", s.lsn.map(|x| x.0))?;
        d.set_item("timestamp", s.timestamp)?;
        d.set_item("parents", s.parents.clone())?;
        let origin = match &s.origin {
            Origin::User => "user",
            Origin::Replay => "replay",
            Origin::Derived { function, version, parents } => {
                d.set_item("function", function)?;
                d.set_item("version", version)?;
                d.set_item("read", parents.iter().map(|(p, e)| (p.0, e.get())).collect::<Vec<_>>())?;
                "derived"
            }
            Origin::Created => "created",
            Origin::BeforeHistory => "before_history",
            _ => "other",
        };
        d.set_item("origin", origin)?;
        steps.push(d);
    }
    Ok((steps, c.truncated, c.to_string()))
}

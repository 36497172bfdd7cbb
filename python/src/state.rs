//! The running state (`RawState`), payloads, subscriptions and the Rust
//! baselines the Python tests compare against.

use crate::errors::{note_recompute_cause, IntoPy};
use crate::guard::{reap, DeviceView, PageGuard};
use mmsb::{
    Config, DenseDelta, Durability, EdgeKind, Epoch, Event, Location, Mmsb, PageId, PageSpec, Payload,
    SourceKind, SparseDelta, Update,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyTuple};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn durability(s: &str) -> PyResult<Durability> {
    Ok(match s {
        "none" => Durability::None,
        "flush" => Durability::Flush,
        "fsync" | "sync" => Durability::SYNC,
        _ => {
            return Err(crate::errors::py_error_now(
                "ConfigError",
                format!("unknown durability {s:?} (none, flush, fsync)"),
            ))
        }
    })
}

pub(crate) fn location(s: &str) -> PyResult<Location> {
    Location::from_str(s).py()
}

fn edge_kind(s: &str) -> PyResult<EdgeKind> {
    match s {
        "data" => Ok(EdgeKind::Data),
        "control" => Ok(EdgeKind::Control),
        _ => Err(crate::errors::py_error_now(
            "ConfigError",
            format!("unknown edge kind {s:?} (data, control)"),
        )),
    }
}

fn bytes<'py>(py: Python<'py>, b: &[u8]) -> Bound<'py, PyBytes> {
    PyBytes::new(py, b)
}

/// A payload's bytes as runs `(offset, bytes)`, in page order.
pub(crate) fn payload_runs(p: &Payload) -> Vec<(u64, Vec<u8>)> {
    match p {
        Payload::Full(b) => vec![(0, b.clone())],
        Payload::Sparse(s) => s.iter().map(|(r, d)| (r.offset, d.to_vec())).collect(),
        Payload::Dense(d) => {
            let (words, data) = (d.mask_words(), d.data());
            let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
            for (i, &b) in data.iter().enumerate() {
                if words[i / 64] >> (i % 64) & 1 == 1 {
                    match out.last_mut() {
                        Some((o, v)) if *o as usize + v.len() == i => v.push(b),
                        _ => out.push((i as u64, vec![b])),
                    }
                }
            }
            out
        }
    }
}

/// A change to one page's bytes, built once and applied by
/// `RawState.apply` or `RawState.apply_batch`.
#[pyclass(frozen, module = "mmsb._mmsb")]
pub(crate) struct RawPayload {
    pub(crate) p: Payload,
}

#[pymethods]
impl RawPayload {
    /// The whole page's new bytes.
    #[staticmethod]
    fn full(data: &[u8]) -> Self {
        Self { p: Payload::Full(data.to_vec()) }
    }

    /// Byte runs: `[(offset, bytes), ...]`, in order, not overlapping.
    #[staticmethod]
    fn sparse(runs: Vec<(u64, Bound<'_, PyBytes>)>) -> PyResult<Self> {
        let d = SparseDelta::from_pairs(runs.iter().map(|(o, b)| (*o, b.as_bytes()))).py()?;
        Ok(Self { p: Payload::Sparse(d) })
    }

    /// Page-length `data` and a page-length `mask` (one byte per page
    /// byte, non-zero selects it).
    #[staticmethod]
    fn dense(data: &[u8], mask: &[u8]) -> PyResult<Self> {
        if mask.len() != data.len() {
            return Err(crate::errors::py_error_now(
                "InvalidDeltaError",
                format!("dense mask has {} entries but data has {} bytes", mask.len(), data.len()),
            ));
        }
        let mut words = vec![0u64; data.len().div_ceil(64)];
        for (i, &m) in mask.iter().enumerate() {
            if m != 0 {
                words[i / 64] |= 1 << (i % 64);
            }
        }
        Ok(Self { p: Payload::Dense(DenseDelta::from_words(words, data.to_vec()).py()?) })
    }

    /// The smallest payload turning `old` into `new` (equal lengths).
    #[staticmethod]
    fn diff(old: &[u8], new: &[u8]) -> PyResult<Self> {
        Ok(Self { p: Payload::diff(old, new).py()? })
    }

    /// "full", "sparse" or "dense".
    #[getter]
    fn kind(&self) -> &'static str {
        match self.p {
            Payload::Full(_) => "full",
            Payload::Sparse(_) => "sparse",
            Payload::Dense(_) => "dense",
        }
    }

    /// Bytes the payload replaces.
    #[getter]
    fn touched(&self) -> u64 {
        self.p.touched()
    }

    /// The replaced bytes as runs `[(offset, bytes), ...]`.
    fn runs<'py>(&self, py: Python<'py>) -> Vec<(u64, Bound<'py, PyBytes>)> {
        payload_runs(&self.p).into_iter().map(|(o, b)| (o, bytes(py, &b))).collect()
    }

    fn __repr__(&self) -> String {
        format!("Payload({}, {} bytes)", self.kind(), self.p.touched())
    }
}

/// The running state: one `mmsb::Mmsb` handle.
#[pyclass(frozen, module = "mmsb._mmsb")]
pub(crate) struct RawState {
    pub(crate) inner: Arc<Mmsb>,
}

fn epoch(e: Option<u64>) -> Option<Epoch> {
    e.map(Epoch)
}

#[pymethods]
impl RawState {
    #[new]
    #[pyo3(signature = (path=None, durability="flush", create=true, deferred=false, stop_checkpoint_bytes=None))]
    fn new(
        py: Python<'_>,
        path: Option<PathBuf>,
        durability: &str,
        create: bool,
        deferred: bool,
        stop_checkpoint_bytes: Option<u64>,
    ) -> PyResult<Self> {
        let d = self::durability(durability)?;
        let mut cfg = match (path, create) {
            (None, _) => Config::temporary(),
            (Some(p), true) => Config::at(p),
            (Some(p), false) => Config::existing(p),
        }
        .durability(d);
        if deferred {
            cfg = cfg.with_propagation(mmsb::PropagationMode::Deferred);
        }
        if let Some(n) = stop_checkpoint_bytes {
            cfg = cfg.stop_checkpoint_bytes(n);
        }
        let inner = py.detach(|| Mmsb::start(cfg)).py()?;
        Ok(Self { inner: Arc::new(inner) })
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.dir().to_path_buf()
    }

    #[pyo3(signature = (len, name=None, location="cpu", meta=None))]
    fn create_page(
        &self,
        py: Python<'_>,
        len: u64,
        name: Option<&str>,
        location: &str,
        meta: Option<Vec<(String, Vec<u8>)>>,
    ) -> PyResult<u64> {
        reap();
        let mut spec = PageSpec::new(len).on(self::location(location)?);
        if let Some(n) = name {
            spec = spec.named(n);
        }
        for (k, v) in meta.unwrap_or_default() {
            spec = spec.meta(k, v);
        }
        py.detach(|| self.inner.create_page(spec)).map(|p| p.0).py()
    }

    fn delete_page(&self, py: Python<'_>, page: u64) -> PyResult<()> {
        reap();
        py.detach(|| self.inner.delete_page(PageId(page))).py()
    }

    #[pyo3(signature = (page, data, base=None))]
    fn update_full(&self, py: Python<'_>, page: u64, data: &[u8], base: Option<u64>) -> PyResult<u64> {
        reap();
        let payload = Payload::Full(data.to_vec());
        let r = py.detach(|| match epoch(base) {
            None => self.inner.update_page(PageId(page), payload),
            Some(b) => self.inner.update_page_at(PageId(page), payload, b),
        });
        r.map(|e| e.get()).py()
    }

    #[pyo3(signature = (page, payload, base=None))]
    fn apply(&self, py: Python<'_>, page: u64, payload: &RawPayload, base: Option<u64>) -> PyResult<u64> {
        reap();
        let p = payload.p.clone();
        let r = py.detach(|| match epoch(base) {
            None => self.inner.update_page(PageId(page), p),
            Some(b) => self.inner.update_page_at(PageId(page), p, b),
        });
        r.map(|e| e.get()).py()
    }

    fn apply_batch(
        &self,
        py: Python<'_>,
        ops: Vec<(u64, PyRef<'_, RawPayload>, Option<u64>)>,
    ) -> PyResult<Vec<u64>> {
        reap();
        let updates: Vec<Update> = ops
            .iter()
            .map(|(page, p, base)| {
                let u = Update::new(PageId(*page), p.p.clone());
                match epoch(*base) {
                    Some(b) => u.at_epoch(b),
                    None => u,
                }
            })
            .collect();
        drop(ops);
        let r = py.detach(|| self.inner.update_batch(updates));
        r.map(|v| v.into_iter().map(|e| e.get()).collect()).py()
    }

    /// Commit the smallest delta turning `old` (the page's bytes at epoch
    /// `base`) into `new`; `None` when they are equal.
    fn write_diff(
        &self,
        py: Python<'_>,
        page: u64,
        old: &[u8],
        new: &[u8],
        base: u64,
    ) -> PyResult<Option<u64>> {
        reap();
        let payload = Payload::diff(old, new).py()?;
        if payload.touched() == 0 {
            return Ok(None);
        }
        let r = py.detach(|| self.inner.update_page_at(PageId(page), payload, Epoch(base)));
        r.map(|e| Some(e.get())).py()
    }

    fn query<'py>(&self, py: Python<'py>, page: u64) -> PyResult<Bound<'py, PyBytes>> {
        reap();
        let v = py.detach(|| self.inner.query_page(PageId(page))).py()?;
        Ok(bytes(py, &v))
    }

    fn read(&self, py: Python<'_>, page: u64) -> PyResult<PageGuard> {
        PageGuard::new(py, &self.inner, PageId(page))
    }

    fn page_info<'py>(&self, py: Python<'py>, page: u64) -> PyResult<Bound<'py, PyDict>> {
        let i = self.inner.page_info(PageId(page)).py()?;
        let d = PyDict::new(py);
        d.set_item("id", i.id.0)?;
        d.set_item("len", i.len)?;
        d.set_item("epoch", i.epoch.get())?;
        d.set_item("location", i.location.to_string())?;
        let meta = PyDict::new(py);
        for (k, v) in &i.meta {
            meta.set_item(k, bytes(py, v))?;
        }
        d.set_item("meta", meta)?;
        Ok(d)
    }

    fn page_ids(&self) -> Vec<u64> {
        self.inner.page_ids().into_iter().map(|p| p.0).collect()
    }

    fn page_named(&self, name: &str) -> Option<u64> {
        self.inner.page_named(name).map(|p| p.0)
    }

    /// Register `f(inputs: list[bytes], out: bytearray) -> None` as
    /// recompute function `name` at `version`.
    fn register_function(
        &self,
        py: Python<'_>,
        name: &str,
        version: u32,
        f: Py<PyAny>,
    ) -> PyResult<Vec<u64>> {
        reap();
        if !f.bind(py).is_callable() {
            return Err(PyTypeError::new_err("a recompute function must be callable"));
        }
        let fname = name.to_owned();
        let recompute = move |inputs: &[&[u8]], out: &mut [u8]| {
            let r = Python::attach(|py| -> PyResult<()> {
                let ins = PyList::new(py, inputs.iter().map(|b| PyBytes::new(py, b)))?;
                let buf = PyByteArray::new(py, out);
                f.call1(py, (ins, &buf))?;
                let got = buf.to_vec();
                if got.len() != out.len() {
                    return Err(PyValueError::new_err(format!(
                        "the recompute function resized its output from {} to {} bytes",
                        out.len(),
                        got.len()
                    )));
                }
                out.copy_from_slice(&got);
                Ok(())
            });
            if let Err(e) = r {
                let msg = Python::attach(|py| {
                    let name =
                        e.get_type(py).name().map(|n| n.to_string()).unwrap_or_else(|_| "Exception".into());
                    format!("{name}: {}", e.value(py))
                });
                note_recompute_cause(&fname, e);
                // The crate turns a panicking function into
                // `Error::Recompute` and applies nothing of the
                // propagation; the message names the Python exception.
                std::panic::panic_any(msg);
            }
        };
        let r = py.detach(|| self.inner.register_function(name, version, recompute));
        r.map(|v| v.into_iter().map(|p| p.0).collect()).py()
    }

    fn declare_derived(&self, py: Python<'_>, page: u64, function: &str, parents: Vec<u64>) -> PyResult<()> {
        reap();
        let parents: Vec<PageId> = parents.into_iter().map(PageId).collect();
        py.detach(|| self.inner.declare_derived(PageId(page), function, &parents)).py()
    }

    fn add_edge(&self, py: Python<'_>, from_page: u64, to_page: u64, kind: &str) -> PyResult<()> {
        reap();
        let k = edge_kind(kind)?;
        py.detach(|| self.inner.add_edge(PageId(from_page), PageId(to_page), k)).py()
    }

    fn remove_edge(&self, py: Python<'_>, from_page: u64, to_page: u64) -> PyResult<()> {
        reap();
        py.detach(|| self.inner.remove_edge(PageId(from_page), PageId(to_page))).py()
    }

    fn propagate(&self, py: Python<'_>) -> PyResult<()> {
        reap();
        py.detach(|| self.inner.propagate()).map(drop).py()
    }

    fn is_stale(&self, page: u64) -> PyResult<bool> {
        self.inner.is_stale(PageId(page)).py()
    }

    fn derivation(&self, page: u64) -> PyResult<Option<(String, u32, Vec<u64>)>> {
        let d = self.inner.derivation(PageId(page)).py()?;
        Ok(d.map(|d| (d.function, d.version, d.parents.into_iter().map(|p| p.0).collect())))
    }

    fn children(&self, page: u64) -> PyResult<Vec<(u64, &'static str)>> {
        let c = self.inner.children(PageId(page)).py()?;
        Ok(c.into_iter().map(|(p, k)| (p.0, if k == EdgeKind::Data { "data" } else { "control" })).collect())
    }

    fn subscribe(&self) -> RawSubscription {
        RawSubscription { sub: Mutex::new(self.inner.subscribe()) }
    }

    fn checkpoint<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        reap();
        let c = py.detach(|| self.inner.checkpoint()).py()?;
        let d = PyDict::new(py);
        d.set_item("lsn", c.lsn.0)?;
        d.set_item("path", c.path)?;
        d.set_item("pages", c.pages)?;
        d.set_item("bytes", c.bytes)?;
        d.set_item("removed_segments", c.removed_segments)?;
        d.set_item("removed_checkpoints", c.removed_checkpoints)?;
        Ok(d)
    }

    fn sync(&self, py: Python<'_>) -> PyResult<()> {
        reap();
        py.detach(|| self.inner.sync()).py()
    }

    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        reap();
        py.detach(|| self.inner.stop()).py()
    }

    fn lsn(&self) -> u64 {
        self.inner.lsn().0
    }

    fn timestamp(&self) -> u64 {
        self.inner.timestamp()
    }

    fn state_hash(&self, py: Python<'_>) -> PyResult<String> {
        reap();
        let h = py.detach(|| self.inner.state_hash()).py()?;
        Ok(format!("{h:032x}"))
    }

    fn diff_pages(&self, py: Python<'_>, old: u64, new: u64) -> PyResult<RawPayload> {
        reap();
        let p = py.detach(|| self.inner.diff_pages(PageId(old), PageId(new))).py()?;
        Ok(RawPayload { p })
    }

    fn compare_pages(&self, py: Python<'_>, a: u64, b: u64) -> PyResult<u64> {
        reap();
        py.detach(|| self.inner.compare_pages(PageId(a), PageId(b))).py()
    }

    fn migrate_page(&self, py: Python<'_>, page: u64, location: &str) -> PyResult<()> {
        reap();
        let to = self::location(location)?;
        py.detach(|| self.inner.migrate_page(PageId(page), to)).py()
    }

    fn verify(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.verify()).py()
    }

    #[pyo3(signature = (page, capture=true))]
    fn gpu_view(&self, py: Python<'_>, page: u64, capture: bool) -> PyResult<DeviceView> {
        reap();
        DeviceView::new(py, &self.inner, PageId(page), capture)
    }
}

/// Events of one subscriber.
#[pyclass(frozen, module = "mmsb._mmsb")]
pub(crate) struct RawSubscription {
    sub: Mutex<mmsb::Subscription>,
}

fn source(s: SourceKind) -> &'static str {
    match s {
        SourceKind::User => "user",
        SourceKind::Propagation => "propagation",
        SourceKind::Replay => "replay",
    }
}

fn event_dict<'py>(py: Python<'py>, e: &Event) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let kind = match e {
        Event::PageCreated { page, len } => {
            d.set_item("page", page.0)?;
            d.set_item("len", len)?;
            "page_created"
        }
        Event::PageDeleted { page } => {
            d.set_item("page", page.0)?;
            "page_deleted"
        }
        Event::DeltaApplied { page, epoch, source: s, bytes } => {
            d.set_item("page", page.0)?;
            d.set_item("epoch", epoch.get())?;
            d.set_item("source", source(*s))?;
            d.set_item("bytes", bytes)?;
            "delta_applied"
        }
        Event::EdgeAdded { from, to, kind } => {
            d.set_item("from_page", from.0)?;
            d.set_item("to_page", to.0)?;
            d.set_item("edge", if *kind == EdgeKind::Data { "data" } else { "control" })?;
            "edge_added"
        }
        Event::EdgeRemoved { from, to } => {
            d.set_item("from_page", from.0)?;
            d.set_item("to_page", to.0)?;
            "edge_removed"
        }
        Event::DerivedDeclared { page, function, version, parents } => {
            d.set_item("page", page.0)?;
            d.set_item("function", function)?;
            d.set_item("version", version)?;
            d.set_item("parents", parents.iter().map(|p| p.0).collect::<Vec<_>>())?;
            "derived_declared"
        }
        Event::PropagationStarted { dirty } => {
            d.set_item("dirty", dirty)?;
            "propagation_started"
        }
        Event::Recomputed { page, changed } => {
            d.set_item("page", page.0)?;
            d.set_item("changed", changed)?;
            "recomputed"
        }
        Event::PropagationFinished { dirty, recomputed, cut_off, duration } => {
            d.set_item("dirty", dirty)?;
            d.set_item("recomputed", recomputed)?;
            d.set_item("cut_off", cut_off)?;
            d.set_item("seconds", duration.as_secs_f64())?;
            "propagation_finished"
        }
        Event::CheckpointWritten { lsn } => {
            d.set_item("lsn", lsn.0)?;
            "checkpoint_written"
        }
        other => {
            d.set_item("debug", format!("{other:?}"))?;
            "other"
        }
    };
    d.set_item("kind", kind)?;
    Ok(d)
}

#[pymethods]
impl RawSubscription {
    /// The next event, waiting up to `timeout` seconds (0: only one
    /// already queued); `None` when there is none.
    #[pyo3(signature = (timeout=0.0))]
    fn recv<'py>(&self, py: Python<'py>, timeout: f64) -> PyResult<Option<Bound<'py, PyDict>>> {
        if !timeout.is_finite() || timeout < 0.0 {
            return Err(PyValueError::new_err("timeout must be a finite number of seconds, at least 0"));
        }
        let e = if timeout == 0.0 {
            self.sub.lock().unwrap_or_else(|p| p.into_inner()).try_recv()
        } else {
            let d = Duration::from_secs_f64(timeout);
            py.detach(|| self.sub.lock().unwrap_or_else(|p| p.into_inner()).recv_timeout(d))
        };
        e.map(|e| event_dict(py, &e)).transpose()
    }

    /// Events dropped for this subscriber because its queue was full.
    fn dropped(&self) -> u64 {
        self.sub.lock().unwrap_or_else(|p| p.into_inner()).dropped()
    }
}

/// `(True, info)` for GPU 0, or `(False, reason)`.
#[pyfunction]
pub(crate) fn gpu_probe<'py>(py: Python<'py>) -> PyResult<(bool, Bound<'py, PyAny>)> {
    match py.detach(mmsb::gpu::probe) {
        Ok(i) => {
            let d = PyDict::new(py);
            d.set_item("ordinal", i.ordinal)?;
            d.set_item("name", i.name)?;
            d.set_item("compute_capability", i.compute_capability)?;
            d.set_item("total_memory", i.total_memory)?;
            d.set_item("managed_memory", i.managed_memory)?;
            Ok((true, d.into_any()))
        }
        Err(e) => Ok((false, e.to_string().into_pyobject(py)?.into_any())),
    }
}

/// The Rust baseline of the per-update benchmark: `n` full updates of
/// `data` to `page`, in a loop of `Mmsb::update_page` calls (each one
/// copying `data` into its payload, as a Python update does). Returns
/// the seconds taken.
#[pyfunction]
pub(crate) fn bench_rust_updates(
    py: Python<'_>,
    state: &RawState,
    page: u64,
    data: &[u8],
    n: u64,
) -> PyResult<f64> {
    let s = &state.inner;
    py.detach(|| {
        let t = Instant::now();
        for _ in 0..n {
            s.update_page(PageId(page), Payload::Full(data.to_vec()))?;
        }
        Ok(t.elapsed().as_secs_f64())
    })
    .py()
}

/// One operation of [`apply_ops_in_rust`].
enum Op {
    Create(u64),
    Full(u64, Vec<u8>),
    Sparse(u64, Vec<(u64, Vec<u8>)>),
    Dense(u64, Vec<u8>, Vec<u8>),
}

fn parse_op(t: &Bound<'_, PyTuple>) -> PyResult<Op> {
    let kind: String = t.get_item(0)?.extract()?;
    let b =
        |i: usize| -> PyResult<Vec<u8>> { Ok(t.get_item(i)?.cast_into::<PyBytes>()?.as_bytes().to_vec()) };
    Ok(match kind.as_str() {
        "create" => Op::Create(t.get_item(1)?.extract()?),
        "full" => Op::Full(t.get_item(1)?.extract()?, b(2)?),
        "sparse" => {
            let runs: Vec<(u64, Bound<'_, PyBytes>)> = t.get_item(2)?.extract()?;
            Op::Sparse(
                t.get_item(1)?.extract()?,
                runs.iter().map(|(o, b)| (*o, b.as_bytes().to_vec())).collect(),
            )
        }
        "dense" => Op::Dense(t.get_item(1)?.extract()?, b(2)?, b(3)?),
        _ => return Err(PyValueError::new_err(format!("unknown op {kind:?}"))),
    })
}

/// Apply `ops` to a fresh temporary state with the Rust API directly
/// (`Mmsb::create_page`, `Mmsb::update_page` with payloads built by
/// `SparseDelta::from_pairs` and `DenseDelta::from_options`) and return
/// its state hash: the reference the Python property test compares the
/// Python API against. An op the state refuses is skipped, as the Python
/// side skips it. Ops: `("create", len)`, `("full", page, bytes)`,
/// `("sparse", page, [(offset, bytes)])`, `("dense", page, data, mask)`.
#[pyfunction]
pub(crate) fn apply_ops_in_rust(py: Python<'_>, ops: Vec<Bound<'_, PyTuple>>) -> PyResult<(String, u64)> {
    let ops: Vec<Op> = ops.iter().map(parse_op).collect::<PyResult<_>>()?;
    py.detach(|| -> mmsb::Result<(String, u64)> {
        let s = Mmsb::start(Config::temporary().durability(Durability::None))?;
        let mut refused = 0u64;
        for op in ops {
            let r = match op {
                Op::Create(len) => s.create_page(PageSpec::new(len)).map(drop),
                Op::Full(p, d) => s.update_page(PageId(p), Payload::Full(d)).map(drop),
                Op::Sparse(p, runs) => SparseDelta::from_pairs(runs.iter().map(|(o, b)| (*o, &b[..])))
                    .and_then(|d| s.update_page(PageId(p), Payload::Sparse(d)))
                    .map(drop),
                Op::Dense(p, data, mask) => {
                    let opts: Vec<Option<u8>> =
                        data.iter().zip(&mask).map(|(&b, &m)| (m != 0).then_some(b)).collect();
                    DenseDelta::from_options(&opts)
                        .and_then(|d| s.update_page(PageId(p), Payload::Dense(d)))
                        .map(drop)
                }
            };
            if r.is_err() {
                refused += 1;
            }
        }
        Ok((format!("{:032x}", s.state_hash()?), refused))
    })
    .py()
}

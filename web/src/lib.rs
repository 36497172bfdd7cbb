//! The MMSB viewer's core: a state directory's log segments and checkpoints,
//! held in memory, replayed by the `mmsb` crate's own storage layer (built
//! without its `engine` feature: no threads, no files), so that the state
//! the browser shows at an LSN is the one `mmsb replay --to LSN` prints,
//! to the last byte and the same state hash.
//!
//! [`Session`] is plain Rust, built and tested natively; the
//! `wasm-bindgen` surface the viewer's JavaScript calls is [`Viewer`].
//! Answers cross to JavaScript as JSON text.

mod bindings;
pub mod layout;
pub mod memvfs;

use memvfs::{MemVfs, ROOT};
use mmsb::history::provenance::{self, Chain, Origin};
use mmsb::history::replay::{self, StateImage, Until};
use mmsb::{Limits, Lsn, PageId};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

pub use bindings::Viewer;

/// A log directory's files in memory, the history's commit points, and
/// the state last replayed.
#[derive(Debug, Default)]
pub struct Session {
    vfs: MemVfs,
    limits: Limits,
    timeline: Option<Timeline>,
    /// The state at the end of the history, from the same replay as
    /// `timeline` (a point at or past its LSN needs no replay of its own).
    end: Option<StateImage>,
    /// The state shown, and the one compared with.
    current: Option<StateImage>,
    other: Option<StateImage>,
}

/// The history on hand: where it starts and every commit after that.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Timeline {
    /// The LSN and logical time the history starts at (the oldest
    /// checkpoint kept, or 0).
    pub start: Point,
    /// Each commit: the LSN of its last record and the logical time after it.
    pub commits: Vec<Point>,
    /// Bytes of a torn tail at the end of the log (a write in progress or
    /// one that never completed), left out as recovery leaves it out.
    pub torn_bytes: Option<u64>,
}

/// A commit boundary.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Point {
    /// LSN.
    pub lsn: u64,
    /// Logical time.
    pub time: u64,
}

/// One page of a replayed state.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PageRow {
    /// Id.
    pub id: u64,
    /// The `name` metadata, when it is text.
    pub name: Option<String>,
    /// Length in bytes.
    pub len: usize,
    /// Epoch.
    pub epoch: u64,
    /// Where it lives (`cpu`, `gpu:N`, `unified`).
    pub location: String,
    /// The `type` metadata (a layout), when there is one.
    pub layout: Option<String>,
    /// The recompute function, when the page is derived.
    pub derived: Option<String>,
    /// Metadata keys and values (text, or hex for bytes that are not).
    pub meta: BTreeMap<String, String>,
}

/// A replayed state in brief.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct StateView {
    /// LSN of the last record reflected.
    pub lsn: u64,
    /// Logical time.
    pub time: u64,
    /// The state hash, 32 hex digits (as `mmsb replay` prints it).
    pub hash: String,
    /// Pages in id order.
    pub pages: Vec<PageRow>,
    /// Total page bytes.
    pub bytes: u64,
}

/// How a page differs between the shown state and the compared one.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PageDiff {
    /// Id.
    pub id: u64,
    /// `added`, `removed`, `changed` or `same`.
    pub status: &'static str,
    /// Byte ranges `[offset, len]` that differ (for `changed`).
    pub ranges: Vec<(usize, usize)>,
    /// Bytes that differ.
    pub bytes: usize,
}

/// At most this many differing ranges are listed per page.
pub const MAX_RANGES: usize = 4096;

/// The errors a session reports: text for the viewer.
pub type Result<T> = std::result::Result<T, String>;

fn err(e: mmsb::Error) -> String {
    e.to_string()
}

fn text_or_hex(v: &[u8]) -> String {
    match std::str::from_utf8(v) {
        Ok(s) if !s.chars().any(char::is_control) => s.to_string(),
        _ => v.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

fn view(img: &StateImage) -> StateView {
    let pages = img
        .pages
        .values()
        .map(|p| {
            let text = |k: &str| p.meta.get(k).and_then(|v| std::str::from_utf8(v).ok()).map(str::to_string);
            PageRow {
                id: p.id.0,
                name: text("name"),
                len: p.bytes.len(),
                epoch: p.epoch.0,
                location: p.location.to_string(),
                layout: text(layout::TYPE_KEY),
                derived: img.graph.derived.get(&p.id).map(|d| d.function.to_string()),
                meta: p.meta.iter().map(|(k, v)| (k.clone(), text_or_hex(v))).collect(),
            }
        })
        .collect();
    StateView {
        lsn: img.lsn,
        time: img.timestamp,
        hash: format!("{:032x}", img.state_hash()),
        pages,
        bytes: img.pages.values().map(|p| p.bytes.len() as u64).sum(),
    }
}

/// Differing byte ranges of two equal-length pages (at most [`MAX_RANGES`]).
fn ranges(a: &[u8], b: &[u8]) -> (Vec<(usize, usize)>, usize) {
    let mut out: Vec<(usize, usize)> = Vec::new();
    let mut n = 0;
    let mut i = 0;
    while i < a.len() {
        if a[i] == b[i] {
            i += 1;
            continue;
        }
        let s = i;
        while i < a.len() && a[i] != b[i] {
            i += 1;
        }
        n += i - s;
        if out.len() < MAX_RANGES {
            out.push((s, i - s));
        }
    }
    (out, n)
}

impl Session {
    /// An empty session.
    pub fn new() -> Session {
        Session::default()
    }

    /// Set a log file's whole contents. The history is read again at the
    /// next [`Session::timeline`].
    pub fn set_file(&mut self, name: &str, bytes: Vec<u8>) {
        self.vfs.set(name, bytes);
        self.forget_history();
    }

    /// Append bytes fetched from `offset` of a log file (the live tail).
    ///
    /// # Errors
    /// When `offset` is not the file's length held: nothing changes.
    pub fn append_file(&mut self, name: &str, offset: u64, bytes: &[u8]) -> Result<()> {
        self.vfs.append(name, offset, bytes)?;
        self.forget_history();
        Ok(())
    }

    /// Forget a log file (one the directory no longer lists).
    pub fn remove_file(&mut self, name: &str) {
        self.vfs.forget(name);
        self.forget_history();
    }

    fn forget_history(&mut self) {
        self.timeline = None;
        self.end = None;
    }

    /// A log file's length held, when it is held.
    pub fn file_len(&self, name: &str) -> Option<u64> {
        self.vfs.len(name)
    }

    /// The files held, `[name, length]`.
    pub fn files(&self) -> Vec<(String, u64)> {
        self.vfs.files().map(|(n, l)| (n.to_string(), l)).collect()
    }

    /// The history's commit points (replays it once after files change).
    ///
    /// # Errors
    /// The replay's error (a corrupt record, a gap in the history...).
    pub fn timeline(&mut self) -> Result<&Timeline> {
        if self.timeline.is_none() {
            let (t, end) = self.read_timeline()?;
            self.timeline = Some(t);
            self.end = Some(end);
        }
        Ok(self.timeline.get_or_insert_with(Timeline::default))
    }

    fn read_timeline(&self) -> Result<(Timeline, StateImage)> {
        let t = replay::timeline(&self.vfs, Path::new(ROOT), &self.limits).map_err(err)?;
        let p = |c: replay::CommitPoint| Point { lsn: c.lsn.0, time: c.timestamp };
        let timeline = Timeline {
            start: p(t.start),
            commits: t.commits.into_iter().map(p).collect(),
            torn_bytes: t.torn.map(|t| t.bytes),
        };
        Ok((timeline, t.end))
    }

    fn replay(&self, until: Until) -> Result<StateImage> {
        // At or past the last commit: the timeline's own end state.
        if let Some(end) = &self.end {
            let past_end = match until {
                Until::End => true,
                Until::Lsn(l) => l.0 >= end.lsn,
                _ => false,
            };
            if past_end {
                return Ok(end.clone());
            }
        }
        replay::replay_to(&self.vfs, Path::new(ROOT), until, &self.limits).map(|r| r.image).map_err(err)
    }

    /// Replay to `lsn` (`None`: the end of the log) and show that state.
    ///
    /// # Errors
    /// The replay's error.
    pub fn goto_lsn(&mut self, lsn: Option<u64>) -> Result<StateView> {
        let img = self.replay(lsn.map_or(Until::End, |l| Until::Lsn(Lsn(l))))?;
        let v = view(&img);
        self.current = Some(img);
        Ok(v)
    }

    /// Replay to logical time `t` and show that state.
    ///
    /// # Errors
    /// The replay's error (a time before the history kept is refused).
    pub fn goto_time(&mut self, t: u64) -> Result<StateView> {
        let img = self.replay(Until::Time(t))?;
        let v = view(&img);
        self.current = Some(img);
        Ok(v)
    }

    /// Replay to `lsn` as the state to compare the shown one with.
    ///
    /// # Errors
    /// The replay's error.
    pub fn compare_lsn(&mut self, lsn: u64) -> Result<StateView> {
        let img = self.replay(Until::Lsn(Lsn(lsn)))?;
        let v = view(&img);
        self.other = Some(img);
        Ok(v)
    }

    /// Stop comparing.
    pub fn clear_compare(&mut self) {
        self.other = None;
    }

    fn current(&self) -> Result<&StateImage> {
        self.current.as_ref().ok_or_else(|| "no state replayed yet".to_string())
    }

    /// `len` bytes of page `id` from `offset` (fewer at the page's end) in
    /// the shown state.
    ///
    /// # Errors
    /// When there is no such page.
    pub fn page_bytes(&self, id: u64, offset: usize, len: usize) -> Result<Vec<u8>> {
        let p =
            self.current()?.pages.get(&PageId(id)).ok_or_else(|| format!("no page {id} at this point"))?;
        let b = &p.bytes[..];
        let s = offset.min(b.len());
        Ok(b[s..s.saturating_add(len).min(b.len())].to_vec())
    }

    /// Page `id` of the shown state as records of the type its metadata
    /// names ([`layout`]).
    ///
    /// # Errors
    /// When there is no such page, it names no type, or the type does not
    /// parse or fit.
    pub fn typed(&self, id: u64) -> Result<layout::Typed> {
        let p =
            self.current()?.pages.get(&PageId(id)).ok_or_else(|| format!("no page {id} at this point"))?;
        let t = p.meta.get(layout::TYPE_KEY).ok_or_else(|| format!("page {id} names no type"))?;
        let t = std::str::from_utf8(t).map_err(|_| format!("page {id}'s type is not text"))?;
        layout::decode(&layout::parse(t)?, &p.bytes)
    }

    /// How every page differs between the shown state and the compared one.
    ///
    /// # Errors
    /// When either state is missing.
    pub fn diff(&self) -> Result<Vec<PageDiff>> {
        let a = self.other.as_ref().ok_or_else(|| "no state to compare with".to_string())?;
        let b = self.current()?;
        let mut out = Vec::new();
        for (id, p) in &b.pages {
            let d = match a.pages.get(id) {
                None => PageDiff { id: id.0, status: "added", ranges: vec![], bytes: p.bytes.len() },
                Some(q) if q.bytes.len() != p.bytes.len() => PageDiff {
                    id: id.0,
                    status: "changed",
                    ranges: vec![(0, p.bytes.len())],
                    bytes: p.bytes.len(),
                },
                Some(q) => {
                    let (ranges, n) = ranges(&q.bytes, &p.bytes);
                    PageDiff { id: id.0, status: if n == 0 { "same" } else { "changed" }, ranges, bytes: n }
                }
            };
            out.push(d);
        }
        for (id, q) in &a.pages {
            if !b.pages.contains_key(id) {
                out.push(PageDiff { id: id.0, status: "removed", ranges: vec![], bytes: q.bytes.len() });
            }
        }
        Ok(out)
    }

    /// The provenance of page `id`'s version in the shown state: the
    /// derived deltas, functions and parent versions it came from, back to
    /// user writes.
    ///
    /// # Errors
    /// When there is no such page, or the history cannot be read.
    pub fn provenance(&self, id: u64) -> Result<Chain> {
        let p =
            self.current()?.pages.get(&PageId(id)).ok_or_else(|| format!("no page {id} at this point"))?;
        provenance::chain_with(&self.vfs, Path::new(ROOT), PageId(id), Some(p.epoch), &self.limits)
            .map_err(err)
    }
}

/// A provenance chain as JSON-friendly rows.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct StepRow {
    /// Page.
    pub page: u64,
    /// Epoch.
    pub epoch: u64,
    /// LSN of the delta, when in the history.
    pub lsn: Option<u64>,
    /// `user`, `derived`, `created`, `replay`, `before-history`.
    pub origin: &'static str,
    /// Function and version, for a derived version.
    pub function: Option<String>,
    /// Indexes of the parent rows.
    pub parents: Vec<usize>,
}

/// The rows of a chain (see [`Session::provenance`]).
pub fn chain_rows(c: &Chain) -> Vec<StepRow> {
    c.steps
        .iter()
        .map(|s| {
            let (origin, function) = match &s.origin {
                Origin::User => ("user", None),
                Origin::Replay => ("replay", None),
                Origin::Derived { function, version, .. } => {
                    ("derived", Some(format!("{function} v{version}")))
                }
                Origin::Created => ("created", None),
                Origin::BeforeHistory => ("before-history", None),
                _ => ("other", None),
            };
            StepRow {
                page: s.page.0,
                epoch: s.epoch.0,
                lsn: s.lsn.map(|l| l.0),
                origin,
                function,
                parents: s.parents.clone(),
            }
        })
        .collect()
}

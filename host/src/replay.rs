//! Replay and state images: a plain, ordered copy of a state that the log
//! replays into, with a state hash, a state diff, replay to an LSN or a
//! logical timestamp, and the full history of one page.
//!
//! Every change replayed is re-validated (the log is untrusted input): page
//! existence, payload fit, base epochs, epoch overflow, and that ids and
//! timestamps follow the order the commit path hands them out. A commit is
//! validated as a whole before any of it is applied.

use crate::change::Change;
use crate::codec::delta::{plain_sparse, DeltaView, PayloadView};
use crate::codec::page::{PageBytes, PageImage};
use crate::codec::Limits;
use crate::delta::{Delta, Payload, Source, SparseDelta};
use crate::graph::GraphImage;
use crate::log::reader::{self, Record, Visitor};
use crate::log::recovery::{RecoveryMode, TornTail};
use crate::page::{check_metadata, Location, Metadata};
use crate::vfs::Vfs;
use crate::{Error, Result};
use shared_types::{DeltaId, Epoch, Lsn, PageId};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A complete state: pages in id order plus the commit path's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateImage {
    /// Pages by id.
    pub pages: BTreeMap<PageId, PageImage>,
    /// Next page id the commit path hands out.
    pub next_page: u64,
    /// Next delta id.
    pub next_delta: u64,
    /// Logical time: changes accepted so far.
    pub timestamp: u64,
    /// LSN of the last log record reflected.
    pub lsn: u64,
    /// The dependency graph (derived pages and edges), as data.
    pub graph: GraphImage,
}

impl Default for StateImage {
    fn default() -> Self {
        Self {
            pages: BTreeMap::new(),
            next_page: 1,
            next_delta: 1,
            timestamp: 0,
            lsn: 0,
            graph: GraphImage::default(),
        }
    }
}

enum PayloadRef<'a> {
    View(PayloadView<'a>),
    Owned(&'a Payload),
}

impl PayloadRef<'_> {
    #[inline]
    fn check(&self, len: u64) -> Result<()> {
        match self {
            PayloadRef::View(v) => v.check(len),
            PayloadRef::Owned(p) => p.check(len),
        }
    }
    fn apply(&self, page: &mut [u8]) -> Result<()> {
        match self {
            PayloadRef::View(v) => v.apply_to(page),
            PayloadRef::Owned(p) => p.apply_to(page),
        }
    }
}

enum Op<'a> {
    Create {
        id: PageId,
        len: u64,
        location: Location,
        meta: &'a Metadata,
    },
    Delete {
        id: PageId,
    },
    Apply {
        id: DeltaId,
        page: PageId,
        base: Option<Epoch>,
        timestamp: u64,
        payload: PayloadRef<'a>,
    },
    /// A dependency-graph change: only the pages it names are checked.
    Graph(&'a Change),
}

fn op_of_record<'a>(r: &'a Record<'a>) -> Option<Op<'a>> {
    Some(match r {
        Record::Create { id, len, location, meta } => {
            Op::Create { id: *id, len: *len, location: *location, meta }
        }
        Record::Delete { id } => Op::Delete { id: *id },
        Record::Delta(v) => Op::Apply {
            id: v.id,
            page: v.page,
            base: v.base_epoch,
            timestamp: v.timestamp,
            payload: PayloadRef::View(v.payload),
        },
        Record::Graph(c) => Op::Graph(c),
        _ => return None,
    })
}

fn op_of_change(c: &Change) -> Op<'_> {
    match c {
        Change::CreatePage { id, len, location, meta } => {
            Op::Create { id: *id, len: *len, location: *location, meta }
        }
        Change::DeletePage { id } => Op::Delete { id: *id },
        Change::Apply(d) => Op::Apply {
            id: d.id,
            page: d.page,
            base: d.base_epoch,
            timestamp: d.timestamp,
            payload: PayloadRef::Owned(&d.payload),
        },
        graph => Op::Graph(graph),
    }
}

/// Validate one delta against its page (length `len`, at `epoch`) and the
/// commit's counters; the page's next epoch. `next_delta` advances past
/// the delta's id; `ts` is the logical time before it.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn check_apply(
    page: PageId,
    len: u64,
    epoch: Epoch,
    id: DeltaId,
    base: Option<Epoch>,
    timestamp: u64,
    payload: &PayloadRef<'_>,
    strict: bool,
    next_delta: &mut u64,
    ts: u64,
) -> Result<Epoch> {
    payload.check(len).map_err(|e| match e {
        Error::InvalidDelta { reason, .. } => Error::InvalidDelta { page: Some(page), reason },
        o => o,
    })?;
    if let Some(b) = base {
        if b != epoch {
            return Err(Error::StaleEpoch { page, expected: b, actual: epoch });
        }
    }
    let next = epoch.checked_next().ok_or_else(|| Error::invalid_delta(Some(page), "epoch overflow"))?;
    if strict && (id.0 < *next_delta || timestamp != ts + 1) {
        return Err(out_of_order(id, timestamp, *next_delta, ts));
    }
    *next_delta = (*next_delta).max(id.0.saturating_add(1));
    Ok(next)
}

#[cold]
#[inline(never)]
fn out_of_order(id: DeltaId, timestamp: u64, next_delta: u64, ts: u64) -> Error {
    Error::Invariant(format!(
        "delta {id} at time {timestamp} is out of order (next id {next_delta}, time {})",
        ts + 1
    ))
}

/// Pages a graph change names.
fn graph_pages(c: &Change) -> Vec<PageId> {
    match c {
        Change::AddEdge { from, to, .. } | Change::RemoveEdge { from, to } => vec![*from, *to],
        Change::DeclareDerived { page, parents, .. } => {
            std::iter::once(*page).chain(parents.iter().copied()).collect()
        }
        other => vec![other.page()],
    }
}

/// What applying a logged delta needs of it.
#[derive(Clone, Copy)]
struct ApplyView<'a> {
    id: DeltaId,
    page: PageId,
    timestamp: u64,
    base: Option<Epoch>,
    payload: PayloadView<'a>,
}

impl<'a> ApplyView<'a> {
    #[inline(always)]
    fn of(v: DeltaView<'a>) -> Self {
        Self { id: v.id, page: v.page, timestamp: v.timestamp, base: v.base_epoch, payload: v.payload }
    }
}

/// A page's state as a validation pass sees it: `None` = absent.
type Sim = Option<(u64, Epoch)>;

impl StateImage {
    /// An empty state (next ids 1, time 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// The state hash: XXH3-128 over every page in id order (id, length,
    /// epoch as `u64` LE, then the bytes), then the page count.
    pub fn state_hash(&self) -> u128 {
        hash_pages(self.pages.values().map(|p| (p.id, p.epoch, &p.bytes[..])))
    }

    fn validate<'o>(&self, ops: impl Iterator<Item = Op<'o>>, strict: bool) -> Result<()> {
        // Pages as this commit has left them so far: a one-entry write-back
        // cache in front of a map (commits mostly hit one page repeatedly).
        let mut overlay: BTreeMap<PageId, Sim> = BTreeMap::new();
        let mut last: Option<(PageId, Sim)> = None;
        let (mut next_page, mut next_delta, mut ts) = (self.next_page, self.next_delta, self.timestamp);
        for op in ops {
            let get = |overlay: &BTreeMap<PageId, Sim>, last: &Option<(PageId, Sim)>, id: PageId| -> Sim {
                if let Some((l, s)) = last {
                    if *l == id {
                        return *s;
                    }
                }
                match overlay.get(&id) {
                    Some(s) => *s,
                    None => self.pages.get(&id).map(|p| (p.bytes.len() as u64, p.epoch)),
                }
            };
            let set = |overlay: &mut BTreeMap<PageId, Sim>,
                       last: &mut Option<(PageId, Sim)>,
                       id: PageId,
                       s: Sim| {
                if let Some((l, old)) = last.take() {
                    if l != id {
                        overlay.insert(l, old);
                    }
                }
                *last = Some((id, s));
            };
            match &op {
                Op::Create { id, len, meta, .. } => {
                    if get(&overlay, &last, *id).is_some() {
                        return Err(Error::PageExists(*id));
                    }
                    if id.0 == 0 || (strict && id.0 < next_page) {
                        return Err(Error::Invariant(format!(
                            "page id {id} is out of order (next is {next_page})"
                        )));
                    }
                    // No allocation can hold more than isize::MAX bytes.
                    if *len == 0 || *len > isize::MAX as u64 {
                        return Err(Error::InvalidPage { reason: format!("page length {len}") });
                    }
                    check_metadata(meta)?;
                    next_page = next_page.max(id.0.saturating_add(1));
                    set(&mut overlay, &mut last, *id, Some((*len, Epoch(0))));
                }
                Op::Delete { id } => {
                    get(&overlay, &last, *id).ok_or(Error::PageNotFound(*id))?;
                    set(&mut overlay, &mut last, *id, None);
                }
                Op::Graph(c) => {
                    for p in graph_pages(c) {
                        get(&overlay, &last, p).ok_or(Error::PageNotFound(p))?;
                    }
                }
                Op::Apply { id, page, base, timestamp, payload } => {
                    let (len, epoch) = get(&overlay, &last, *page).ok_or(Error::PageNotFound(*page))?;
                    let next = check_apply(
                        *page,
                        len,
                        epoch,
                        *id,
                        *base,
                        *timestamp,
                        payload,
                        strict,
                        &mut next_delta,
                        ts,
                    )?;
                    set(&mut overlay, &mut last, *page, Some((len, next)));
                }
            }
            ts += 1;
        }
        Ok(())
    }

    /// [`StateImage::apply_commit`] for a commit of delta records only:
    /// each page the commit touches is looked up once (through a small
    /// per-commit table, not once per record), validated like
    /// [`StateImage::validate`] does, and its bytes are taken out of the map
    /// while the records are applied.
    fn apply_deltas(&mut self, commit: reader::Commit<'_, '_>) -> Result<()> {
        self.apply_delta_views(
            commit.len(),
            commit.iter().map(|(_, r)| match r {
                Record::Delta(v) => Ok(ApplyView::of(*v)),
                _ => Err(Error::Invariant("a delta commit holds another record".into())),
            }),
        )
    }

    /// [`StateImage::apply_deltas`] over the `n` delta views `views` yields
    /// (an `Err` among them refuses the commit): all are validated before
    /// any is applied.
    fn apply_delta_views<'v>(
        &mut self,
        n: usize,
        views: impl Iterator<Item = Result<ApplyView<'v>>>,
    ) -> Result<()> {
        const FREE: u32 = u32::MAX;
        // (page, length, epoch as the commit leaves it so far).
        // Distinct pages are at most min(records, pages): the table stays
        // at most half full.
        let mut slots: Vec<(PageId, u64, Epoch)> = Vec::with_capacity(n.min(self.pages.len()));
        let cap = (2 * n.min(self.pages.len()) + 2).next_power_of_two();
        let bits = cap.trailing_zeros();
        let mut table = vec![FREE; cap];
        // Each record's page slot and payload, for the apply pass.
        let mut plan: Vec<(u32, PayloadView<'v>)> = Vec::with_capacity(n);
        let (mut next_delta, mut ts) = (self.next_delta, self.timestamp);
        for v in views {
            let v = v?;
            let mut h = (v.page.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize;
            let k = loop {
                let e = table[h];
                if e == FREE {
                    if 2 * (slots.len() + 1) > cap {
                        return Err(Error::Invariant("replay page table overflow".into()));
                    }
                    let p = self.pages.get(&v.page).ok_or(Error::PageNotFound(v.page))?;
                    table[h] = slots.len() as u32;
                    slots.push((v.page, p.bytes.len() as u64, p.epoch));
                    break slots.len() - 1;
                }
                if slots[e as usize].0 == v.page {
                    break e as usize;
                }
                h = (h + 1) & (cap - 1);
            };
            let (page, len, epoch) = slots[k];
            let payload = PayloadRef::View(v.payload);
            let next = check_apply(
                page,
                len,
                epoch,
                v.id,
                v.base,
                v.timestamp,
                &payload,
                true,
                &mut next_delta,
                ts,
            )?;
            slots[k].2 = next;
            plan.push((k as u32, v.payload));
            ts += 1;
        }
        // Valid as a whole: apply. The bytes of each page leave the map once.
        let mut bytes: Vec<PageBytes> = slots
            .iter()
            .map(|(id, ..)| self.pages.get_mut(id).map(|p| std::mem::take(&mut p.bytes)).unwrap_or_default())
            .collect();
        let mut res = Ok(());
        for (k, payload) in &plan {
            if let Err(e) = payload.apply_to(&mut bytes[*k as usize]) {
                res = Err(e);
                break;
            }
        }
        for ((id, _, epoch), b) in slots.iter().zip(bytes) {
            if let Some(p) = self.pages.get_mut(id) {
                p.bytes = b;
                if res.is_ok() {
                    p.epoch = *epoch;
                }
            }
        }
        res?;
        self.next_delta = next_delta;
        self.timestamp = ts;
        Ok(())
    }

    /// [`StateImage::apply_commit`] for a batch of delta records read
    /// straight from their frames: each body is decoded as the commit is
    /// validated (plain bodies with sparse payloads in one pass), with
    /// nothing collected but the payloads to apply. Errors are those of the
    /// first invalid record, though not always in the words of
    /// [`StateImage::apply_commit`] (callers re-read a refused batch the
    /// general way to report it); the image is then unchanged.
    fn apply_delta_frames(&mut self, frames: reader::DeltaFrames<'_>, limits: &Limits) -> Result<()> {
        self.apply_delta_views(
            frames.len(),
            frames.bodies().map(|(at, body)| match plain_sparse(body, limits) {
                Some(p) => Ok(ApplyView {
                    id: DeltaId(p.id),
                    page: PageId(p.page),
                    timestamp: p.timestamp,
                    base: p.base_epoch.map(Epoch),
                    payload: PayloadView::Sparse { runs: p.runs, data: p.data, end: p.end },
                }),
                None => DeltaView::parse(body, at, limits).map(ApplyView::of),
            }),
        )?;
        self.lsn = frames.end_lsn();
        Ok(())
    }

    fn apply_ops<'o>(&mut self, ops: impl Iterator<Item = Op<'o>>) -> Result<()> {
        for op in ops {
            match &op {
                Op::Create { id, len, location, meta } => {
                    self.pages.insert(
                        *id,
                        PageImage {
                            id: *id,
                            epoch: Epoch(0),
                            location: *location,
                            meta: (*meta).clone(),
                            bytes: vec![0; *len as usize].into(),
                        },
                    );
                    self.next_page = self.next_page.max(id.0 + 1);
                }
                Op::Delete { id } => {
                    self.pages.remove(id);
                    self.graph.apply(&Change::DeletePage { id: *id });
                }
                Op::Graph(c) => self.graph.apply(c),
                Op::Apply { id, page, payload, .. } => {
                    let p = self.pages.get_mut(page).ok_or(Error::PageNotFound(*page))?;
                    payload.apply(&mut p.bytes)?;
                    p.epoch = Epoch(p.epoch.0 + 1);
                    self.next_delta = self.next_delta.max(id.0.saturating_add(1));
                }
            }
            self.timestamp += 1;
        }
        Ok(())
    }

    /// Validate and apply one committed unit read from the log: all of it or
    /// none of it.
    ///
    /// # Errors
    /// The typed error of the first invalid change; the image is unchanged.
    pub fn apply_commit(&mut self, commit: reader::Commit<'_, '_>) -> Result<()> {
        if commit.len() >= 4 && commit.iter().all(|(_, r)| matches!(r, Record::Delta(_))) {
            self.apply_deltas(commit)?;
        } else {
            // Two passes over the borrowed records: nothing is collected.
            let ops = || commit.iter().filter_map(|(_, r)| op_of_record(r));
            self.validate(ops(), true)?;
            self.apply_ops(ops())?;
        }
        self.lsn = commit.end_lsn();
        Ok(())
    }

    /// Validate and apply changes (for example a [`diff`]) in order, all or
    /// nothing. Ids and timestamps need not follow this image's counters.
    ///
    /// # Errors
    /// The typed error of the first invalid change; the image is unchanged.
    pub fn apply_changes(&mut self, changes: &[Change]) -> Result<()> {
        self.validate(changes.iter().map(op_of_change), false)?;
        self.apply_ops(changes.iter().map(op_of_change))
    }
}

/// XXH3-128 over `(id, epoch, bytes)` in the given (id) order; see
/// [`StateImage::state_hash`].
pub fn hash_pages<'a>(pages: impl Iterator<Item = (PageId, Epoch, &'a [u8])>) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut n = 0u64;
    for (id, epoch, bytes) in pages {
        h.update(&id.0.to_le_bytes());
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(&epoch.0.to_le_bytes());
        h.update(bytes);
        n += 1;
    }
    h.update(&n.to_le_bytes());
    h.digest128()
}

/// The changes that turn state `a` into state `b`: applying them to `a`
/// with [`StateImage::apply_changes`] gives a state with `b`'s hash.
///
/// A page present in both with the same length, location and metadata and
/// an epoch that did not go back gets one delta with the byte difference
/// plus empty deltas up to `b`'s epoch; any other page is deleted and/or
/// created afresh and brought to its epoch the same way.
///
/// # Complexity
/// O(total page bytes + total epoch difference) changes.
///
/// # Errors
/// [`Error::Invariant`] when `b` holds a page at epoch 0 whose bytes are not
/// zero (no sequence of changes can produce it).
pub fn diff(a: &StateImage, b: &StateImage) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    let (mut next_delta, mut ts) = (a.next_delta, a.timestamp);
    let mut push_deltas = |out: &mut Vec<Change>, page: PageId, first: Payload, count: u64| {
        for k in 0..count {
            ts += 1;
            let payload = if k == 0 { first.clone() } else { Payload::Sparse(SparseDelta::default()) };
            out.push(Change::Apply(Delta {
                id: DeltaId(next_delta),
                page,
                base_epoch: None,
                payload,
                source: Source::Replay,
                tag: None,
                timestamp: ts,
            }));
            next_delta += 1;
        }
    };
    let ids: std::collections::BTreeSet<PageId> = a.pages.keys().chain(b.pages.keys()).copied().collect();
    for id in ids {
        match (a.pages.get(&id), b.pages.get(&id)) {
            (Some(_), None) => out.push(Change::DeletePage { id }),
            (pa, Some(pb)) => {
                let keep = pa.filter(|pa| {
                    pa.bytes.len() == pb.bytes.len()
                        && pa.location == pb.location
                        && pa.meta == pb.meta
                        && (pb.epoch > pa.epoch || (pb.epoch == pa.epoch && pa.bytes == pb.bytes))
                });
                match keep {
                    Some(pa) => {
                        let k = pb.epoch.0 - pa.epoch.0;
                        if k > 0 {
                            push_deltas(&mut out, id, Payload::diff(&pa.bytes, &pb.bytes)?, k);
                        }
                    }
                    None => {
                        if pa.is_some() {
                            out.push(Change::DeletePage { id });
                        }
                        out.push(Change::CreatePage {
                            id,
                            len: pb.bytes.len() as u64,
                            location: pb.location,
                            meta: pb.meta.clone(),
                        });
                        let zeros = vec![0u8; pb.bytes.len()];
                        if pb.epoch.0 == 0 {
                            if pb.bytes != zeros {
                                return Err(Error::Invariant(format!(
                                    "page {id} is at epoch 0 but not zero"
                                )));
                            }
                        } else {
                            push_deltas(&mut out, id, Payload::diff(&zeros, &pb.bytes)?, pb.epoch.0);
                        }
                    }
                }
            }
            (None, None) => {}
        }
    }
    Ok(out)
}

/// Replay a state directory with a stop rule and an observer.
///
/// `stop(image, commit)` is asked before each committed unit is applied;
/// `seen(image, commit)` after. Uses the newest valid checkpoint whose LSN
/// is at most `max_ckpt_lsn`.
///
/// # Errors
/// As recovery: [`Error::Corrupt`] (strict mode), [`Error::Io`], or a
/// typed validation error for a change that cannot be replayed.
pub fn replay_with(
    vfs: &dyn Vfs,
    state_dir: &Path,
    max_ckpt_lsn: Option<u64>,
    limits: &Limits,
    stop: &mut dyn FnMut(&StateImage, reader::Commit<'_, '_>) -> bool,
    seen: &mut dyn FnMut(&StateImage, reader::Commit<'_, '_>),
) -> Result<StateImage> {
    replay_impl(vfs, state_dir, max_ckpt_lsn, limits, stop, seen, None).map(|(image, _)| image)
}

/// Whether a batch of delta records (the LSN of its end marker, its record
/// count) must go the general way because the stop rule may stop at it;
/// the image as it is before the batch.
type FastStop<'s> = &'s dyn Fn(&StateImage, u64, usize) -> bool;

struct Replayer<'r> {
    image: StateImage,
    limits: &'r Limits,
    stop: &'r mut dyn FnMut(&StateImage, reader::Commit<'_, '_>) -> bool,
    seen: &'r mut dyn FnMut(&StateImage, reader::Commit<'_, '_>),
    /// Set when `seen` ignores batches of delta records and this answers
    /// for `stop` on them: such batches are then applied undecoded.
    fast_stop: Option<FastStop<'r>>,
}

impl Visitor for Replayer<'_> {
    fn commit(&mut self, c: reader::Commit<'_, '_>) -> Result<bool> {
        if (self.stop)(&self.image, c) {
            return Ok(false);
        }
        self.image.apply_commit(c)?;
        (self.seen)(&self.image, c);
        Ok(true)
    }

    fn delta_batch(&mut self, frames: reader::DeltaFrames<'_>) -> Option<bool> {
        let general = self.fast_stop?;
        if general(&self.image, frames.end_lsn(), frames.len()) {
            return None;
        }
        // A refused batch is left to `commit`, which reports why.
        self.image.apply_delta_frames(frames, self.limits).ok().map(|()| true)
    }

    fn takes_delta_batches(&self) -> bool {
        self.fast_stop.is_some()
    }
}

/// [`replay_with`], and with `fast_stop` (see [`Replayer`]) batches of
/// delta records are applied without being decoded into records.
fn replay_impl(
    vfs: &dyn Vfs,
    state_dir: &Path,
    max_ckpt_lsn: Option<u64>,
    limits: &Limits,
    stop: &mut dyn FnMut(&StateImage, reader::Commit<'_, '_>) -> bool,
    seen: &mut dyn FnMut(&StateImage, reader::Commit<'_, '_>),
    fast_stop: Option<FastStop<'_>>,
) -> Result<(StateImage, Option<TornTail>)> {
    let dir = crate::log::log_dir(state_dir);
    // A directory that is not there is an error, not an empty state.
    let names = vfs.list(&dir).map_err(|e| Error::from(e).in_file(&dir))?;
    let (ckpt, bad) = crate::checkpoint::newest_valid(vfs, &dir, limits, max_ckpt_lsn)?;
    let image = ckpt.map(|(_, img)| img).unwrap_or_default();
    let after = image.lsn;
    if let Some(first) = log_starts_after(vfs, &dir, &names, after) {
        return Err(history_gap(vfs, &dir, after, first, &bad)?);
    }
    let mut r = Replayer { image, limits, stop, seen, fast_stop };
    let scan = reader::scan_with(vfs, &dir, after, RecoveryMode::Strict, limits, &mut r)?;
    Ok((r.image, scan.torn))
}

/// Where the log of `dir` (its file `names`) starts, when that is past
/// LSN `after + 1`: the records after `after` before it are in no file.
/// The start is the lowest first LSN among the segments whose headers read
/// (any segment, whatever its generation: a replay can start in none
/// earlier).
pub(crate) fn log_starts_after(vfs: &dyn Vfs, dir: &Path, names: &[String], after: u64) -> Option<u64> {
    let first = |name: &String| -> Option<u64> {
        crate::log::parse_segment_name(name)?;
        segment_header(vfs, &dir.join(name)).ok().map(|h| h.first_lsn)
    };
    names.iter().filter_map(first).min().filter(|&f| f > after + 1)
}

/// The header of the segment at `path`.
fn segment_header(vfs: &dyn Vfs, path: &Path) -> Result<reader::SegmentHeader> {
    let mut f = vfs.open_read(path)?;
    let mut head = [0u8; crate::log::SEGMENT_HEAD_LEN];
    f.read_exact_at(&mut head, 0)?;
    reader::parse_segment_header(&head)
}

/// The first segment of `dir` (by name) whose header cannot be read, and
/// why (a segment is named only once its header is durable, so no crash
/// leaves one).
pub(crate) fn unreadable_segment(vfs: &dyn Vfs, dir: &Path) -> Option<(PathBuf, Error)> {
    let names = vfs.list(dir).ok()?;
    names.iter().filter(|n| crate::log::parse_segment_name(n).is_some()).find_map(|n| {
        let path = dir.join(n);
        segment_header(vfs, &path).err().map(|e| (path, e))
    })
}

/// Why a replay that would start after LSN `after` cannot: the log starts
/// at LSN `first`, later. Earlier records go when a checkpoint retires
/// them, so this is either a point before the oldest history kept (a
/// checkpoint after it exists), a checkpoint that should cover the gap but
/// does not verify (`bad`, newest first), or lost files.
pub(crate) fn history_gap(
    vfs: &dyn Vfs,
    dir: &Path,
    after: u64,
    first: u64,
    bad: &[(PathBuf, Error)],
) -> Result<Error> {
    if let Some((path, e)) = bad.first() {
        let (offset, why) = match e {
            Error::Corrupt { offset, reason, .. } => (*offset, reason.clone()),
            other => (None, other.to_string()),
        };
        return Ok(Error::Corrupt {
            file: Some(path.clone()),
            offset,
            reason: format!(
                "{why}; this checkpoint does not verify, and the log records it covers ({}..{}) \
                 were retired when it was taken: the state cannot be rebuilt without it",
                after + 1,
                first - 1
            ),
        });
    }
    // A segment whose header does not read may hold the missing records:
    // name it rather than the gap.
    if let Some((path, e)) = unreadable_segment(vfs, dir) {
        let (offset, why) = match e {
            Error::Corrupt { offset, reason, .. } => (offset, reason),
            other => (None, other.to_string()),
        };
        return Ok(Error::Corrupt {
            file: Some(path),
            offset,
            reason: format!(
                "{why}; the readable log starts at LSN {first}, so records {}..{} may be in this segment",
                after + 1,
                first - 1
            ),
        });
    }
    let kept = crate::checkpoint::list(vfs, dir)?;
    Ok(match kept.last() {
        Some((oldest, path)) => {
            // Its logical time too, for a point asked for as a time (an
            // error path: the checkpoint is read whole).
            let time = crate::checkpoint::read(vfs, path, &crate::codec::Limits::default())
                .map(|img| format!(" (logical time {})", img.timestamp))
                .unwrap_or_default();
            Error::Config(format!(
                "the point asked for is before the oldest history kept in {}: its oldest \
                 checkpoint is at LSN {oldest}{time} and the log starts at LSN {first} (a \
                 checkpoint retires the log records before it); replay to that checkpoint or later",
                dir.display()
            ))
        }
        None => Error::Corrupt {
            file: Some(dir.to_path_buf()),
            offset: None,
            reason: format!(
                "the log starts at LSN {first} and no checkpoint covers records {}..{}",
                after + 1,
                first - 1
            ),
        },
    })
}

/// Where [`replay_to`] stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// The end of the log.
    End,
    /// The last commit whose last record is at or before this LSN.
    Lsn(Lsn),
    /// The last commit boundary at which at most this many changes
    /// (logical time) had been accepted.
    Time(u64),
}

/// What [`replay_to`] rebuilt, and what it found at the end of the log.
#[derive(Debug)]
pub struct Replayed {
    /// The state.
    pub image: StateImage,
    /// The torn tail the log ends in (the bytes of a write that never
    /// completed, left out of the replay, as recovery leaves them out),
    /// when the replay read that far and there is one.
    pub torn: Option<TornTail>,
}

/// Replay `state_dir` (newest usable checkpoint at or before the point,
/// then the log) up to `until`.
///
/// # Errors
/// As [`replay_with`]; [`Error::Config`] when the point precedes the
/// oldest history still on disk (a checkpoint retired the log before it);
/// [`Error::Corrupt`] naming the checkpoint when the one that should cover
/// the retired log does not verify.
pub fn replay_to(vfs: &dyn Vfs, state_dir: &Path, until: Until, limits: &Limits) -> Result<Replayed> {
    let (image, torn) = match until {
        Until::End | Until::Lsn(_) => {
            let target = match until {
                Until::Lsn(l) => l.0,
                _ => u64::MAX,
            };
            replay_impl(
                vfs,
                state_dir,
                Some(target),
                limits,
                &mut |_, c| c.end_lsn() > target,
                &mut |_, _| {},
                Some(&|_, last, _| last > target),
            )?
        }
        Until::Time(t) => {
            let dir = crate::log::log_dir(state_dir);
            // The newest checkpoint not past `t`.
            let mut best: Option<u64> = None;
            for (lsn, path) in crate::checkpoint::list(vfs, &dir)? {
                if let Ok(img) = crate::checkpoint::read(vfs, &path, limits) {
                    if img.timestamp <= t {
                        best = Some(lsn);
                        break;
                    }
                }
            }
            replay_impl(
                vfs,
                state_dir,
                Some(best.unwrap_or(0)),
                limits,
                &mut |img, c| img.timestamp + c.len() as u64 > t,
                &mut |_, _| {},
                Some(&|img, _, n| img.timestamp + n as u64 > t),
            )?
        }
    };
    Ok(Replayed { image, torn })
}

/// Replay the state directory `state_dir` up to `until`: [`replay_to`]
/// over the real file system with the default [`Limits`], the common case
/// in one call. It only reads, and works on a directory a running handle
/// writes (it sees the commits written so far).
///
/// # Errors
/// As [`replay_to`].
///
/// # Examples
/// ```
/// use mmsb::replay::{replay_dir, Until};
/// use mmsb::{Config, Mmsb, PageSpec, Payload};
/// # fn main() -> mmsb::Result<()> {
/// let dir = tempfile::tempdir()?;
/// let state = Mmsb::start(Config::at(dir.path()))?;
/// let p = state.create_page(PageSpec::new(4))?;
/// state.update_page(p, Payload::Full(vec![1; 4]))?;
/// let before = state.lsn();
/// state.update_page(p, Payload::Full(vec![2; 4]))?;
/// state.stop()?;
/// let then = replay_dir(dir.path(), Until::Lsn(before))?.image;
/// assert_eq!(then.lsn, before.0);
/// assert_eq!(&then.pages[&p].bytes[..], &[1; 4]);
/// # Ok(())
/// # }
/// ```
pub fn replay_dir(state_dir: &Path, until: Until) -> Result<Replayed> {
    replay_to(&crate::vfs::StdVfs, state_dir, until, &Limits::default())
}

/// The state as of LSN `to` (every commit whose last record is at or
/// before it), or the end of the log: [`replay_to`]'s state.
///
/// # Errors
/// As [`replay_to`].
pub fn replay_to_lsn(
    vfs: &dyn Vfs,
    state_dir: &Path,
    to: Option<Lsn>,
    limits: &Limits,
) -> Result<StateImage> {
    replay_to(vfs, state_dir, to.map_or(Until::End, Until::Lsn), limits).map(|r| r.image)
}

/// The state as of logical time `t`: the last commit boundary at which at
/// most `t` changes had been accepted ([`replay_to`]'s state).
///
/// # Errors
/// As [`replay_to`].
pub fn replay_to_timestamp(vfs: &dyn Vfs, state_dir: &Path, t: u64, limits: &Limits) -> Result<StateImage> {
    replay_to(vfs, state_dir, Until::Time(t), limits).map(|r| r.image)
}

/// One version of a page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageVersion {
    /// LSN of the commit that produced it (the checkpoint's LSN for the first
    /// version when history starts at a checkpoint).
    pub lsn: Lsn,
    /// Logical time after that commit.
    pub timestamp: u64,
    /// The page's epoch.
    pub epoch: Epoch,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// Every version of page `id` recorded in the history still on disk, oldest
/// first (history starts at the oldest checkpoint kept, or at creation).
///
/// # Errors
/// As [`replay_with`]; [`Error::PageNotFound`] when the history on disk
/// holds no version of the page.
pub fn page_history(
    vfs: &dyn Vfs,
    state_dir: &Path,
    id: PageId,
    limits: &Limits,
) -> Result<Vec<PageVersion>> {
    let dir = crate::log::log_dir(state_dir);
    let oldest = crate::checkpoint::list(vfs, &dir)?.last().map(|(l, _)| *l).unwrap_or(0);
    let out: std::cell::RefCell<Vec<PageVersion>> = std::cell::RefCell::new(Vec::new());
    let mut first = true;
    replay_with(
        vfs,
        state_dir,
        Some(oldest),
        limits,
        &mut |img, _| {
            if first {
                first = false;
                if let Some(p) = img.pages.get(&id) {
                    out.borrow_mut().push(PageVersion {
                        lsn: Lsn(img.lsn),
                        timestamp: img.timestamp,
                        epoch: p.epoch,
                        bytes: p.bytes.to_vec(),
                    });
                }
            }
            false
        },
        &mut |img, c| {
            let touched = c.iter().any(|(_, r)| match r {
                Record::Create { id: p, .. } | Record::Delete { id: p } => *p == id,
                Record::Delta(v) => v.page == id,
                _ => false,
            });
            if touched {
                if let Some(p) = img.pages.get(&id) {
                    out.borrow_mut().push(PageVersion {
                        lsn: Lsn(img.lsn),
                        timestamp: img.timestamp,
                        epoch: p.epoch,
                        bytes: p.bytes.to_vec(),
                    });
                }
            }
        },
    )?;
    let versions = out.into_inner();
    if versions.is_empty() {
        return Err(Error::PageNotFound(id));
    }
    Ok(versions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::delta::{encode_delta_body, DeltaView};
    use proptest::prelude::*;

    fn image() -> StateImage {
        let mut img =
            StateImage { next_page: 6, next_delta: 10, timestamp: 100, lsn: 7, ..StateImage::default() };
        for (id, len, epoch) in [(1u64, 48usize, 0u64), (2, 64, 3), (3, 1, 1), (4, 41, 2)] {
            img.pages.insert(
                PageId(id),
                PageImage {
                    id: PageId(id),
                    epoch: Epoch(epoch),
                    location: Location::Cpu,
                    meta: Metadata::new(),
                    bytes: (0..len).map(|i| i as u8).collect::<Vec<u8>>().into(),
                },
            );
        }
        img
    }

    thread_local! {
        static OUTCOMES: std::cell::RefCell<[u32; 2]> = const { std::cell::RefCell::new([0; 2]) };
    }

    #[test]
    fn delta_commit_cases_cover_both_outcomes() {
        delta_commits_match_the_general_path();
        let [refused, applied] = OUTCOMES.with(|o| *o.borrow());
        assert!(refused > 10 && applied > 10, "refused {refused}, applied {applied}");
    }

    proptest! {
        /// The per-commit page table path accepts, refuses and applies
        /// exactly what the general validate-then-apply path does.
        #[test]
        fn delta_commits_match_the_general_path(
            ops in proptest::collection::vec(
                (
                    // Mostly pages that exist and fit; now and then a missing
                    // page (5), a one-byte page (3), a stale base epoch, or
                    // an id or timestamp out of order.
                    prop_oneof![10 => Just(1u64), 10 => Just(2), 10 => Just(4), 1 => Just(3), 1 => Just(5)],
                    0u64..36,
                    1u64..6,
                    prop_oneof![12 => Just(None), 1 => (0u64..5).prop_map(Some)],
                    0u8..60,
                    0u8..60,
                ),
                4..24,
            ),
        ) {
            let bodies: Vec<Vec<u8>> = ops
                .iter()
                .enumerate()
                .map(|(i, &(page, off, len, base, skew_id, skew_ts))| {
                    let d = Delta {
                        id: DeltaId(10 + i as u64 - u64::from(skew_id == 0 && i > 0)),
                        page: PageId(page),
                        base_epoch: base.map(Epoch),
                        payload: Payload::Sparse(
                            SparseDelta::from_pairs([(off, &vec![i as u8 + 1; len as usize][..])]).unwrap(),
                        ),
                        source: Source::User,
                        tag: None,
                        timestamp: 101 + i as u64 + u64::from(skew_ts == 0),
                    };
                    let mut b = Vec::new();
                    encode_delta_body(&d, &mut b).unwrap();
                    b
                })
                .collect();
            let commit: Vec<(u64, Record<'_>)> = bodies
                .iter()
                .enumerate()
                .map(|(i, b)| (8 + i as u64, Record::Delta(DeltaView::parse(b, 0, &Limits::default()).unwrap())))
                .collect();
            let mut fast = image();
            let end = 8 + commit.len() as u64;
            let fast_res = fast.apply_commit(reader::Commit::new(&commit, end));
            OUTCOMES.with(|o| o.borrow_mut()[usize::from(fast_res.is_ok())] += 1);
            let mut slow = image();
            let ops = || commit.iter().filter_map(|(_, r)| op_of_record(r));
            let slow_res = slow.validate(ops(), true).and_then(|()| slow.apply_ops(ops()));
            match (&fast_res, &slow_res) {
                (Ok(()), Ok(())) => {
                    slow.lsn = fast.lsn;
                    prop_assert_eq!(&fast, &slow);
                }
                (Err(a), Err(b)) => {
                    prop_assert_eq!(a.to_string(), b.to_string());
                    prop_assert_eq!(&fast, &image());
                }
                _ => prop_assert!(false, "fast {:?} vs general {:?}", fast_res, slow_res),
            }
        }
    }
}

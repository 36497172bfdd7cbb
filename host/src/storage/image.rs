//! State images: a plain, ordered copy of a state (pages, counters, the
//! dependency graph as data) that checkpoints store and the log replays
//! into, with the state hash and the state diff.
//!
//! Every change applied is re-validated (the log is untrusted input): page
//! existence, payload fit, base epochs, epoch overflow, and that ids and
//! timestamps follow the order the commit path hands them out. A commit is
//! validated as a whole before any of it is applied.

use crate::delta::change::{Change, EdgeKind};
use crate::delta::{Delta, Payload, Source, SparseDelta};
use crate::storage::codec::delta::{plain_sparse, DeltaView, PayloadView};
use crate::storage::codec::page::{PageBytes, PageImage};
use crate::storage::codec::Limits;
use crate::storage::log::reader::{self, Record};
use crate::types::page::{check_metadata, Location, Metadata};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use shared_types::{DeltaId, Epoch, PageId};
use std::collections::BTreeMap;

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

pub(crate) enum PayloadRef<'a> {
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

pub(crate) enum Op<'a> {
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

pub(crate) fn op_of_record<'a>(r: &'a Record<'a>) -> Option<Op<'a>> {
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

    pub(crate) fn validate<'o>(&self, ops: impl Iterator<Item = Op<'o>>, strict: bool) -> Result<()> {
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
    pub(crate) fn apply_delta_frames(
        &mut self,
        frames: reader::DeltaFrames<'_>,
        limits: &Limits,
    ) -> Result<()> {
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

    pub(crate) fn apply_ops<'o>(&mut self, ops: impl Iterator<Item = Op<'o>>) -> Result<()> {
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

    /// The state-change events of `commit` (a committed unit read from the
    /// log) as the live handle sent them when it committed it, for this
    /// image as the state before it: what a replica applying the log tells
    /// its subscribers. Call before [`StateImage::apply_commit`].
    pub fn events_of(&self, commit: &reader::Commit<'_, '_>) -> Vec<crate::events::Event> {
        use crate::events::{Event, SourceKind};
        let mut epochs: std::collections::HashMap<PageId, Epoch> = std::collections::HashMap::new();
        let mut out = Vec::with_capacity(commit.len());
        for (_, r) in commit.records() {
            match r {
                Record::Create { id, len, .. } => {
                    epochs.insert(*id, Epoch(0));
                    out.push(Event::PageCreated { page: *id, len: *len });
                }
                Record::Delete { id } => {
                    epochs.remove(id);
                    out.push(Event::PageDeleted { page: *id });
                }
                Record::Delta(v) => {
                    let e = epochs
                        .entry(v.page)
                        .or_insert_with(|| self.pages.get(&v.page).map_or(Epoch(0), |p| p.epoch));
                    *e = Epoch(e.0 + 1);
                    let source = match v.source {
                        0 => SourceKind::User,
                        1 => SourceKind::Propagation,
                        _ => SourceKind::Replay,
                    };
                    out.push(Event::DeltaApplied {
                        page: v.page,
                        epoch: *e,
                        source,
                        bytes: v.payload.touched(),
                    });
                }
                Record::Graph(c) => out.extend(crate::events::event_for_change(c, Epoch(0))),
                _ => {}
            }
        }
        out
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

/// A recipe of a derived page as persisted: function, version, parents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DerivedImage {
    /// The recompute function's registered name.
    pub function: String,
    /// Its version.
    pub version: u32,
    /// Parents in call order.
    pub parents: Vec<PageId>,
}

/// The dependency graph as data: what checkpoints store and replay rebuilds,
/// with no recompute code. Derived pages' data edges are implied by their
/// parent lists; `edges` holds every edge, data and control.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphImage {
    /// Derived pages and their recipes.
    pub derived: BTreeMap<PageId, DerivedImage>,
    /// Every edge `(parent, child)` and its kind.
    pub edges: BTreeMap<(PageId, PageId), EdgeKind>,
}

impl GraphImage {
    /// Whether there is no graph at all.
    pub fn is_empty(&self) -> bool {
        self.derived.is_empty() && self.edges.is_empty()
    }

    /// The children of `page` through edges of `kind`, ascending.
    pub(crate) fn children(&self, page: PageId, kind: EdgeKind) -> impl Iterator<Item = PageId> + '_ {
        self.edges
            .range((page, PageId(0))..=(page, PageId(u64::MAX)))
            .filter(move |(_, &k)| k == kind)
            .map(|(&(_, child), _)| child)
    }

    /// Apply a graph change with the same effect it has on the live graph.
    /// Other changes are ignored, except page deletion, which removes the
    /// page's edges and drops it from its children's parent lists.
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::DeclareDerived { page, function, version, parents } => {
                if let Some(old) = self.derived.remove(page) {
                    for p in old.parents {
                        self.edges.remove(&(p, *page));
                    }
                }
                for &p in parents {
                    self.edges.insert((p, *page), EdgeKind::Data);
                }
                self.derived.insert(
                    *page,
                    DerivedImage { function: function.clone(), version: *version, parents: parents.clone() },
                );
            }
            Change::AddEdge { from, to, kind } => {
                self.edges.insert((*from, *to), *kind);
                if *kind == EdgeKind::Data {
                    if let Some(d) = self.derived.get_mut(to) {
                        d.parents.push(*from);
                    }
                }
            }
            Change::RemoveEdge { from, to } => {
                if self.edges.remove(&(*from, *to)) == Some(EdgeKind::Data) {
                    if let Some(d) = self.derived.get_mut(to) {
                        d.parents.retain(|p| p != from);
                    }
                }
            }
            Change::DeletePage { id } => {
                self.derived.remove(id);
                self.edges.retain(|(a, b), _| a != id && b != id);
                for d in self.derived.values_mut() {
                    d.parents.retain(|p| p != id);
                }
            }
            Change::CreatePage { .. } | Change::Apply(_) => {}
        }
    }
}

//! Recompute functions and change propagation.
//!
//! A *derived* page has a recompute function of its parents' bytes,
//! registered under a name and a version (see [`Mmsb::register_function`]).
//! When parents change, propagation recomputes the derived pages below them:
//!
//! - each dirty page is recomputed **once** per batch, after all its dirty
//!   parents (in level order, so diamonds are glitch-free);
//! - a recompute whose bytes equal the page's current bytes writes nothing
//!   and wakes nothing below it (**early cutoff**); otherwise the smallest
//!   payload ([`Payload::diff`]) becomes a delta with
//!   [`Source::Propagation`](crate::Source::Propagation), logged (the
//!   deltas of one propagation together, in compact derived records) so
//!   that it reads back as the delta a user-built delta of that content
//!   would be, and replay needs no recompute code;
//! - pages of one level do not depend on each other; a wide level with
//!   enough bytes is recomputed on several threads, with results identical
//!   to the sequential order (outputs are committed in (level, node) order);
//! - device functions of several levels on one device are queued together
//!   on its stream, ahead of the loop, when their inputs are known before
//!   it starts ([`Ahead`]); the loop takes their results or recomputes;
//! - propagation is staged: new bytes go to a scratch arena, read by the
//!   pages below, and nothing is applied until every recompute succeeded.
//!   A panicking function is caught and reported as [`Error::Recompute`].
//!
//! The hot loop works on dense node indices with buffers reused across
//! propagations: no map lookups and no per-node allocation. A derived
//! delta is its payload encoding and provenance parents in a scratch
//! sink, framed into the log and applied from there; a page whose bytes
//! change is locked once, from the read of its current bytes to the commit.
//!
//! [`Mmsb::register_function`]: crate::Mmsb::register_function

use crate::delta::{encode_change, Payload};
use crate::gpu::GpuPage;
use crate::graph::{Graph, Slot};
use crate::registry::Page;
use crate::{Error, Result};
use parking_lot::{RwLockReadGuard, RwLockUpgradableReadGuard, RwLockWriteGuard};
use shared_types::{Epoch, PageId};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

/// A recompute function: reads the parents' bytes (in declaration order)
/// and writes the derived page's new bytes into the output, which starts
/// zeroed and has the derived page's length. It must be deterministic: a
/// function of its inputs only.
pub type RecomputeFn = Arc<dyn Fn(&[&[u8]], &mut [u8]) + Send + Sync>;

/// When derived pages are brought up to date.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PropagationMode {
    /// Within each write: `update_page`/`update_batch` return with every
    /// derived page up to date, and write and propagation are one atomic
    /// step (one committed unit of the log: recovery finds both or
    /// neither).
    #[default]
    Immediate,
    /// On demand: writes queue work and [`Mmsb::propagate`](crate::Mmsb::propagate) does it.
    Deferred,
}

/// What one propagation did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PropagationStats {
    /// Pages queued for recomputation.
    pub dirty: u64,
    /// Recompute functions run.
    pub recomputed: u64,
    /// Recomputes that reproduced the current bytes (nothing written below).
    pub cut_off: u64,
    /// Derived deltas committed.
    pub written: u64,
    /// Device recomputes whose result came from a run queued ahead of the
    /// level loop, with the levels above it, on the device's stream (no
    /// host wait between levels; see the README's device functions).
    pub ahead: u64,
    /// Wall time, staging and commit included.
    pub duration: Duration,
}

/// The code of a recompute function: a closure run on the CPU, or a
/// kernel run on the derived page's GPU.
#[derive(Clone)]
pub(crate) enum Code {
    Host(RecomputeFn),
    Device(Arc<crate::gpu::DeviceFunction>),
}

impl Code {
    /// Whether it runs on a GPU.
    #[inline]
    pub(crate) fn is_device(&self) -> bool {
        matches!(self, Code::Device(_))
    }
}

pub(crate) struct FunctionEntry {
    /// Shared with the provenance of every delta the function derives.
    pub(crate) name: Arc<str>,
    pub(crate) version: u32,
    pub(crate) f: Option<Code>,
}

impl FunctionEntry {
    /// The code a page bound to `version` of this function runs.
    ///
    /// # Errors
    /// [`Error::Function`] (naming `page`) when no code is registered at
    /// that version.
    #[inline]
    pub(crate) fn code(&self, version: u32, page: PageId) -> Result<&Code> {
        match &self.f {
            Some(f) if self.version == version => Ok(f),
            _ => Err(self.missing(version, page)),
        }
    }

    /// The error of [`FunctionEntry::code`], out of the recompute's path.
    #[cold]
    fn missing(&self, version: u32, page: PageId) -> Error {
        Error::Function {
            name: self.name.to_string(),
            reason: format!("version {version} (bound by page {page}) is not registered"),
        }
    }
}

/// The recompute registry: name → (version, function), with dense indices
/// that derived pages bind to.
#[derive(Default)]
pub(crate) struct Functions {
    pub(crate) entries: Vec<FunctionEntry>,
    /// Whether any device function was ever registered.
    pub(crate) has_device: bool,
    by_name: HashMap<String, u32>,
}

impl std::fmt::Debug for Functions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.entries.iter().map(|e| (&e.name, (e.version, e.f.is_some())))).finish()
    }
}

impl Functions {
    /// The index of `name`, creating an entry with no code if needed (a
    /// replayed derivation names functions this process may not have).
    pub(crate) fn intern(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.by_name.get(name) {
            return i;
        }
        let i = self.entries.len() as u32;
        self.entries.push(FunctionEntry { name: Arc::from(name), version: 0, f: None });
        self.by_name.insert(name.to_owned(), i);
        i
    }

    /// The index and version of a registered function.
    ///
    /// # Errors
    /// [`Error::Function`] when no code is registered under `name`.
    pub(crate) fn current(&self, name: &str) -> Result<(u32, u32)> {
        match self.by_name.get(name) {
            Some(&i) if self.entries[i as usize].f.is_some() => Ok((i, self.entries[i as usize].version)),
            _ => Err(Error::Function { name: name.to_owned(), reason: "not registered".into() }),
        }
    }

    /// Whether `name` is registered at `version` exactly.
    pub(crate) fn has(&self, name: &str, version: u32) -> bool {
        self.current(name).is_ok_and(|(_, v)| v == version)
    }

    /// Check that `version` may be registered under `name`.
    ///
    /// # Errors
    /// [`Error::Function`] when the name is registered at this or a later
    /// version, or the name is empty.
    pub(crate) fn check_register(&self, name: &str, version: u32) -> Result<()> {
        if name.is_empty() {
            return Err(Error::Function { name: String::new(), reason: "empty function name".into() });
        }
        if let Ok((_, v)) = self.current(name) {
            if version <= v {
                return Err(Error::Function {
                    name: name.to_owned(),
                    reason: format!("version {version} does not supersede registered version {v}"),
                });
            }
        }
        Ok(())
    }

    pub(crate) fn set(&mut self, name: &str, version: u32, f: Code) -> u32 {
        let i = self.intern(name);
        self.has_device |= f.is_device();
        let e = &mut self.entries[i as usize];
        e.version = version;
        e.f = Some(f);
        i
    }
}

/// Graph, registry and scratch space, owned by the commit path.
#[derive(Debug, Default)]
pub(crate) struct Deps {
    pub(crate) graph: Graph,
    pub(crate) functions: Functions,
    pub(crate) scratch: Scratch,
}

/// How a propagation may use threads.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    pub(crate) threads: usize,
    pub(crate) parallel_min_bytes: usize,
}

/// A derived delta ready to commit. Its payload encoding and the parents
/// of its provenance live in the [`Sink`] of the propagation that planned
/// it (no allocation per delta); [`Derived::payload`] rebuilds the owned
/// payload.
#[derive(Clone, Debug)]
pub(crate) struct Derived {
    pub(crate) node: u32,
    pub(crate) page: PageId,
    /// Index of the recompute function in [`Functions::entries`].
    pub(crate) func: u32,
    pub(crate) version: u32,
    /// Where its payload encoding is in [`Sink::enc`].
    pub(crate) enc: std::ops::Range<usize>,
    /// Where its parents are in [`Sink::parents`].
    pub(crate) parents: std::ops::Range<usize>,
    /// Bytes the payload touches ([`Payload::touched`]).
    pub(crate) touched: u64,
    /// Where the commit path holds the page's write lock (see [`plan`]);
    /// `None` until the caller places a page it locked itself.
    pub(crate) guard: Option<usize>,
    /// Whether applying it may change the graph's flags (the page is stale
    /// or has control edges): see [`Graph::on_apply_node`].
    pub(crate) flags: bool,
}

impl Derived {
    /// The payload encoding.
    #[inline]
    pub(crate) fn encoded<'s>(&self, sink: &'s Sink) -> &'s [u8] {
        &sink.enc[self.enc.clone()]
    }

    /// The parents and the epochs they were read at.
    #[inline]
    pub(crate) fn parent_epochs<'s>(&self, sink: &'s Sink) -> &'s [(PageId, Epoch)] {
        &sink.parents[self.parents.clone()]
    }

    /// The owned payload.
    ///
    /// # Errors
    /// [`Error::Corrupt`] only if the sink does not hold this delta.
    pub(crate) fn payload(&self, sink: &Sink) -> Result<Payload> {
        crate::storage::codec::delta::decode_payload(
            self.encoded(sink),
            &crate::storage::codec::Limits::unbounded(),
        )
    }
}

/// Payload encodings and provenance parents of the derived deltas of one
/// propagation, appended in commit order.
#[derive(Debug, Default)]
pub(crate) struct Sink {
    pub(crate) enc: Vec<u8>,
    pub(crate) parents: Vec<(PageId, Epoch)>,
}

impl Sink {
    fn clear(&mut self) {
        self.enc.clear();
        self.parents.clear();
    }
}

pub(crate) enum Outcome {
    Unchanged,
    /// Payload encoding and parents at these ranges of the sink the
    /// recompute wrote to.
    Changed {
        enc: std::ops::Range<usize>,
        parents: usize,
        touched: u64,
        epoch: Epoch,
        /// The new bytes on the page's device, when a device function
        /// computed them (its children on that device read them there).
        fresh: Option<GpuPage>,
    },
    Failed(Error),
}

impl Outcome {
    /// The outcome with its sink ranges moved by `enc` and `parents`.
    fn shifted(self, enc: usize, parents: usize) -> Outcome {
        match self {
            Outcome::Changed { enc: r, parents: p, touched, epoch, fresh } => Outcome::Changed {
                enc: r.start + enc..r.end + enc,
                parents: p + parents,
                touched,
                epoch,
                fresh,
            },
            other => other,
        }
    }
}

/// Buffers reused across propagations, indexed by dense node index. Marks
/// are generation stamps, so starting a propagation clears nothing.
#[derive(Default)]
pub(crate) struct Scratch {
    gen: u32,
    queued: Vec<u32>,
    staged: Vec<u32>,
    off: Vec<usize>,
    epoch: Vec<Epoch>,
    heap: BinaryHeap<Reverse<u64>>,
    arena: Vec<u8>,
    level: Vec<u32>,
    outcomes: Vec<Outcome>,
    spare: Vec<&'static [u8]>,
    /// `(page, changed)` for each recompute of the last propagation, in
    /// order, when it was begun with listeners (see [`Scratch::begin`]).
    pub(crate) fired: Vec<(PageId, bool)>,
    /// The subscribers' mark when anyone listened as this propagation
    /// began (its events are sent then, to them only; see
    /// [`crate::events::EventBus::listeners`]).
    pub(crate) listeners: Option<u64>,
    /// The output buffer of derived deltas, kept for the next propagation.
    pub(crate) derived: Vec<Derived>,
    /// Payload encodings and parents of the derived deltas of the last
    /// propagation.
    pub(crate) sink: Sink,
    /// New bytes of pages a device function recomputed in this
    /// propagation, on their device (dropped when the plan ends).
    fresh: HashMap<u32, GpuPage>,
    /// The device memory of staged pages that live on a device (their
    /// staged copy holds the new bytes; this, the device they are on).
    home: HashMap<u32, GpuPage>,
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scratch").field("gen", &self.gen).field("arena", &self.arena.capacity()).finish()
    }
}

/// Arena capacity kept between propagations; more is released.
const ARENA_KEEP: usize = 64 << 20;

impl Scratch {
    /// The staged copy of node `n` (of `len` bytes).
    pub(crate) fn staged_mut(&mut self, n: u32, len: usize) -> &mut [u8] {
        let at = self.off[n as usize];
        &mut self.arena[at..at + len]
    }

    /// Start a propagation over a graph of `bound` slots; `listeners`: the
    /// event bus's mark when anyone listens (the recomputes are then
    /// recorded in [`Scratch::fired`], and the propagation's events go to
    /// those subscribers only).
    pub(crate) fn begin(&mut self, bound: usize, listeners: Option<u64>) {
        self.listeners = listeners;
        if self.gen == u32::MAX {
            self.queued.iter_mut().for_each(|s| *s = 0);
            self.staged.iter_mut().for_each(|s| *s = 0);
            self.gen = 0;
        }
        self.gen += 1;
        if self.queued.len() < bound {
            self.queued.resize(bound, 0);
            self.staged.resize(bound, 0);
            self.off.resize(bound, 0);
            self.epoch.resize(bound, Epoch(0));
        }
        if self.arena.capacity() > ARENA_KEEP {
            self.arena = Vec::new();
        }
        self.arena.clear();
        self.heap.clear();
        self.fired.clear();
        self.fresh.clear();
        self.home.clear();
        if self.sink.enc.capacity() > ARENA_KEEP || self.sink.parents.capacity() > ARENA_KEEP / 16 {
            self.sink = Sink::default();
        }
        self.sink.clear();
    }

    /// Stage node `n` with a copy of `bytes` at `epoch`, for the propagation
    /// to read instead of the page; returns the copy to be edited.
    pub(crate) fn stage(&mut self, n: u32, bytes: &[u8], epoch: Epoch) -> &mut [u8] {
        let at = self.arena.len();
        self.arena.extend_from_slice(bytes);
        self.staged[n as usize] = self.gen;
        self.off[n as usize] = at;
        self.epoch[n as usize] = epoch;
        &mut self.arena[at..]
    }

    /// Note that staged node `n` is a page on a device, at `gpu`.
    pub(crate) fn stage_home(&mut self, n: u32, gpu: &GpuPage) {
        self.home.insert(n, gpu.clone());
    }

    /// Stage node `n` with new bytes that are on a device only (`fresh`,
    /// a copy of the page): for a page no recompute reads on the CPU (see
    /// [`read_on_host`]), whose arena place is never read.
    pub(crate) fn stage_on_device(&mut self, n: u32, fresh: GpuPage, epoch: Epoch) {
        self.staged[n as usize] = self.gen;
        self.off[n as usize] = usize::MAX;
        self.epoch[n as usize] = epoch;
        self.fresh.insert(n, fresh);
    }
}

/// Whether the new bytes of node `n` may be read on the CPU in a
/// propagation: by its own recompute (a derived page whose function runs
/// on the CPU diffs against them) or by a child whose function does (or
/// whose function is not known).
pub(crate) fn read_on_host(slots: &[Slot], functions: &[FunctionEntry], n: u32) -> bool {
    let on_device = |b: crate::graph::Binding| {
        functions.get(b.func as usize).is_some_and(|e| e.f.as_ref().is_some_and(Code::is_device))
    };
    slots[n as usize].binding.is_some_and(|b| !on_device(b))
        || slots[n as usize]
            .data_children
            .iter()
            .any(|&c| slots[c as usize].binding.is_none_or(|b| !on_device(b)))
}

/// A recomputed page's lock, kept from the read of its current bytes in
/// case its new bytes differ: the write lock when no reader holds the page
/// (one lock and one unlock in all), else an upgradable read lock that
/// shares the page with its readers until the commit needs it (so a
/// reader, even on the propagating thread, never makes a recompute that
/// changes nothing wait).
enum Held<'g> {
    Write(RwLockWriteGuard<'g, Page>),
    Upgradable(RwLockUpgradableReadGuard<'g, Page>),
    /// This thread holds a [`crate::PageRef`] on the page: a plain read,
    /// enough for a recompute that changes nothing; one that changes the
    /// page is refused ([`Held::into_write`]).
    Borrowed(RwLockReadGuard<'g, Page>, PageId),
}

impl<'g> Held<'g> {
    /// Lock page `id`'s `cell` for a recompute's read.
    #[inline]
    fn take(cell: &'g parking_lot::RwLock<Page>, id: PageId) -> Self {
        match cell.try_write() {
            Some(w) => Held::Write(w),
            None if crate::registry::borrowed_here(cell) => Held::Borrowed(cell.read_recursive(), id),
            None => Held::Upgradable(cell.upgradable_read()),
        }
    }

    /// The page, read-only.
    #[inline]
    fn page(&self) -> &Page {
        match self {
            Held::Write(w) => w,
            Held::Upgradable(u) => u,
            Held::Borrowed(r, _) => r,
        }
    }

    /// The write lock, for the commit.
    ///
    /// # Errors
    /// [`Error::PageBorrowed`] for a page this thread holds a read guard
    /// on: the wait would never end.
    #[inline]
    fn into_write(self) -> Result<RwLockWriteGuard<'g, Page>> {
        match self {
            Held::Write(w) => Ok(w),
            Held::Upgradable(u) => Ok(RwLockUpgradableReadGuard::upgrade(u)),
            Held::Borrowed(_, page) => Err(Error::PageBorrowed { page }),
        }
    }
}

/// Recompute everything below the graph's queued work and the `extra`
/// changed nodes, staging new bytes; fills `out` with the derived deltas in
/// commit order. Reads pages through read locks, or the staged copies.
/// Each page a delta changes is write-locked onto `held` (the delta's
/// [`Derived::guard`] is its index there), except pages staged by the
/// caller before the plan, whose guard is left `None`.
///
/// # Errors
/// The first failed recompute ([`Error::Recompute`], [`Error::Function`]);
/// nothing was applied.
#[allow(clippy::type_complexity)]
pub(crate) fn plan<'g>(
    graph: &'g Graph,
    functions: &Functions,
    sc: &mut Scratch,
    extra: &[u32],
    settings: Settings,
    out: &mut Vec<Derived>,
    held: &mut Vec<(PageId, RwLockWriteGuard<'g, Page>)>,
) -> Result<PropagationStats> {
    let slots = &graph.slots[..];
    let Scratch {
        gen,
        queued,
        staged,
        off,
        epoch,
        heap,
        arena,
        level,
        outcomes,
        spare,
        fired,
        listeners,
        sink,
        fresh,
        home,
        ..
    } = sc;
    out.clear();
    let mut st = Settle {
        fresh,
        home,
        slots,
        gen: *gen,
        staged,
        off,
        epoch,
        queued,
        heap,
        out,
        fired,
        listen: listeners.is_some(),
        held,
        stats: PropagationStats::default(),
    };
    for &n in graph.pending.iter().chain(extra) {
        for &c in &slots[n as usize].data_children {
            st.enqueue(c);
        }
    }
    for &n in &graph.forced {
        st.enqueue(n);
    }
    // Device recomputes whose inputs are all on one device run first,
    // back to back on its stream; the loop below takes their results.
    let ahead = if functions.has_device && RUN_AHEAD.load(std::sync::atomic::Ordering::Relaxed) {
        let seeds: Vec<u32> = st.heap.iter().map(|Reverse(k)| *k as u32).collect();
        let staged = |n: u32| st.staged.get(n as usize) == Some(&st.gen);
        run_ahead(slots, &functions.entries, &*st.fresh, staged, &seeds)
    } else {
        None
    };
    let ahead = ahead.as_ref();
    // Read locks of the current recompute's unstaged parents.
    let mut guards: Vec<RwLockReadGuard<'g, Page>> = Vec::new();
    while let Some(Reverse(key)) = st.heap.pop() {
        let lvl = key >> 32;
        level.clear();
        level.push(key as u32);
        while let Some(&Reverse(k)) = st.heap.peek() {
            if k >> 32 != lvl {
                break;
            }
            st.heap.pop();
            level.push(k as u32);
        }
        let base = arena.len();
        let total: usize = level.iter().map(|&n| slots[n as usize].len).sum();
        let threads = settings.threads.min(level.len());
        let parallel = threads > 1 && {
            let inputs = |s: &Slot| s.args.iter().map(|&p| slots[p as usize].len).sum::<usize>();
            total + level.iter().map(|&n| inputs(&slots[n as usize])).sum::<usize>()
                >= settings.parallel_min_bytes
        };
        arena.resize(base + total, 0);
        let mut at = base;
        if parallel {
            let (done, fresh) = arena.split_at_mut(base);
            outcomes.clear();
            compute_parallel(&st.ctx(functions, done, ahead), level, fresh, threads, outcomes, spare, sink);
            for (&n, outcome) in level.iter().zip(outcomes.drain(..)) {
                st.settle(n, outcome, at, None)?;
                at += slots[n as usize].len;
            }
        } else {
            // One recompute at a time, each settled at once (pages of one
            // level never read each other): no outcome list, and the page's
            // lock goes straight from the read to the commit.
            for &n in level.iter() {
                let len = slots[n as usize].len;
                let (done, fresh) = arena.split_at_mut(base);
                let mut lock = None;
                let outcome = compute_one(
                    &st.ctx(functions, done, ahead),
                    n,
                    &mut fresh[at - base..at - base + len],
                    &mut guards,
                    spare,
                    sink,
                    Some(&mut lock),
                );
                guards.clear();
                st.settle(n, outcome, at, lock)?;
                at += len;
            }
        }
    }
    let mut stats = st.stats;
    stats.written = st.out.len() as u64;
    stats.ahead = ahead.map_or(0, |a| a.taken.load(std::sync::atomic::Ordering::Relaxed));
    // Recomputed bytes on devices are in the derived deltas now.
    st.fresh.clear();
    Ok(stats)
}

/// The state a plan updates as it settles each recompute.
struct Settle<'g, 'p> {
    fresh: &'p mut HashMap<u32, GpuPage>,
    home: &'p HashMap<u32, GpuPage>,
    slots: &'g [Slot],
    gen: u32,
    staged: &'p mut Vec<u32>,
    off: &'p mut Vec<usize>,
    epoch: &'p mut Vec<Epoch>,
    queued: &'p mut Vec<u32>,
    heap: &'p mut BinaryHeap<Reverse<u64>>,
    out: &'p mut Vec<Derived>,
    fired: &'p mut Vec<(PageId, bool)>,
    listen: bool,
    held: &'p mut Vec<(PageId, RwLockWriteGuard<'g, Page>)>,
    stats: PropagationStats,
}

impl<'g> Settle<'g, '_> {
    /// Queue node `n` for recomputation, once per propagation.
    #[inline]
    fn enqueue(&mut self, n: u32) {
        let q = &mut self.queued[n as usize];
        if *q == self.gen {
            return;
        }
        *q = self.gen;
        self.heap.push(Reverse((u64::from(self.slots[n as usize].level) << 32) | u64::from(n)));
        self.stats.dirty += 1;
    }

    /// The read-only view recomputes need, with `done` the settled part of
    /// the arena.
    #[inline]
    fn ctx<'a>(&'a self, functions: &'a Functions, done: &'a [u8], ahead: Option<&'a Ahead>) -> Ctx<'g, 'a> {
        Ctx {
            ahead,
            slots: self.slots,
            functions: &functions.entries,
            gen: self.gen,
            staged: self.staged,
            off: self.off,
            epoch: self.epoch,
            done,
            fresh: self.fresh,
            home: self.home,
        }
    }

    /// Account for the recompute of node `n`, whose new bytes are at `at`
    /// in the arena; `lock` is the lock its read took, if any.
    ///
    /// # Errors
    /// The recompute's failure.
    #[inline(always)]
    fn settle(&mut self, n: u32, outcome: Outcome, at: usize, lock: Option<Held<'g>>) -> Result<()> {
        let s = &self.slots[n as usize];
        self.stats.recomputed += 1;
        match outcome {
            Outcome::Failed(e) => return Err(e),
            Outcome::Unchanged => {
                self.stats.cut_off += 1;
                if self.listen {
                    self.fired.push((s.page, false));
                }
            }
            Outcome::Changed { enc, parents, touched, epoch, fresh } => {
                if let Some(g) = fresh {
                    self.fresh.insert(n, g);
                }
                let b = s.binding.ok_or_else(|| Error::Invariant("recomputed page has no binding".into()))?;
                // A page staged before its recompute is one the caller
                // writes and holds; any other is locked here, for the
                // commit (nothing else writes pages meanwhile: the commit
                // lock is held).
                let guard = if self.staged[n as usize] == self.gen {
                    None
                } else {
                    let write = match lock {
                        Some(g) => g.into_write()?,
                        None => match &s.cell {
                            Some(cell) => crate::registry::write_page(cell, s.page)?,
                            None => return Err(Error::Invariant(format!("page {} has no cell", s.page))),
                        },
                    };
                    self.held.push((s.page, write));
                    Some(self.held.len() - 1)
                };
                self.staged[n as usize] = self.gen;
                self.off[n as usize] = at;
                self.epoch[n as usize] = epoch;
                self.out.push(Derived {
                    node: n,
                    page: s.page,
                    func: b.func,
                    version: b.version,
                    enc,
                    parents: parents..parents + s.args.len(),
                    touched,
                    guard,
                    // Only control edges make a page stale between the plan
                    // and the commit.
                    flags: s.stale || !s.control_children.is_empty() || !s.control_parents.is_empty(),
                });
                if self.listen {
                    self.fired.push((s.page, true));
                }
                for &c in &s.data_children {
                    self.enqueue(c);
                }
            }
        }
        Ok(())
    }
}

/// Read-only view shared by the workers of one level.
struct Ctx<'g, 'a> {
    slots: &'g [Slot],
    functions: &'a [FunctionEntry],
    gen: u32,
    staged: &'a [u32],
    off: &'a [usize],
    epoch: &'a [Epoch],
    done: &'a [u8],
    fresh: &'a HashMap<u32, GpuPage>,
    home: &'a HashMap<u32, GpuPage>,
    /// Device recomputes run before the level loop.
    ahead: Option<&'a Ahead>,
}

impl<'a> Ctx<'_, 'a> {
    #[inline]
    fn is_staged(&self, n: u32) -> bool {
        self.staged.get(n as usize) == Some(&self.gen)
    }

    #[inline(always)]
    fn staged_bytes(&self, n: u32) -> &'a [u8] {
        let at = self.off[n as usize];
        &self.done[at..at + self.slots[n as usize].len]
    }
}

fn compute_parallel(
    ctx: &Ctx<'_, '_>,
    level: &[u32],
    fresh: &mut [u8],
    threads: usize,
    outcomes: &mut Vec<Outcome>,
    spare: &mut Vec<&'static [u8]>,
    sink: &mut Sink,
) {
    let chunk = level.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let mut nodes_left = level;
        let mut out_left = fresh;
        let mut first = None;
        let mut handles = Vec::with_capacity(threads);
        while !nodes_left.is_empty() {
            let (nodes, rest) = nodes_left.split_at(chunk.min(nodes_left.len()));
            let bytes: usize = nodes.iter().map(|&n| ctx.slots[n as usize].len).sum();
            let (o, orest) = std::mem::take(&mut out_left).split_at_mut(bytes);
            nodes_left = rest;
            out_left = orest;
            if first.is_none() {
                first = Some((nodes, o));
                continue;
            }
            handles.push(scope.spawn(move || {
                let mut oc = Vec::with_capacity(nodes.len());
                let mut own = Sink::default();
                compute(ctx, nodes, o, &mut oc, &mut Vec::new(), &mut own);
                (oc, own)
            }));
        }
        if let Some((nodes, o)) = first {
            compute(ctx, nodes, o, outcomes, spare, sink);
        }
        for h in handles {
            match h.join() {
                Ok((oc, own)) => {
                    let (enc, parents) = (sink.enc.len(), sink.parents.len());
                    sink.enc.extend_from_slice(&own.enc);
                    sink.parents.extend_from_slice(&own.parents);
                    outcomes.extend(oc.into_iter().map(|o| o.shifted(enc, parents)));
                }
                Err(p) => outcomes.push(Outcome::Failed(Error::Invariant(format!(
                    "propagation worker failed: {}",
                    panic_message(p.as_ref())
                )))),
            }
        }
    });
}

fn compute<'g>(
    ctx: &Ctx<'g, '_>,
    nodes: &[u32],
    mut out: &mut [u8],
    outcomes: &mut Vec<Outcome>,
    spare: &mut Vec<&'static [u8]>,
    sink: &mut Sink,
) {
    let mut guards: Vec<RwLockReadGuard<'g, Page>> = Vec::new();
    for &n in nodes {
        let slot = &ctx.slots[n as usize];
        let (o, rest) = std::mem::take(&mut out).split_at_mut(slot.len);
        out = rest;
        guards.clear();
        outcomes.push(compute_one(ctx, n, o, &mut guards, spare, sink, None));
    }
}

/// Reuse the allocation of an empty slice list for another lifetime.
fn recycle<'a>(spare: &mut Vec<&'static [u8]>) -> Vec<&'a [u8]> {
    let mut v = std::mem::take(spare);
    v.clear();
    v.into_iter().map(|s| -> &'a [u8] { s }).collect()
}

fn unrecycle(mut v: Vec<&[u8]>) -> Vec<&'static [u8]> {
    v.clear();
    v.into_iter().map(|_| -> &'static [u8] { &[] }).collect()
}

/// Parents up to this many are passed to a function from a list on the stack.
const INLINE_INPUTS: usize = 8;

/// Fill `dst` (one entry per argument) with the parents' bytes: staged
/// copies, or the pages read through `guards` (one per unstaged argument,
/// in order); a page on a device is read from its copy in `copies` (at
/// the guard's index; empty when every page is in host memory).
#[inline(always)]
fn inputs<'a>(
    ctx: &Ctx<'_, 'a>,
    args: &[u32],
    guards: &'a [RwLockReadGuard<'_, Page>],
    copies: &'a [Option<Vec<u8>>],
    dst: &mut [&'a [u8]],
) -> Result<()> {
    let mut gi = 0;
    for (d, &p) in dst.iter_mut().zip(args) {
        *d = if ctx.is_staged(p) {
            ctx.staged_bytes(p)
        } else {
            gi += 1;
            match guards[gi - 1].storage.host() {
                Some(b) => b,
                None => match copies.get(gi - 1) {
                    Some(Some(c)) => c,
                    _ => guards[gi - 1].bytes()?,
                },
            }
        };
    }
    Ok(())
}

/// Host copies of the pages behind `guards` that live on a device (a CPU
/// recompute function reads them): `None` for a page in host memory, and
/// an empty list, which allocates nothing, when every page is.
///
/// # Errors
/// The device's errors.
fn device_copies(guards: &[RwLockReadGuard<'_, Page>]) -> Result<Vec<Option<Vec<u8>>>> {
    if guards.iter().all(|g| g.storage.host().is_some()) {
        return Ok(Vec::new());
    }
    guards
        .iter()
        .map(|g| if g.storage.host().is_some() { Ok(None) } else { g.copy_bytes().map(Some) })
        .collect()
}

#[inline(always)]
fn compute_one<'g>(
    ctx: &Ctx<'g, '_>,
    n: u32,
    o: &mut [u8],
    guards: &mut Vec<RwLockReadGuard<'g, Page>>,
    spare: &mut Vec<&'static [u8]>,
    sink: &mut Sink,
    keep: Option<&mut Option<Held<'g>>>,
) -> Outcome {
    let slot: &'g Slot = &ctx.slots[n as usize];
    let Some(b) = slot.binding else {
        return Outcome::Failed(Error::Invariant(format!("page {} is not derived", slot.page)));
    };
    let entry = &ctx.functions[b.func as usize];
    let f = match entry.code(b.version, slot.page) {
        Ok(Code::Host(f)) => f,
        Ok(Code::Device(d)) => return compute_on_device(ctx, n, &entry.name, d, o, guards, sink, keep),
        Err(e) => return Outcome::Failed(e),
    };
    for &p in &slot.args {
        if !ctx.is_staged(p) {
            match &ctx.slots[p as usize].cell {
                Some(c) => guards.push(c.read_recursive()),
                None => {
                    return Outcome::Failed(Error::Invariant(format!("page {} has a dead parent", slot.page)))
                }
            }
        }
    }
    let guards = &*guards;
    // Parents on a device are copied in for a function that runs here.
    let copies = match device_copies(guards) {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(e),
    };
    let k = slot.args.len();
    let run = if k <= INLINE_INPUTS {
        // Few parents (the common case): the input list lives on the stack.
        let mut inline: [&[u8]; INLINE_INPUTS] = [&[]; INLINE_INPUTS];
        if let Err(e) = inputs(ctx, &slot.args, guards, &copies, &mut inline[..k]) {
            return Outcome::Failed(e);
        }
        catch_quietly(|| f(&inline[..k], o))
    } else {
        let mut slices: Vec<&[u8]> = recycle(spare);
        slices.resize(k, &[]);
        if let Err(e) = inputs(ctx, &slot.args, guards, &copies, &mut slices) {
            *spare = unrecycle(slices);
            return Outcome::Failed(e);
        }
        let run = catch_quietly(|| f(&slices, o));
        *spare = unrecycle(slices);
        run
    };
    if let Err(p) = run {
        return Outcome::Failed(Error::Recompute {
            page: slot.page,
            function: entry.name.to_string(),
            reason: panic_message(p.as_ref()),
        });
    }
    let mut child = None;
    let old_copy;
    let (old, before) = if ctx.is_staged(n) {
        (ctx.staged_bytes(n), ctx.epoch[n as usize])
    } else {
        let page = match lock_output(slot, keep, &mut child) {
            Ok(p) => p,
            Err(e) => return Outcome::Failed(e),
        };
        match page.storage.host() {
            Some(b) => (b, page.epoch),
            // A page on a device: its current bytes come back to be
            // compared with the function's output.
            None => match page.copy_bytes() {
                Ok(b) => {
                    old_copy = b;
                    (&old_copy[..], page.epoch)
                }
                Err(e) => return Outcome::Failed(e),
            },
        }
    };
    let at = sink.enc.len();
    let touched = match encode_change(old, o, &mut sink.enc) {
        Ok(Some(t)) => t,
        Ok(None) => return Outcome::Unchanged,
        Err(e) => return Outcome::Failed(e),
    };
    let Some(after) = before.checked_next() else {
        sink.enc.truncate(at);
        return Outcome::Failed(Error::invalid_delta(Some(slot.page), "page epoch would overflow"));
    };
    let parents = push_parents(ctx, slot, guards, sink);
    Outcome::Changed { enc: at..sink.enc.len(), parents, touched, epoch: after, fresh: None }
}

/// Append the provenance parents of a recompute of `slot` to the sink:
/// each argument with the epoch it was read at (staged, or through its
/// read lock in `guards`, one per unstaged argument, in order). Returns
/// where they start.
#[inline(always)]
fn push_parents(
    ctx: &Ctx<'_, '_>,
    slot: &Slot,
    guards: &[RwLockReadGuard<'_, Page>],
    sink: &mut Sink,
) -> usize {
    let at = sink.parents.len();
    sink.parents.reserve(slot.args.len());
    let mut gi = 0;
    for &p in &slot.args {
        let page = ctx.slots[p as usize].page;
        let epoch = if ctx.is_staged(p) {
            ctx.epoch[p as usize]
        } else {
            gi += 1;
            guards[gi - 1].epoch
        };
        sink.parents.push((page, epoch));
    }
    at
}

/// Lock recomputed page `slot` for the read of its current bytes. With
/// `keep`, the lock stays there for the caller to turn into the commit's
/// write lock if the page changes; otherwise it is a read lock in `child`.
///
/// # Errors
/// [`Error::Invariant`] for a slot without a page.
#[inline(always)]
fn lock_output<'a, 'g: 'a>(
    slot: &'g Slot,
    keep: Option<&'a mut Option<Held<'g>>>,
    child: &'a mut Option<RwLockReadGuard<'g, Page>>,
) -> Result<&'a Page> {
    let Some(cell) = &slot.cell else {
        return Err(Error::Invariant(format!("page {} has no cell", slot.page)));
    };
    Ok(match keep {
        Some(k) => k.insert(Held::take(cell, slot.page)).page(),
        None => child.insert(cell.read_recursive()),
    })
}

/// [`compute_one`] for a node whose function runs on a GPU: the kernel
/// runs on the derived page's device with its parents' device memory
/// (parents elsewhere, or staged on the host, are copied there first), the
/// output is compared with the page on the device, and only the payload's
/// bytes come back. `o` (the node's place in the arena) receives the whole
/// output only when a child runs on the CPU and will read it there.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn compute_on_device<'g>(
    ctx: &Ctx<'g, '_>,
    n: u32,
    name: &Arc<str>,
    code: &crate::gpu::DeviceFunction,
    o: &mut [u8],
    guards: &mut Vec<RwLockReadGuard<'g, Page>>,
    sink: &mut Sink,
    keep: Option<&mut Option<Held<'g>>>,
) -> Outcome {
    let slot: &'g Slot = &ctx.slots[n as usize];
    let unsupported =
        |location| Outcome::Failed(Error::UnsupportedLocation { op: "device recompute function", location });
    // The page's bytes now, on its device.
    let mut child = None;
    let (old, before) = if let Some(g) = ctx.fresh.get(&n) {
        // Written in this batch, staged on its device.
        (g.clone(), ctx.epoch[n as usize])
    } else if ctx.is_staged(n) {
        let Some(home) = ctx.home.get(&n) else { return unsupported(crate::Location::Cpu) };
        match crate::gpu::upload_like(home, ctx.staged_bytes(n)) {
            Ok(g) => (g, ctx.epoch[n as usize]),
            Err(e) => return Outcome::Failed(e),
        }
    } else {
        let page = match lock_output(slot, keep, &mut child) {
            Ok(p) => p,
            Err(e) => return Outcome::Failed(e),
        };
        match page.storage.gpu() {
            Some(g) => (g.clone(), page.epoch),
            None => return unsupported(page.location),
        }
    };
    // The parents, on that device.
    let mut inputs: Vec<GpuPage> = Vec::with_capacity(slot.args.len());
    for &p in &slot.args {
        let input = if let Some(g) = ctx.fresh.get(&p) {
            if crate::gpu::same_device(g, &old) {
                Ok(g.clone())
            } else {
                g.download().and_then(|b| crate::gpu::upload_like(&old, &b))
            }
        } else if ctx.is_staged(p) {
            crate::gpu::upload_like(&old, ctx.staged_bytes(p))
        } else {
            let Some(cell) = &ctx.slots[p as usize].cell else {
                return Outcome::Failed(Error::Invariant(format!("page {} has a dead parent", slot.page)));
            };
            let guard = cell.read_recursive();
            let input = match guard.storage.gpu() {
                Some(g) if crate::gpu::same_device(g, &old) => Ok(g.clone()),
                _ => guard.copy_bytes().and_then(|b| crate::gpu::upload_like(&old, &b)),
            };
            guards.push(guard);
            input
        };
        match input {
            Ok(g) => inputs.push(g),
            Err(e) => return Outcome::Failed(e),
        }
    }
    let ran = ctx.ahead.and_then(|a| a.result(n, &old, &inputs));
    let result = ran.unwrap_or_else(|| {
        let refs: Vec<&GpuPage> = inputs.iter().collect();
        crate::gpu::recompute(code, &old, &refs)
    });
    let (payload, new) = match result {
        Ok(Some(r)) => r,
        Ok(None) => return Outcome::Unchanged,
        Err(Error::Gpu { context, source }) => {
            return Outcome::Failed(Error::Recompute {
                page: slot.page,
                function: name.to_string(),
                reason: format!("{context}: {source}"),
            })
        }
        Err(e) => return Outcome::Failed(e),
    };
    let Some(after) = before.checked_next() else {
        return Outcome::Failed(Error::invalid_delta(Some(slot.page), "page epoch would overflow"));
    };
    // A child run on the CPU reads the new bytes from the arena.
    if read_on_host(ctx.slots, ctx.functions, n) {
        if let Err(e) = new.gpu().download(new.range(), o) {
            return Outcome::Failed(e);
        }
    }
    let at = sink.enc.len();
    crate::storage::codec::delta::encode_payload(&payload, &mut sink.enc);
    let parents = push_parents(ctx, slot, guards, sink);
    Outcome::Changed {
        enc: at..sink.enc.len(),
        parents,
        touched: payload.touched(),
        epoch: after,
        fresh: Some(new),
    }
}

/// Whether device recomputes are run ahead (see [`Ahead`]); off only
/// through the benchmark harness's switch, to measure the level-by-level
/// path beside it.
pub(crate) static RUN_AHEAD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Outputs of at most this many bytes are run ahead in one propagation
/// (each also holds a difference mask of an eighth of its size).
const AHEAD_BYTES: usize = 1 << 30;

/// Device recomputes run before a propagation's level loop: every queued
/// or reachable derived page with a device function whose inputs are all
/// on its device (written pages, pages the propagation does not touch, or
/// outputs of recomputes run ahead before it) is launched in level order
/// on that device's stream, each kernel reading the outputs of those
/// before it, with no wait between them; the host waits once, after the
/// last comparison (see [`crate::gpu::Chain`]).
///
/// The level loop still decides what runs: a page it reaches takes its
/// result from here when the run read what the loop would pass it (the
/// same pages, or outputs shown equal to them), and recomputes it
/// otherwise. A page the loop never reaches (everything above it was cut
/// off) was launched for nothing, and its result is dropped: running ahead
/// trades device time for host waits, never bytes.
pub(crate) struct Ahead {
    ran: crate::gpu::Ran,
    /// Each node run ahead and its place in `ran`.
    job: HashMap<u32, usize>,
    /// For each run, for each argument, the run whose output it read.
    read: Vec<Vec<Option<usize>>>,
    /// Results the loop took.
    taken: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Ahead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ahead").field("ran", &self.ran).field("nodes", &self.job.len()).finish()
    }
}

impl Ahead {
    /// The result of node `n` run ahead, if it ran on what the loop would
    /// pass it: `old`, the page's bytes now, and `inputs`, its arguments.
    fn result(
        &self,
        n: u32,
        old: &GpuPage,
        inputs: &[GpuPage],
    ) -> Option<Result<Option<(Payload, GpuPage)>>> {
        let &k = self.job.get(&n)?;
        if !crate::gpu::same_page(self.ran.old(k), old) || self.ran.inputs(k).len() != inputs.len() {
            return None;
        }
        for ((now, then), from) in inputs.iter().zip(self.ran.inputs(k)).zip(&self.read[k]) {
            // The page it read, or an output that equals the page the
            // loop passes now (that recompute reproduced its page).
            let same = crate::gpu::same_page(now, then)
                || from
                    .is_some_and(|j| self.ran.count(j) == 0 && crate::gpu::same_page(now, self.ran.old(j)));
            if !same {
                return None;
            }
        }
        self.taken.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(self.ran.payload(k).map(|p| p.map(|p| (p, self.ran.output(k).clone()))))
    }
}

/// What a recompute run ahead reads for an argument.
enum Input {
    /// A page whose bytes the propagation does not change.
    Page(GpuPage),
    /// The output of the run at this place, queued before it.
    Run(usize),
}

/// Run ahead the device recomputes below `seeds` (queued nodes) that can
/// (see [`Ahead`]); `None` when fewer than two can, or the device refuses
/// (the level loop then meets and reports the failure itself).
fn run_ahead(
    slots: &[Slot],
    functions: &[FunctionEntry],
    fresh: &HashMap<u32, GpuPage>,
    staged: impl Fn(u32) -> bool,
    seeds: &[u32],
) -> Option<Ahead> {
    // Every node the loop may reach, in the loop's order.
    let mut reach: std::collections::HashSet<u32> = seeds.iter().copied().collect();
    let mut todo: Vec<u32> = seeds.to_vec();
    while let Some(n) = todo.pop() {
        for &c in &slots[n as usize].data_children {
            if reach.insert(c) {
                todo.push(c);
            }
        }
    }
    let mut order: Vec<u32> = reach.iter().copied().collect();
    order.sort_unstable_by_key(|&n| (slots[n as usize].level, n));
    // The page on a device a recompute would read for node `p`, when it is
    // known before the loop runs.
    let current = |p: u32| -> Option<GpuPage> {
        if let Some(g) = fresh.get(&p) {
            return Some(g.clone());
        }
        if staged(p) {
            return None;
        }
        let cell = slots[p as usize].cell.as_ref()?;
        let page = cell.read_recursive();
        page.storage.gpu().cloned()
    };
    // What each recompute that can run ahead reads: a page, or the output
    // of one before it (by its place in `runs`).
    let mut runs: Vec<(&crate::gpu::DeviceFunction, GpuPage, Vec<Input>)> = Vec::new();
    let mut job = HashMap::new();
    let mut bytes = 0usize;
    'node: for n in order {
        let slot = &slots[n as usize];
        let Some(b) = slot.binding else { continue };
        let Ok(Code::Device(code)) = functions[b.func as usize].code(b.version, slot.page) else { continue };
        let Some(old) = current(n) else { continue };
        if runs.first().is_some_and(|r| !crate::gpu::same_device(&r.1, &old)) {
            continue;
        }
        let mut inputs = Vec::with_capacity(slot.args.len());
        for &p in &slot.args {
            if let Some(&j) = job.get(&p) {
                inputs.push(Input::Run(j));
            } else if reach.contains(&p) {
                // Recomputed by the loop: its bytes are not known yet.
                continue 'node;
            } else {
                match current(p) {
                    Some(g) if crate::gpu::same_device(&g, &old) => inputs.push(Input::Page(g)),
                    _ => continue 'node,
                }
            }
        }
        if bytes + slot.len > AHEAD_BYTES {
            break;
        }
        bytes += slot.len;
        job.insert(n, runs.len());
        runs.push((&**code, old, inputs));
    }
    if runs.len() < 2 {
        return None;
    }
    let mut chain = runs[0].1.gpu().chain();
    let mut outputs: Vec<GpuPage> = Vec::with_capacity(runs.len());
    let mut read = Vec::with_capacity(runs.len());
    for (code, old, inputs) in runs {
        let pages = inputs.iter().map(|i| match i {
            Input::Page(g) => g.clone(),
            Input::Run(j) => outputs[*j].clone(),
        });
        outputs.push(code.queue(&mut chain, &old, pages.collect()).ok()?);
        read.push(inputs.iter().map(|i| if let Input::Run(j) = i { Some(*j) } else { None }).collect());
    }
    let ran = chain.run().ok()?;
    Some(Ahead { ran, job, read, taken: Default::default() })
}

/// Run a node's function on the current page bytes (no staging) and say
/// whether it reproduces them.
///
/// # Errors
/// [`Error::Recompute`] or [`Error::Function`] when the function cannot run.
pub(crate) fn reproduces(graph: &Graph, functions: &Functions, n: u32) -> Result<bool> {
    let slots = &graph.slots[..];
    // Nothing staged: every read goes to the pages.
    let none = HashMap::new();
    let ctx = Ctx {
        ahead: None,
        slots,
        functions: &functions.entries,
        gen: 1,
        staged: &[],
        off: &[],
        epoch: &[],
        done: &[],
        fresh: &none,
        home: &none,
    };
    let mut out = vec![0u8; slots[n as usize].len];
    match compute_one(&ctx, n, &mut out, &mut Vec::new(), &mut Vec::new(), &mut Sink::default(), None) {
        Outcome::Unchanged => Ok(true),
        Outcome::Changed { .. } => Ok(false),
        Outcome::Failed(e) => Err(e),
    }
}

thread_local! {
    /// Recompute functions running on this thread under [`catch_quietly`].
    static QUIET: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Run a recompute function, catching its panic: the panic becomes the
/// typed [`Error::Recompute`], so it is not also printed. A panic hook is
/// installed once that passes every other panic to the hook in force
/// before it (a hook the program sets later replaces it, and then prints
/// recompute panics too).
pub(crate) fn catch_quietly<R>(f: impl FnOnce() -> R) -> std::thread::Result<R> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(|q| q.get()) == 0 {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(q.get() + 1));
    let run = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(q.get() - 1));
    run
}

/// The message of a caught panic.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panicked with a non-string payload".to_owned()
    }
}

//! The write path. [`WriteState`] owns what a commit advances: the log,
//! the counters and the dependency state. [`WriteState::commit`] takes
//! every kind of [`Batch`] (page and graph changes, a user write with the
//! derived deltas of its immediate propagation when one is due, a
//! propagation of queued work) through the same stages:
//!
//! 1. prepare: check the batch, lock its pages, allocate the pages it
//!    creates, plan its propagation; a failure here changes nothing;
//! 2. log: the whole batch as one committed unit of the log;
//! 3. apply: each item in order, advancing epochs, delta ids and the
//!    timestamp, with its event;
//! 4. flush: GPU pages apply the deltas they queued;
//! 5. settle: a propagation's closing events; once the page locks are
//!    released, the graph learns what was applied.
//!
//! A failure after the log (applying or flushing) poisons it: memory and
//! log disagree from there on.

use crate::alloc::PageAllocator;
use crate::delta::change::{Change, EdgeKind, Update};
use crate::events::{event_for_change, Event, EventBus, SourceKind};
use crate::gpu::GpuApply;
use crate::gpu::Storage;
use crate::graph::propagate::{
    self, Deps, Derived, Functions, PropagationMode, PropagationStats, Scratch, Settings, Sink,
};
use crate::graph::{Binding, Graph, PageHandle};
use crate::registry::Page;
use crate::registry::{PageCell, Registry};
use crate::stats::Monitor;
use crate::storage::codec::delta::apply_encoded;
use crate::storage::codec::derived::DerivedEntry;
use crate::storage::log::LogWriter;
use crate::{Error, Result};
use parking_lot::RwLockWriteGuard;
use shared_types::{Epoch, PageId};
use smallvec::SmallVec;
use std::time::Instant;

/// A page's write lock.
pub(crate) type PageGuard<'a> = RwLockWriteGuard<'a, Page>;

/// A write's per-page bookkeeping: on the stack up to four pages.
pub(crate) type Small<T> = SmallVec<[T; 4]>;

/// Most derived-page locks a propagation makes room for up front.
const GUARDS_RESERVE_MAX: usize = 1 << 10;

/// What a commit uses of the state beside the write state.
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'a> {
    /// The pages.
    pub(crate) registry: &'a Registry,
    /// The buffers of new host pages.
    pub(crate) alloc: &'a PageAllocator,
    /// The subscribers.
    pub(crate) events: &'a EventBus,
    /// The counters of applied deltas and propagations.
    pub(crate) monitor: &'a Monitor,
}

/// The counters a commit advances.
#[derive(Debug)]
pub(crate) struct Clock {
    /// The id the next page created gets.
    pub(crate) next_page: u64,
    /// The id the next delta gets.
    pub(crate) next_delta: u64,
    /// Changes accepted so far (logical time).
    pub(crate) timestamp: u64,
}

/// Counters, log and dependency state owned by the write path (one writer
/// at a time), with the settings its commits follow.
#[derive(Debug)]
pub(crate) struct WriteState {
    /// The counters.
    pub(crate) clock: Clock,
    /// The write-ahead log.
    pub(crate) log: LogWriter,
    /// The dependency graph, the recompute functions and the scratch
    /// space of propagations.
    pub(crate) deps: Deps,
    /// When derived pages are recomputed.
    pub(crate) mode: PropagationMode,
    /// How a propagation may use threads.
    settings: Settings,
    /// When deltas queued for GPU pages are applied.
    gpu_apply: GpuApply,
    /// The chain the next checkpoint may extend.
    pub(crate) checkpoints: Checkpoints,
}

/// The checkpoints of a running state: the chain of the last one written
/// (or recovered from), and how long a chain may grow.
#[derive(Debug, Default)]
pub(crate) struct Checkpoints {
    /// The last checkpoint's chain.
    pub(crate) chain: Option<crate::storage::checkpoint::Chain>,
    /// Increments a chain may hold (0: every checkpoint is full).
    pub(crate) max_chain: u32,
    /// [`crate::Config::stop_checkpoint_bytes`].
    pub(crate) at_stop: u64,
    /// Log bytes a start would replay that this writer did not append
    /// (what recovery replayed; 0 once a checkpoint covers it).
    pub(crate) log_before: u64,
    /// The writer's appended bytes ([`crate::storage::log::LogStats::bytes`])
    /// when the last checkpoint was written (0 before one).
    pub(crate) log_mark: u64,
}

/// What [`WriteState::commit`] commits: one committed unit of the log.
pub(crate) enum Batch<'b> {
    /// Page and graph changes, checked by the caller.
    Changes(Vec<Change>),
    /// User updates, applied in order, all or none (their payloads may be
    /// taken), with the derived deltas of their propagation when it is
    /// due at once.
    Write {
        /// The updates.
        updates: &'b mut [Update],
        /// Filled with the epoch each update leaves its page at.
        epochs: &'b mut Small<Epoch>,
    },
    /// The derived deltas of a propagation of the queued work.
    Propagation {
        /// Set to the propagation's figures.
        stats: &'b mut PropagationStats,
    },
}

/// A write's updates and, for each, the index of its page's lock.
struct Users<'b, 'l> {
    /// The updates, in order.
    updates: &'b mut [Update],
    /// `slots[i]`: the index of update `i`'s page among the commit's locks.
    slots: &'l [usize],
}

/// A planned propagation. The payload encodings and parents of its
/// derived deltas are in the scratch sink, where the commit takes them
/// from without building payloads.
struct Plan<'l> {
    /// The recompute functions (their names go into the log).
    functions: &'l Functions,
    /// The propagation's scratch space: sink, recomputes, listeners.
    scratch: &'l Scratch,
    /// The derived deltas, in commit order (the scratch's reused buffer).
    derived: Vec<Derived>,
    /// What the plan did.
    stats: PropagationStats,
    /// When the propagation began: its duration counts staging and commit.
    t0: Instant,
}

/// Page and graph changes with what applying them needs.
struct Changes<'l> {
    /// The changes, in order.
    list: Vec<Change>,
    /// The storage of the pages `list` creates, in order, allocated
    /// before anything is logged.
    storage: std::vec::IntoIter<Storage>,
    /// The dependency state graph changes change.
    deps: &'l mut Deps,
}

/// What a prepared batch logs and applies (borrowed from the commit's
/// frame, so that the stages move no more than a few words).
enum Items<'u, 'b, 'l> {
    /// Page and graph changes.
    Changes(&'u mut Changes<'l>),
    /// A write with nothing to propagate at once.
    Updates(&'u mut Users<'b, 'l>),
    /// A write and the derived deltas of its immediate propagation.
    Propagated(&'u mut Users<'b, 'l>, &'u mut Plan<'l>),
    /// The derived deltas of a propagation of the queued work, and where
    /// its figures go.
    Derived(&'u mut Plan<'l>, &'u mut PropagationStats),
}

/// A prepared batch: checked, its pages locked, its propagation planned;
/// nothing logged yet.
struct Unit<'u, 'b, 'l> {
    /// What it logs and applies.
    items: Items<'u, 'b, 'l>,
    /// The write locks of the pages deltas change: the batch's own pages
    /// first (in id order), then the derived pages, at the index each
    /// [`Derived::guard`] names.
    guards: &'u mut [(PageId, PageGuard<'l>)],
    /// How many of `guards` are the batch's own pages.
    own: usize,
    /// User deltas applied so far.
    users_applied: usize,
    /// Derived deltas applied so far.
    derived_applied: usize,
    /// Whether a derived page turned out not to be in host memory.
    device: bool,
}

impl WriteState {
    /// The write state of a state whose counters are at `clock` and whose
    /// log is `log`, with an empty dependency graph.
    pub(crate) fn new(
        clock: Clock,
        log: LogWriter,
        mode: PropagationMode,
        settings: Settings,
        gpu_apply: GpuApply,
        checkpoints: Checkpoints,
    ) -> Self {
        Self { clock, log, deps: Deps::default(), mode, settings, gpu_apply, checkpoints }
    }

    /// Commit `batch` (see the module doc for the stages).
    ///
    /// # Errors
    /// Before the log, nothing changes: a write's [`Error::PageNotFound`],
    /// [`Error::PageBorrowed`], [`Error::InvalidDelta`],
    /// [`Error::StaleEpoch`]; a created page's allocation and device
    /// errors; a propagation's [`Error::Recompute`] and
    /// [`Error::Function`]. The log's own errors ([`Error::Io`],
    /// [`Error::Poisoned`], [`Error::Serialization`]). After the log, the
    /// error of an item that could not be applied or of the GPU flush,
    /// which poisons the log.
    pub(crate) fn commit(&mut self, ctx: &Ctx<'_>, batch: Batch<'_>) -> Result<()> {
        let Self { clock, log, deps, mode, settings, gpu_apply, checkpoints: _ } = self;
        // A write's pages (the cells outlive their locks), in id order;
        // their locks, which move to the front of `all` when a propagation
        // joins the write and adds the derived pages' locks there.
        let mut cells: Small<(PageId, PageCell)> = Small::new();
        // `slots[i]`: the index of update `i`'s page among the locks.
        let slots: Small<usize>;
        let mut own: Small<(PageId, PageGuard<'_>)> = Small::new();
        let mut all: Vec<(PageId, PageGuard<'_>)> = Vec::new();
        // What the batch logs and applies, borrowed by the unit.
        let (mut changes, mut users, mut plan);

        // 1. Prepare.
        let mut unit = match batch {
            Batch::Changes(list) => {
                changes = Changes::prepare(ctx, list, deps)?;
                Unit::new(Items::Changes(&mut changes), &mut [], 0)
            }
            Batch::Write { updates, epochs } => {
                // Every page is locked, in id order (no deadlock with other
                // writers of several pages), before anything is checked.
                let ids;
                (ids, slots) = page_slots(updates);
                lock_pages(ctx.registry, &ids, &mut cells, &mut own)?;
                let last = check_updates(updates, &slots, &own, epochs)?;
                users = Users { updates, slots: &slots };
                let planned = if *mode == PropagationMode::Immediate && !deps.graph.is_empty() {
                    plan_write(ctx, deps, *settings, &users, &last, &ids, &mut own, &mut all)?
                } else {
                    None
                };
                match planned {
                    Some(p) => {
                        plan = p;
                        Unit::new(Items::Propagated(&mut users, &mut plan), &mut all, ids.len())
                    }
                    None => {
                        let n = own.len();
                        Unit::new(Items::Updates(&mut users), &mut own, n)
                    }
                }
            }
            Batch::Propagation { stats } => {
                plan = plan_queued(ctx, deps, *settings, &mut all)?;
                Unit::new(Items::Derived(&mut plan, stats), &mut all, 0)
            }
        };
        // A propagation of queued work is announced before its log record;
        // one that joins a write after the write's own deltas, whose events
        // come first.
        if let Items::Derived(plan, _) = &unit.items {
            plan.announce(ctx);
        }

        let _span = tracing::trace_span!("mmsb.commit", changes = unit.len()).entered();
        let res = unit.run(ctx, log, clock, *gpu_apply);

        // 5. Settle, once the page locks are released.
        let (users_applied, derived_applied) = (unit.users_applied, unit.derived_applied);
        let (updates, derived) = unit.items.take_parts();
        drop(all);
        drop(own);
        settle(deps, &updates[..users_applied], derived, derived_applied, res.is_ok());
        res
    }
}

impl<'l> Changes<'l> {
    /// Prepare page and graph changes: a page created gets its storage now
    /// (a device page, its device), so that a page the memory cannot hold
    /// fails with nothing logged.
    ///
    /// # Errors
    /// [`Error::InvalidPage`], [`Error::NoDevice`],
    /// [`Error::UnsupportedLocation`], [`Error::GpuMemory`]; an
    /// [`Error::Invariant`] for a delta, which is committed as a write or
    /// a propagation, never as a change.
    fn prepare(ctx: &Ctx<'_>, list: Vec<Change>, deps: &'l mut Deps) -> Result<Self> {
        let mut storage = Vec::new();
        for c in &list {
            match c {
                Change::CreatePage { len, location, .. } => {
                    crate::gpu::check_location(*location)?;
                    storage.push(Storage::zeroed(*location, *len, ctx.alloc)?);
                }
                Change::Apply(d) => return Err(delta_as_change(d.page)),
                _ => {}
            }
        }
        Ok(Self { list, storage: storage.into_iter(), deps })
    }

    /// Apply the changes in order, each advancing the timestamp, with its
    /// event.
    fn apply(&mut self, ctx: &Ctx<'_>, clock: &mut Clock) -> Result<()> {
        for change in std::mem::take(&mut self.list) {
            let event = if ctx.events.active() { event_for_change(&change, Epoch(0)) } else { None };
            self.apply_one(ctx, change, &mut clock.next_page)?;
            clock.timestamp += 1;
            if let Some(e) = event {
                ctx.events.send(e);
            }
        }
        Ok(())
    }

    /// Apply one change; a created page takes the next storage prepared.
    fn apply_one(&mut self, ctx: &Ctx<'_>, change: Change, next_page: &mut u64) -> Result<()> {
        let registry = ctx.registry;
        match change {
            Change::CreatePage { id, len, location, meta } => {
                let storage = self.storage.next().ok_or_else(|| {
                    Error::Invariant(format!("page {id} was logged without storage allocated for it"))
                })?;
                let changed = parking_lot::Mutex::new(crate::registry::Changed::whole());
                registry.insert(Page { id, len, epoch: Epoch(0), location, meta, storage, changed })?;
                *next_page = (*next_page).max(id.0 + 1);
            }
            Change::DeletePage { id } => {
                registry.remove(id)?;
                self.deps.graph.remove_page(id);
            }
            Change::Apply(d) => return Err(delta_as_change(d.page)),
            Change::AddEdge { from, to, kind } => {
                let graph = &mut self.deps.graph;
                graph.add_edge(handle(registry, from)?, handle(registry, to)?, kind)?;
                if kind == EdgeKind::Data {
                    force(graph, to);
                }
            }
            Change::RemoveEdge { from, to } => {
                let graph = &mut self.deps.graph;
                if graph.remove_edge(from, to)? == EdgeKind::Data {
                    force(graph, to);
                }
            }
            Change::DeclareDerived { page, function, version, parents } => {
                let func = self.deps.functions.intern(&function);
                let page = handle(registry, page)?;
                let parents = parents.iter().map(|&p| handle(registry, p)).collect::<Result<_>>()?;
                self.deps.graph.declare(page, Binding { func, version }, parents)?;
            }
        }
        Ok(())
    }
}

impl<'l> Plan<'l> {
    /// The log entry of derived delta `i`.
    #[inline]
    fn entry(&self, i: usize) -> DerivedEntry<'l> {
        derived_entry(self.functions, &self.scratch.sink, &self.derived[i])
    }

    /// Whether the propagation ran and changed nothing: a settled record
    /// tells recovery that it ran.
    fn settles(&self) -> bool {
        self.stats.dirty > 0 && self.derived.is_empty()
    }

    /// Send the propagation's first event. Its events go whole or not at
    /// all, to the subscribers of the moment it began.
    fn announce(&self, ctx: &Ctx<'_>) {
        if let Some(to) = self.scratch.listeners {
            ctx.events.send_to(Event::PropagationStarted { dirty: self.stats.dirty }, to);
        }
    }

    /// After a successful commit: the propagation's duration, its
    /// recomputes and its end, to the subscribers of [`Plan::announce`].
    fn finish(&mut self, ctx: &Ctx<'_>) {
        self.stats.duration = self.t0.elapsed();
        ctx.monitor.propagated(self.stats.duration);
        if let Some(to) = self.scratch.listeners {
            for &(page, changed) in &self.scratch.fired {
                ctx.events.send_to(Event::Recomputed { page, changed }, to);
            }
            let s = &self.stats;
            let finished = Event::PropagationFinished {
                dirty: s.dirty,
                recomputed: s.recomputed,
                cut_off: s.cut_off,
                duration: s.duration,
            };
            ctx.events.send_to(finished, to);
        }
    }
}

impl<'b> Items<'_, 'b, '_> {
    /// Take a write's updates and a propagation's derived deltas out, for
    /// the graph's bookkeeping once the page locks are released.
    fn take_parts(&mut self) -> (&'b mut [Update], Option<Vec<Derived>>) {
        match self {
            Items::Changes(_) => (&mut [], None),
            Items::Updates(u) => (std::mem::take(&mut u.updates), None),
            Items::Propagated(u, p) => (std::mem::take(&mut u.updates), Some(std::mem::take(&mut p.derived))),
            Items::Derived(p, _) => (&mut [], Some(std::mem::take(&mut p.derived))),
        }
    }
}

impl<'u, 'b, 'l> Unit<'u, 'b, 'l> {
    /// A unit of `items` whose deltas change the pages locked in `guards`,
    /// the first `own` of them the batch's own.
    fn new(items: Items<'u, 'b, 'l>, guards: &'u mut [(PageId, PageGuard<'l>)], own: usize) -> Self {
        Self { items, guards, own, users_applied: 0, derived_applied: 0, device: false }
    }

    /// How many changes and deltas the unit holds.
    fn len(&self) -> usize {
        match &self.items {
            Items::Changes(c) => c.list.len(),
            Items::Updates(u) => u.updates.len(),
            Items::Propagated(u, p) => u.updates.len() + p.derived.len(),
            Items::Derived(p, _) => p.derived.len(),
        }
    }

    /// Stages 2 to 5 (before the graph's bookkeeping): log, apply, flush,
    /// the propagation's closing events. A failure after the log poisons
    /// it: memory and log disagree from here on.
    ///
    /// # Errors
    /// As [`Unit::log`], [`Unit::apply`] and [`Unit::flush`].
    fn run(&mut self, ctx: &Ctx<'_>, log: &mut LogWriter, clock: &mut Clock, gpu: GpuApply) -> Result<()> {
        self.log(log, clock)?;
        if let Err(e) = self.apply(ctx, clock) {
            return Err(poison(log, "a logged change could not be applied", e));
        }
        if let Err(e) = self.flush(gpu) {
            return Err(poison(log, "logged GPU deltas could not be applied", e));
        }
        self.finish(ctx);
        Ok(())
    }

    /// Stage 2: frame the unit as one atomic batch of the log and make it
    /// as durable as configured, before anything is applied. A write and
    /// its immediate propagation are one unit: recovery finds both or
    /// neither. A propagation that ran and changed nothing leaves a
    /// settled record (after a write's updates; alone, before the empty
    /// derived batch).
    ///
    /// # Errors
    /// The log's: nothing is applied then.
    fn log(&self, log: &mut LogWriter, clock: &Clock) -> Result<()> {
        let first = (clock.next_delta, clock.timestamp + 1);
        match &self.items {
            Items::Changes(c) => {
                log.append(&c.list)?;
            }
            Items::Updates(u) => {
                log.append_updates(u.updates, first.0, first.1)?;
            }
            Items::Propagated(u, p) => {
                log.append_propagated(u.updates, first, p.derived.len(), |i| p.entry(i))?;
                if p.settles() {
                    log.append_settled()?;
                }
            }
            Items::Derived(p, _) => {
                if p.settles() {
                    log.append_settled()?;
                }
                log.append_derived(p.derived.len(), first, |i| p.entry(i))?;
            }
        }
        log.commit()
    }

    /// Stage 3: apply every item in order, advancing the clock, with its
    /// event. A write's updates come before the derived deltas of its
    /// propagation, which is announced between the two.
    ///
    /// # Errors
    /// The first item that could not be applied (the ones before it
    /// stay applied and counted).
    fn apply(&mut self, ctx: &Ctx<'_>, clock: &mut Clock) -> Result<()> {
        let Self { items, guards, users_applied, derived_applied, device, .. } = self;
        match items {
            Items::Changes(c) => c.apply(ctx, clock),
            Items::Updates(u) => apply_users(ctx, u, guards, clock, users_applied),
            Items::Propagated(u, p) => {
                apply_users(ctx, u, guards, clock, users_applied)?;
                p.announce(ctx);
                apply_derived(ctx, p, guards, clock, (derived_applied, device))
            }
            Items::Derived(p, _) => apply_derived(ctx, p, guards, clock, (derived_applied, device)),
        }
    }

    /// Stage 4: GPU pages apply the deltas they queued (before the commit
    /// returns with [`GpuApply::Immediate`]). Derived pages are in host
    /// memory (the plan read their bytes and holds their locks since), so
    /// only the batch's own pages are looked at, unless a derived one
    /// turned out not to be.
    ///
    /// # Errors
    /// [`Error::Gpu`]: logged deltas are lost.
    fn flush(&self, mode: GpuApply) -> Result<()> {
        let pages =
            if self.device { &self.guards[..] } else { &self.guards[..self.own.min(self.guards.len())] };
        crate::gpu::after_commit(mode, pages.iter().filter_map(|(_, g)| g.storage.gpu()))
    }

    /// Stage 5, after a successful commit: a propagation's closing events.
    fn finish(&mut self, ctx: &Ctx<'_>) {
        match &mut self.items {
            Items::Propagated(_, p) => p.finish(ctx),
            Items::Derived(p, stats) => {
                p.finish(ctx);
                **stats = p.stats;
            }
            Items::Changes(_) | Items::Updates(_) => {}
        }
    }
}

/// Apply a write's updates in order, each advancing the page's epoch, the
/// delta id and the timestamp, with its event; GPU pages queue theirs for
/// the flush. `applied` counts the updates applied, also when one fails.
#[inline(always)]
fn apply_users(
    ctx: &Ctx<'_>,
    users: &mut Users<'_, '_>,
    guards: &mut [(PageId, PageGuard<'_>)],
    clock: &mut Clock,
    applied: &mut usize,
) -> Result<()> {
    let listen = ctx.events.active();
    let mut failed = None;
    // The counters stay in registers through the loop.
    let (mut next_delta, mut timestamp) = (clock.next_delta, clock.timestamp);
    let mut n = 0;
    for (u, &k) in users.updates.iter_mut().zip(users.slots) {
        let Some((_, page)) = guards.get_mut(k) else {
            failed = Some(Error::Invariant(format!("no lock held on page {}", u.page)));
            break;
        };
        let bytes = if listen { u.payload.touched() } else { 0 };
        // Before the apply: a GPU page takes the payload.
        let len = page.len;
        page.changed.get_mut().mark_payload(&u.payload, len);
        let res = page.storage.apply(&mut u.payload);
        if let Err(e) = res {
            failed = Some(e);
            break;
        }
        page.epoch = Epoch(page.epoch.0 + 1);
        n += 1;
        next_delta += 1;
        timestamp += 1;
        if listen {
            let epoch = page.epoch;
            ctx.events.send(Event::DeltaApplied { page: u.page, epoch, source: SourceKind::User, bytes });
        }
    }
    (clock.next_delta, clock.timestamp) = (next_delta, timestamp);
    *applied = n;
    ctx.monitor.deltas_applied(n as u64);
    failed.map_or(Ok(()), Err)
}

/// Apply a planned propagation's derived deltas in order (each page locked
/// in `guards` at [`Derived::guard`]) from the payload encodings in its
/// sink, each advancing the page's epoch, the delta id and the timestamp,
/// with its event. `applied.0` counts the deltas applied, also when one
/// fails; `applied.1` is set when a page is not in host memory (it queues
/// the payload for the flush).
fn apply_derived(
    ctx: &Ctx<'_>,
    plan: &Plan<'_>,
    guards: &mut [(PageId, PageGuard<'_>)],
    clock: &mut Clock,
    (applied, device): (&mut usize, &mut bool),
) -> Result<()> {
    let listen = ctx.events.active();
    let sink = &plan.scratch.sink;
    let mut failed = None;
    let mut n = 0;
    for d in &plan.derived {
        let page = match d.guard.and_then(|g| guards.get_mut(g)) {
            Some((id, page)) if *id == d.page => page,
            _ => {
                failed = Some(Error::PageNotFound(d.page));
                break;
            }
        };
        // Host pages apply the encoding the plan left in its sink; a GPU
        // page queues the payload decoded from it.
        let len = page.len;
        let page: &mut crate::registry::Page = page;
        let res = match page.storage.host_mut() {
            Some(b) => {
                page.changed.get_mut().mark_encoded(d.encoded(sink), len);
                apply_encoded(d.encoded(sink), b)
            }
            None => {
                *device = true;
                d.payload(sink).and_then(|mut p| {
                    page.changed.get_mut().mark_payload(&p, len);
                    page.storage.apply(&mut p)
                })
            }
        };
        if let Err(e) = res {
            failed = Some(e);
            break;
        }
        page.epoch = Epoch(page.epoch.0 + 1);
        n += 1;
        if listen {
            let (page, epoch) = (d.page, page.epoch);
            ctx.events.send(Event::DeltaApplied {
                page,
                epoch,
                source: SourceKind::Propagation,
                bytes: d.touched,
            });
        }
    }
    clock.next_delta += n as u64;
    clock.timestamp += n as u64;
    *applied = n;
    ctx.monitor.derived_applied(n as u64);
    failed.map_or(Ok(()), Err)
}

/// After a commit, with the page locks released: the graph learns of the
/// deltas applied (also by a commit that failed after its log), and a
/// committed propagation's queued work is forgotten. The derived deltas'
/// buffer goes back to the scratch space for the next propagation.
fn settle(deps: &mut Deps, users: &[Update], derived: Option<Vec<Derived>>, applied: usize, ok: bool) {
    let graph = &mut deps.graph;
    if !graph.is_empty() {
        for u in users {
            graph.on_apply(u.page, false);
        }
    }
    if let Some(mut derived) = derived {
        // A derived delta of a page that was not stale and has no control
        // edges leaves the graph as it is.
        for d in derived[..applied].iter().filter(|d| d.flags) {
            graph.on_apply_node(d.node, true);
        }
        derived.clear();
        if ok {
            graph.clear_pending();
        }
        deps.scratch.derived = derived;
    }
}

/// Plan the immediate propagation of a checked write when one is due (a
/// page of the write feeds a derived page, or work is queued), on staged
/// copies of the write's pages: the batch is refused whole if a recompute
/// fails. Its own locks move from `own` to the front of `all`, where the
/// plan adds the locks of the pages it changes.
///
/// # Errors
/// As [`propagate::plan`]; [`Error::InvalidDelta`] from staging.
#[allow(clippy::too_many_arguments)]
fn plan_write<'l>(
    ctx: &Ctx<'_>,
    deps: &'l mut Deps,
    settings: Settings,
    users: &Users<'_, '_>,
    epochs: &[Epoch],
    ids: &[PageId],
    own: &mut Small<(PageId, PageGuard<'l>)>,
    all: &mut Vec<(PageId, PageGuard<'l>)>,
) -> Result<Option<Plan<'l>>> {
    let Deps { graph, functions, scratch } = deps;
    // The graph node of each page of the write, if it has one.
    let node_of: Small<Option<u32>> = own.iter().map(|(id, _)| graph.node(*id)).collect();
    let feeds = node_of.iter().flatten().any(|&n| !graph.slots[n as usize].data_children.is_empty());
    if !feeds && !graph.has_pending() {
        return Ok(None);
    }
    let t0 = Instant::now();
    scratch.begin(graph.bound(), ctx.events.listeners());
    // Pages of the write whose new bytes only device recomputes read are
    // staged on their device (a copy there, the write applied there).
    let mut on_device: Small<bool> = Small::new();
    for (k, n) in node_of.iter().enumerate() {
        let mut device = false;
        if let Some(n) = *n {
            let page = &own[k].1;
            match (page.storage.host(), page.storage.gpu()) {
                (Some(b), _) => {
                    scratch.stage(n, b, epochs[k]);
                }
                (None, Some(g)) if !propagate::read_on_host(&graph.slots, &functions.entries, n) => {
                    let payloads: Vec<&crate::delta::Payload> = users
                        .updates
                        .iter()
                        .zip(users.slots)
                        .filter(|(_, &slot)| slot == k)
                        .map(|(u, _)| &u.payload)
                        .collect();
                    scratch.stage_on_device(n, crate::gpu::staged_copy(g, &payloads)?, epochs[k]);
                    device = true;
                }
                // Otherwise a page on a device is staged from a copy of
                // its bytes.
                (None, gpu) => {
                    scratch.stage(n, &page.copy_bytes()?, epochs[k]);
                    if let Some(g) = gpu {
                        scratch.stage_home(n, g);
                    }
                }
            }
        }
        on_device.push(device);
    }
    for (u, &k) in users.updates.iter().zip(users.slots) {
        if let (Some(n), false) = (node_of[k], on_device[k]) {
            u.payload.apply_to(scratch.staged_mut(n, own[k].1.len as usize))?;
        }
    }
    let extra: Small<u32> = node_of.into_iter().flatten().collect();
    let mut plan = {
        let _span = tracing::debug_span!("mmsb.propagate", immediate = true).entered();
        plan(graph, functions, scratch, (&extra, settings, t0), own, all)?
    };
    // A page of the write keeps its lock, at its place among the write's.
    for d in plan.derived.iter_mut().filter(|d| d.guard.is_none()) {
        d.guard = ids.binary_search(&d.page).ok();
    }
    Ok(Some(plan))
}

/// Plan a propagation of the queued work; the plan locks the pages it
/// changes in `all`.
///
/// # Errors
/// As [`propagate::plan`].
fn plan_queued<'l>(
    ctx: &Ctx<'_>,
    deps: &'l mut Deps,
    settings: Settings,
    all: &mut Vec<(PageId, PageGuard<'l>)>,
) -> Result<Plan<'l>> {
    let t0 = Instant::now();
    let Deps { graph, functions, scratch } = deps;
    scratch.begin(graph.bound(), ctx.events.listeners());
    plan(graph, functions, scratch, (&[], settings, t0), &mut Small::new(), all)
}

/// Run [`propagate::plan`] from the staged nodes `extra` into the
/// scratch's reused buffer of derived deltas (kept there on failure). The
/// locks in `own` move to the front of `all`, which makes room for as many
/// derived pages as the last propagation had (up to a bound: one huge
/// propagation should not make every later write allocate as much).
fn plan<'l>(
    graph: &'l Graph,
    functions: &'l Functions,
    scratch: &'l mut Scratch,
    (extra, settings, t0): (&[u32], Settings, Instant),
    own: &mut Small<(PageId, PageGuard<'l>)>,
    all: &mut Vec<(PageId, PageGuard<'l>)>,
) -> Result<Plan<'l>> {
    let mut derived = std::mem::take(&mut scratch.derived);
    all.reserve_exact(own.len() + derived.capacity().min(GUARDS_RESERVE_MAX));
    all.extend(own.drain(..));
    match propagate::plan(graph, functions, scratch, extra, settings, &mut derived, all) {
        Ok(stats) => Ok(Plan { functions, scratch, derived, stats, t0 }),
        Err(e) => {
            scratch.derived = derived;
            Err(e)
        }
    }
}

/// Resolve and write-lock the pages `ids` (ascending).
///
/// # Errors
/// [`Error::PageNotFound`]; [`Error::PageBorrowed`] when this thread
/// holds a read guard on one of them.
fn lock_pages<'c>(
    registry: &Registry,
    ids: &[PageId],
    cells: &'c mut Small<(PageId, PageCell)>,
    guards: &mut Small<(PageId, PageGuard<'c>)>,
) -> Result<()> {
    cells.reserve_exact(ids.len());
    for &id in ids {
        cells.push((id, registry.get(id)?));
    }
    guards.reserve_exact(cells.len());
    for (id, c) in cells.iter() {
        guards.push((*id, crate::registry::write_page(c, *id)?));
    }
    Ok(())
}

/// Check a write against its locked pages, simulating the epochs it walks
/// through: each payload fits its page, each base epoch is the one its
/// page is at by then, no epoch overflows. Fills `results` with the epoch
/// each update leaves its page at; returns the epoch each page ends at.
///
/// # Errors
/// [`Error::InvalidDelta`], [`Error::StaleEpoch`].
fn check_updates(
    updates: &[Update],
    slots: &[usize],
    guards: &[(PageId, PageGuard<'_>)],
    results: &mut Small<Epoch>,
) -> Result<Small<Epoch>> {
    let mut epochs: Small<Epoch> = guards.iter().map(|(_, g)| g.epoch).collect();
    results.reserve_exact(updates.len());
    for (u, &k) in updates.iter().zip(slots) {
        let page = &guards[k].1;
        u.payload.check(page.len).map_err(|e| with_page(e, u.page))?;
        if let Some(base) = u.base_epoch {
            if base != epochs[k] {
                return Err(Error::StaleEpoch { page: u.page, expected: base, actual: epochs[k] });
            }
        }
        epochs[k] = epochs[k]
            .checked_next()
            .ok_or_else(|| Error::invalid_delta(Some(u.page), "page epoch would overflow"))?;
        results.push(epochs[k]);
    }
    Ok(epochs)
}

/// The distinct pages of `updates` in ascending id order, and for each
/// update the index of its page in that list. Large batches deduplicate
/// through a small open-addressing table first, so only the distinct ids
/// are sorted.
fn page_slots(updates: &[Update]) -> (Small<PageId>, Small<usize>) {
    const EMPTY: u32 = u32::MAX;
    let n = updates.len();
    if n <= 32 || u32::try_from(n).is_err() {
        let mut ids: Small<PageId> = updates.iter().map(|u| u.page).collect();
        ids.sort_unstable();
        ids.dedup();
        let slots = updates.iter().map(|u| ids.binary_search(&u.page).unwrap_or(0)).collect();
        return (ids, slots);
    }
    let bits = (2 * n).next_power_of_two().trailing_zeros();
    let mask = (1usize << bits) - 1;
    // (id, index of the id in `uniq`); EMPTY marks a free entry.
    let mut table = vec![(0u64, EMPTY); mask + 1];
    let mut uniq: Vec<PageId> = Vec::new();
    let mut first: Vec<u32> = Vec::with_capacity(n);
    for u in updates {
        let id = u.page.0;
        let mut h = (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize;
        let slot = loop {
            let e = &mut table[h];
            if e.1 == EMPTY {
                *e = (id, uniq.len() as u32);
                uniq.push(u.page);
                break e.1;
            }
            if e.0 == id {
                break e.1;
            }
            h = (h + 1) & mask;
        };
        first.push(slot);
    }
    let mut order: Vec<u32> = (0..uniq.len() as u32).collect();
    order.sort_unstable_by_key(|&i| uniq[i as usize]);
    let mut rank = vec![0usize; uniq.len()];
    for (pos, &i) in order.iter().enumerate() {
        rank[i as usize] = pos;
    }
    let ids = order.iter().map(|&i| uniq[i as usize]).collect();
    let slots = first.iter().map(|&i| rank[i as usize]).collect();
    (ids, slots)
}

/// The log entry of planned derived delta `d`.
#[inline]
fn derived_entry<'a>(functions: &'a Functions, sink: &'a Sink, d: &Derived) -> DerivedEntry<'a> {
    DerivedEntry {
        page: d.page,
        func: d.func,
        function: &functions.entries[d.func as usize].name,
        version: d.version,
        parents: d.parent_epochs(sink),
        payload: d.encoded(sink),
    }
}

/// The graph's handle of page `id` (a page of any location).
///
/// # Errors
/// [`Error::PageNotFound`].
pub(crate) fn handle(registry: &Registry, id: PageId) -> Result<PageHandle> {
    let cell = registry.get(id)?;
    let len = cell.read().len as usize;
    Ok((id, cell, len))
}

/// Queue a recomputation of `page`, when it is in the graph.
fn force(graph: &mut Graph, page: PageId) {
    if let Some(n) = graph.node(page) {
        graph.force(n);
    }
}

/// Poison `log` because `what` failed after it: memory and log disagree
/// from here on. Returns `e`.
fn poison(log: &mut LogWriter, what: &str, e: Error) -> Error {
    log.poison_with(format!("{what}: {e}"));
    e
}

/// The refusal of a delta given as a change.
fn delta_as_change(page: PageId) -> Error {
    Error::Invariant(format!(
        "a delta of page {page} was given as a change: deltas are committed as writes or propagations"
    ))
}

/// `e`, naming `page` when it is an invalid delta that names none.
fn with_page(e: Error, page: PageId) -> Error {
    match e {
        Error::InvalidDelta { page: None, reason } => Error::InvalidDelta { page: Some(page), reason },
        other => other,
    }
}

//! The public handle: [`Mmsb`].

use super::open::DirHolder;
use crate::alloc::{AllocStats, PageAllocator};
use crate::delta::change::{Change, EdgeKind, Update};
use crate::delta::Payload;
use crate::engine::write::{Batch, Ctx, Small, WriteState};
use crate::events::{EventBus, Subscription};
use crate::gpu::Storage;
use crate::graph::propagate::{self, Deps, PropagationMode, PropagationStats};
use crate::graph::PageHandle;
use crate::registry::{Page, Registry};
use crate::storage::codec::page::PageImage;
use crate::storage::codec::Limits;
use crate::storage::image::StateImage;
use crate::storage::log::LogStats;
use crate::storage::recovery::RecoveryReport;
use crate::storage::vfs::Vfs;
use crate::types::page::{Location, Metadata, PageSpec};
use crate::{Error, Result};
use parking_lot::{Mutex, RawRwLock};
use shared_types::{Epoch, Lsn, PageId};
use smallvec::SmallVec;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A derived page's recipe: function, version and parents in call order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Derivation {
    /// The function's registered name.
    pub function: String,
    /// The version the page was derived with.
    pub version: u32,
    /// Parents in call order.
    pub parents: Vec<PageId>,
}

/// A page's description without its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageInfo {
    /// Id.
    pub id: PageId,
    /// Length in bytes.
    pub len: u64,
    /// Current epoch.
    pub epoch: Epoch,
    /// Location.
    pub location: Location,
    /// Metadata.
    pub meta: Metadata,
}

/// A read guard on one page: borrows its bytes without copying. Writers to
/// this page on other threads wait until it is dropped, and so does a
/// write to any page the guarded page is derived from whose propagation
/// changes it: that write holds the state's commit lock while it waits,
/// so every other change (from any thread) waits too; hold it briefly,
/// and copy with [`Mmsb::query_page`] when in doubt. On the thread that
/// holds it, a change that would have to write the guarded page (an
/// update, a typed write, a propagation reaching it, a migration) is
/// refused whole with [`Error::PageBorrowed`] instead of waiting for
/// itself. The guard stays on the thread that made it (it is not `Send`).
pub struct PageRef {
    guard: parking_lot::ArcRwLockReadGuard<RawRwLock, Page>,
    /// Keeps the guard on its thread (its borrow is noted there); shared
    /// references across threads are still fine.
    _not_send: std::marker::PhantomData<std::sync::MutexGuard<'static, ()>>,
}

impl PageRef {
    /// The page.
    pub fn page(&self) -> &Page {
        &self.guard
    }

    /// The bytes (the page is in host memory: [`Mmsb::read_page`] checked it).
    pub fn bytes(&self) -> &[u8] {
        // read_page only hands out guards on host pages.
        self.guard.storage.host().unwrap_or(&[])
    }

    /// The epoch.
    pub fn epoch(&self) -> Epoch {
        self.guard.epoch
    }
}

impl Drop for PageRef {
    fn drop(&mut self) {
        crate::registry::note_release(parking_lot::ArcRwLockReadGuard::rwlock(&self.guard));
    }
}

/// A read guard on one host page that may move between threads and be
/// shared ([`Mmsb::read_page_shared`]): what an Arrow buffer over the page's
/// bytes holds (`mmsb-arrow`'s zero-copy page view).
///
/// While one exists, every change that would write its page (an update, a
/// typed write, a propagation reaching it, a migration), from any thread,
/// is refused whole with [`Error::PageBorrowed`]: the guard may be held by
/// the writing thread itself, so no writer could know that waiting would
/// end. Reads are not affected. Drop it (and every Arrow array over it) to
/// write the page again.
///
/// It is `Send` and `Sync`; a [`PageRef`] is not:
///
/// ```compile_fail
/// fn send<T: Send>(_: T) {}
/// # fn main() -> mmsb::Result<()> {
/// let state = mmsb::Mmsb::start(mmsb::Config::temporary())?;
/// let p = state.create_page(mmsb::PageSpec::new(8))?;
/// send(state.read_page(p)?); // PageRef stays on its thread
/// # Ok(())
/// # }
/// ```
///
/// ```
/// fn send<T: Send + Sync>(_: T) {}
/// # fn main() -> mmsb::Result<()> {
/// let state = mmsb::Mmsb::start(mmsb::Config::temporary())?;
/// let p = state.create_page(mmsb::PageSpec::new(8))?;
/// send(state.read_page_shared(p)?);
/// # Ok(())
/// # }
/// ```
pub struct SharedPageRef {
    guard: parking_lot::ArcRwLockReadGuard<RawRwLock, Page>,
}

impl SharedPageRef {
    /// The page.
    pub fn page(&self) -> &Page {
        &self.guard
    }

    /// The bytes (the page is in host memory: [`Mmsb::read_page_shared`]
    /// checked it). Their address is fixed while the guard lives.
    pub fn bytes(&self) -> &[u8] {
        self.guard.storage.host().unwrap_or(&[])
    }

    /// The epoch.
    pub fn epoch(&self) -> Epoch {
        self.guard.epoch
    }
}

impl Drop for SharedPageRef {
    fn drop(&mut self) {
        crate::registry::note_unshared(parking_lot::ArcRwLockReadGuard::rwlock(&self.guard));
    }
}

impl std::fmt::Debug for SharedPageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPageRef").field("id", &self.guard.id).field("epoch", &self.guard.epoch).finish()
    }
}

impl std::fmt::Debug for PageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageRef").field("id", &self.guard.id).field("epoch", &self.guard.epoch).finish()
    }
}

/// A running MMSB state: pages, deltas and everything built on them.
///
/// All methods take `&self`; the handle can be shared between threads
/// (wrap it in an `Arc`). Writers are serialised by one commit lock, which
/// fixes the order of ids, epochs and timestamps; readers lock single pages.
///
/// # Examples
/// ```
/// use mmsb::{Config, Mmsb, PageSpec, Payload, SparseDelta};
/// # fn main() -> mmsb::Result<()> {
/// let state = Mmsb::start(Config::temporary())?;
/// let page = state.create_page(PageSpec::new(16).named("counters"))?;
/// let delta = SparseDelta::from_pairs([(4, &[1u8, 2, 3][..])])?;
/// let epoch = state.update_page(page, Payload::Sparse(delta))?;
/// assert_eq!(epoch.get(), 1);
/// assert_eq!(&state.query_page(page)?[3..8], &[0, 1, 2, 3, 0]);
/// state.stop()?;
/// # Ok(())
/// # }
/// ```
pub struct Mmsb {
    pub(super) dir: DirHolder,
    pub(super) alloc: PageAllocator,
    pub(super) registry: Registry,
    /// The write path: the commit lock, held by every change.
    pub(super) write: Mutex<WriteState>,
    pub(super) stopped: AtomicBool,
    pub(super) vfs: Arc<dyn Vfs>,
    pub(super) limits: Limits,
    pub(super) report: RecoveryReport,
    pub(super) events: EventBus,
    pub(super) monitor: crate::stats::Monitor,
    /// Releases the storage of files a checkpoint made unnecessary (their
    /// names are already gone); joined by the next checkpoint, `stop` and drop.
    pub(super) reaper: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The hold on the state directory ([`Vfs::lock_dir`]): released by
    /// `stop` and by drop, so that the directory can be started again.
    pub(super) lock: Mutex<Option<crate::storage::vfs::DirLock>>,
}

impl Drop for Mmsb {
    fn drop(&mut self) {
        // A handle dropped without `stop` closes its log as `stop` does
        // (best effort: errors are dropped with it); a temporary state is
        // removed anyway.
        if !self.stopped.load(Ordering::Acquire) && matches!(self.dir, DirHolder::Given(_)) {
            let mut w = self.write.lock();
            if w.log.poisoned().is_none() {
                // No checkpoint while a panic unwinds: a write it cut short
                // may have left pages the log does not hold.
                if !std::thread::panicking() {
                    let _ = self.checkpoint_at_stop(&mut w);
                }
                let _ = w.log.close();
            }
        }
        self.join_reaper();
    }
}

impl std::fmt::Debug for Mmsb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mmsb").field("dir", &self.dir()).field("pages", &self.registry.len()).finish()
    }
}

impl Mmsb {
    /// What recovery found when this handle started.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// Write and fsync every logged change, whatever the durability setting.
    ///
    /// # Errors
    /// [`Error::Io`] (the log is then poisoned) or [`Error::Poisoned`].
    pub fn sync(&self) -> Result<()> {
        self.live()?;
        self.write.lock().log.sync()
    }

    /// Log counters.
    pub fn log_stats(&self) -> LogStats {
        self.write.lock().log.stats()
    }

    /// A copy of the whole state (pages in id order plus counters). GPU
    /// pages are copied back to the host.
    ///
    /// # Errors
    /// [`Error::Gpu`] when a device page cannot be read.
    pub fn snapshot(&self) -> Result<StateImage> {
        let w = self.write.lock();
        let mut img = StateImage {
            pages: Default::default(),
            next_page: w.clock.next_page,
            next_delta: w.clock.next_delta,
            timestamp: w.clock.timestamp,
            lsn: w.log.last_lsn().0,
            graph: graph_image(&w),
        };
        for (id, cell) in self.registry.cells() {
            let p = cell.read();
            let bytes = p.copy_bytes()?;
            img.pages.insert(
                id,
                PageImage {
                    id,
                    epoch: p.epoch,
                    location: p.location,
                    meta: p.meta.clone(),
                    bytes: bytes.into(),
                },
            );
        }
        Ok(img)
    }

    /// The state hash (see [`StateImage::state_hash`]). Host pages are
    /// hashed in place; GPU pages are copied back first.
    ///
    /// # Errors
    /// [`Error::Gpu`] when a device page cannot be read.
    pub fn state_hash(&self) -> Result<u128> {
        let _write = self.write.lock();
        let cells = self.registry.cells();
        let guards: Vec<_> = cells.iter().map(|(_, c)| c.read()).collect();
        let bytes = guards.iter().map(|g| g.storage.read()).collect::<Result<Vec<_>>>()?;
        Ok(crate::storage::image::hash_pages(guards.iter().zip(&bytes).map(|(g, b)| (g.id, g.epoch, &b[..]))))
    }

    /// The decoder bounds in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Stop the state: a checkpoint is written when the log the next start
    /// would replay is long ([`Config::stop_checkpoint_bytes`](crate::Config::stop_checkpoint_bytes);
    /// it removes nothing; none for a temporary state, which no start
    /// reopens), the log is synced and closed (the last segment
    /// holding records is followed by an empty one that names the next
    /// LSN, so that any later cut of the log reads as missing records; see
    /// docs/RELIABILITY.md) and the state directory released (another
    /// handle may start on it). Dropping a handle without stopping it does
    /// the same, ignoring errors (and writes no checkpoint while a panic
    /// unwinds). Every later call that would change the
    /// state or write to its directory (updates, page creation and
    /// deletion, derivations, functions, propagation, checkpoints, `sync`)
    /// returns [`Error::Stopped`]; reads of what is in memory (pages, their
    /// info, the state hash, a snapshot, comparisons) keep answering until
    /// the handle is dropped.
    ///
    /// # Errors
    /// [`Error::Stopped`] when already stopped; the [`Error::Io`] of the
    /// checkpoint or of the log's close. The handle is stopped and the
    /// directory released in every case; a checkpoint that fails leaves
    /// the previous checkpoints and the log as they were, and the log is
    /// closed all the same.
    pub fn stop(&self) -> Result<()> {
        self.join_reaper();
        let mut w = self.write.lock();
        if self.stopped.swap(true, Ordering::SeqCst) {
            return Err(Error::Stopped);
        }
        // A temporary state is removed with the handle: nothing to reopen.
        let checkpoint = match self.dir {
            DirHolder::Given(_) => self.checkpoint_at_stop(&mut w).map(drop),
            DirHolder::Temp(_) => Ok(()),
        };
        let closed = w.log.close().map(drop);
        // Every later call is refused, so the directory is free for another
        // handle from here on.
        self.lock.lock().take();
        checkpoint.and(closed)
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        match &self.dir {
            DirHolder::Temp(t) => t.path(),
            DirHolder::Given(p) => p,
        }
    }

    /// Wait until the files removed by the last checkpoint are released.
    pub(super) fn join_reaper(&self) {
        if let Some(h) = self.reaper.lock().take() {
            let _ = h.join();
        }
    }

    pub(crate) fn live(&self) -> Result<()> {
        if self.stopped.load(Ordering::Acquire) {
            Err(Error::Stopped)
        } else {
            Ok(())
        }
    }

    /// Create a zero-filled page and return its id.
    ///
    /// # Errors
    /// [`Error::InvalidPage`] for a bad spec, a length over the state's
    /// [`Limits::max_page_len`](crate::storage::codec::Limits::max_page_len) (which recovery holds
    /// pages to), or a page the memory cannot hold (allocated before
    /// anything is logged: nothing changes); [`Error::NoDevice`] for a GPU
    /// or unified page when there is no such device;
    /// [`Error::UnsupportedLocation`] for unified memory on a device without
    /// managed memory; [`Error::GpuMemory`] when the device is full.
    pub fn create_page(&self, spec: PageSpec) -> Result<PageId> {
        let _span = tracing::debug_span!("mmsb.create_page", len = spec.len).entered();
        spec.validate()?;
        if spec.len > self.limits.max_page_len {
            // Recovery and replay read no page longer than this: one
            // created here could never be read back.
            return Err(Error::InvalidPage {
                reason: format!(
                    "page length {} is over this state's limit of {} bytes (Config::limits.max_page_len)",
                    spec.len, self.limits.max_page_len
                ),
            });
        }
        let mut w = self.write.lock();
        self.live()?;
        let change = Change::CreatePage {
            id: PageId(w.clock.next_page),
            len: spec.len,
            location: spec.location,
            meta: spec.meta,
        };
        self.commit(&mut w, vec![change])?;
        Ok(PageId(w.clock.next_page - 1))
    }

    /// Delete a page and free its bytes, with its edges: a derived page
    /// that read it as a data parent keeps its other parents (its function
    /// is called with those from then on) and is recomputed from them (at
    /// once in immediate mode; stale until the next propagation in
    /// deferred mode); a derived page's own derivation goes with it.
    ///
    /// # Errors
    /// [`Error::PageNotFound`]; [`Error::Recompute`] when the function of
    /// a derived page that read it panics on the parents it keeps (run
    /// once before anything changes), [`Error::Function`] when that
    /// function is not registered (immediate mode). Nothing changes on
    /// error.
    pub fn delete_page(&self, id: PageId) -> Result<()> {
        let mut w = self.write.lock();
        self.live()?;
        if !self.registry.contains(id) {
            return Err(Error::PageNotFound(id));
        }
        let g = &w.deps.graph;
        if let Some(n) = g.node(id) {
            for &c in &g.slots[n as usize].data_children {
                self.try_recompute_without(&w, c, n)?;
            }
        }
        self.commit(&mut w, vec![Change::DeletePage { id }])?;
        self.after_graph_change(&mut w)
    }

    /// Run the function of derived node `c` once on the current bytes of
    /// its data parents other than node `gone`, as the recompute after
    /// `gone` leaves its arguments would: a function that panics is
    /// refused before anything changes. A function without code is refused
    /// in immediate mode (the recompute would fail after the change) and
    /// left to the propagation in deferred mode.
    ///
    /// # Errors
    /// [`Error::Recompute`], [`Error::Function`].
    fn try_recompute_without(&self, w: &WriteState, c: u32, gone: u32) -> Result<()> {
        let deps = &w.deps;
        let s = &deps.graph.slots[c as usize];
        let Some(b) = s.binding else { return Ok(()) };
        let entry = &deps.functions.entries[b.func as usize];
        let f = match entry.code(b.version, s.page) {
            Ok(propagate::Code::Host(f)) => f,
            // A kernel is not run ahead: its failures are the
            // propagation's, which changes nothing when it fails.
            Ok(propagate::Code::Device(_)) => return Ok(()),
            Err(_) if w.mode == PropagationMode::Deferred => return Ok(()),
            Err(e) => return Err(e),
        };
        let parents: Vec<PageHandle> = s
            .args
            .iter()
            .filter(|&&p| p != gone)
            .map(|&p| self.handle(deps.graph.slots[p as usize].page))
            .collect::<Result<_>>()?;
        dry_run(f, &entry.name, s.page, s.len, &parents)
    }

    /// Apply `payload` to page `id` and return the page's new epoch.
    ///
    /// # Errors
    /// [`Error::PageNotFound`], [`Error::InvalidDelta`] (the page is then
    /// unchanged), [`Error::UnsupportedLocation`], [`Error::PageBorrowed`]
    /// (this thread holds a [`PageRef`] on the page or on a page the
    /// write's propagation would change; nothing changes).
    pub fn update_page(&self, id: PageId, payload: Payload) -> Result<Epoch> {
        self.update_slice(&mut [Update::new(id, payload)]).map(|v| v[0])
    }

    /// Apply `payload` only if page `id` is at epoch `base`.
    ///
    /// # Errors
    /// As [`Mmsb::update_page`], plus [`Error::StaleEpoch`].
    pub fn update_page_at(&self, id: PageId, payload: Payload, base: Epoch) -> Result<Epoch> {
        self.update_slice(&mut [Update::new(id, payload).at_epoch(base)]).map(|v| v[0])
    }

    /// Apply several updates atomically, in order: either all are applied or
    /// none. Returns each update's resulting epoch.
    ///
    /// # Errors
    /// The first problem found; nothing is applied then.
    pub fn update_batch(&self, mut updates: Vec<Update>) -> Result<Vec<Epoch>> {
        self.update_slice(&mut updates).map(SmallVec::into_vec)
    }

    /// [`Mmsb::update_batch`] over a slice (its payloads may be taken), with
    /// the batch's bookkeeping on the stack for small batches: a write of
    /// one page allocates nothing here.
    fn update_slice(&self, updates: &mut [Update]) -> Result<Small<Epoch>> {
        let _span = tracing::debug_span!("mmsb.update", updates = updates.len()).entered();
        let mut w = self.write.lock();
        self.live()?;
        let mut epochs = Small::new();
        w.commit(&self.ctx(), Batch::Write { updates, epochs: &mut epochs })?;
        Ok(epochs)
    }

    /// Bring every derived page up to date: recompute the pages below the
    /// writes made since the last propagation, each once, in dependency
    /// order. With [`PropagationMode::Immediate`] writes do this themselves
    /// and there is rarely anything left.
    ///
    /// # Errors
    /// [`Error::Recompute`] when a function panics, [`Error::Function`] when
    /// a derived page's function is not registered. Nothing is applied then
    /// and the work stays queued.
    ///
    /// # Complexity
    /// O(pages recomputed × (parents + log pages recomputed)) plus the
    /// functions and diffs; with nothing queued it returns at once.
    pub fn propagate(&self) -> Result<PropagationStats> {
        let mut w = self.write.lock();
        self.live()?;
        if !w.deps.graph.has_pending() {
            return Ok(PropagationStats::default());
        }
        self.propagate_locked(&mut w)
    }

    /// The state a commit uses beside the write state.
    fn ctx(&self) -> Ctx<'_> {
        Ctx { registry: &self.registry, alloc: &self.alloc, events: &self.events, monitor: &self.monitor }
    }

    /// Commit page and graph changes, checked by the caller.
    fn commit(&self, w: &mut WriteState, changes: Vec<Change>) -> Result<()> {
        w.commit(&self.ctx(), Batch::Changes(changes))
    }

    /// Plan and commit a propagation of the queued work.
    fn propagate_locked(&self, w: &mut WriteState) -> Result<PropagationStats> {
        let _span = tracing::debug_span!("mmsb.propagate").entered();
        let mut stats = PropagationStats::default();
        w.commit(&self.ctx(), Batch::Propagation { stats: &mut stats })?;
        Ok(stats)
    }

    /// After a graph change: in immediate mode, the work it queued is done.
    fn after_graph_change(&self, w: &mut WriteState) -> Result<()> {
        if w.mode == PropagationMode::Immediate && w.deps.graph.has_pending() {
            self.propagate_locked(w)?;
        }
        Ok(())
    }

    /// Rebuild the dependency graph recovered from the checkpoint and log.
    /// Functions are bound by name; their code is registered again by the
    /// application (registering the recorded version recomputes nothing).
    /// Propagation work that recovery found queued and not done
    /// ([`RecoveryReport::due`](crate::storage::log::RecoveryReport::due)) is queued
    /// again.
    pub(super) fn restore_graph(&self, g: &crate::storage::image::GraphImage) -> Result<()> {
        if g.is_empty() {
            return Ok(());
        }
        let mut w = self.write.lock();
        let deps = &mut w.deps;
        for (page, d) in &g.derived {
            let func = deps.functions.intern(&d.function);
            let parents = d.parents.iter().map(|&p| self.handle(p)).collect::<Result<Vec<_>>>()?;
            deps.graph.declare(
                self.handle(*page)?,
                crate::graph::Binding { func, version: d.version },
                parents,
            )?;
        }
        for (&(from, to), &kind) in &g.edges {
            if deps.graph.edge(from, to).is_none() {
                deps.graph.add_edge(self.handle(from)?, self.handle(to)?, kind)?;
            }
        }
        deps.graph.clear_pending();
        // Work the log shows queued and not done is queued again.
        let due = &self.report.due;
        for &p in &due.written {
            deps.graph.on_apply(p, false);
        }
        for &p in &due.forced {
            if let Some(n) = deps.graph.node(p).filter(|&n| deps.graph.slots[n as usize].binding.is_some()) {
                deps.graph.force(n);
            }
        }
        // So do pages a control parent's write left stale.
        for &p in &due.stale {
            deps.graph.mark_stale(p);
        }
        Ok(())
    }

    /// Whether every function the queued propagation work needs is
    /// registered at the version its pages are bound to.
    fn due_ready(deps: &Deps) -> bool {
        let g = &deps.graph;
        g.downstream_of_pending().iter().enumerate().filter(|(_, &due)| due).all(|(n, _)| {
            g.slots[n].binding.is_none_or(|b| {
                deps.functions
                    .entries
                    .get(b.func as usize)
                    .is_some_and(|e| e.f.is_some() && e.version == b.version)
            })
        })
    }

    /// The graph's handle of page `id` (see [`crate::engine::write::handle`]).
    fn handle(&self, id: PageId) -> Result<PageHandle> {
        crate::engine::write::handle(&self.registry, id)
    }

    /// Register recompute function `name` at `version`. Pages derived by an
    /// earlier version of it are re-declared at this version (logged as
    /// [`Change::DeclareDerived`]), marked stale and recomputed (at once in
    /// immediate mode, with any other queued work, once every function
    /// that work needs is registered: after a restart that found work
    /// queued, the registration that completes them runs it). Returns
    /// those pages.
    ///
    /// The function gets the parents' bytes in declaration order and writes
    /// the page's new bytes into a zeroed buffer of the page's length. It
    /// must be deterministic.
    ///
    /// # Errors
    /// [`Error::Function`] when `name` is registered at this or a later
    /// version; in immediate mode, the errors of [`Mmsb::propagate`] (the
    /// registration then stands and the pages stay queued).
    pub fn register_function<F>(&self, name: &str, version: u32, f: F) -> Result<Vec<PageId>>
    where
        F: Fn(&[&[u8]], &mut [u8]) + Send + Sync + 'static,
    {
        self.register_code(name, version, propagate::Code::Host(Arc::new(f)))
    }

    /// Register a recompute function that runs on a GPU, as
    /// [`Mmsb::register_function`] registers one that runs on the CPU (same
    /// names, versions, re-declaration and errors). It derives pages that
    /// live on a GPU: each recompute launches the kernel on the derived
    /// page's device with its parents' device memory (a parent elsewhere is
    /// copied to that device first), compares the output with the page on
    /// the device and downloads only the bytes that differ, which are
    /// logged as the derived delta, with the same provenance as a CPU
    /// function's. An output equal to the page cuts propagation off below
    /// it. The kernel's contract is in [`crate::gpu::DeviceFunction`].
    ///
    /// A page in host memory bound to a device function fails to recompute
    /// with [`Error::UnsupportedLocation`]; a kernel the driver refuses or
    /// that faults gives [`Error::Recompute`]. In both cases the
    /// propagation changes nothing.
    ///
    /// # Errors
    /// As [`Mmsb::register_function`].
    pub fn register_device_function(
        &self,
        name: &str,
        version: u32,
        f: crate::gpu::DeviceFunction,
    ) -> Result<Vec<PageId>> {
        self.register_code(name, version, propagate::Code::Device(Arc::new(f)))
    }

    /// [`Mmsb::register_function`] for code of either kind.
    fn register_code(&self, name: &str, version: u32, code: propagate::Code) -> Result<Vec<PageId>> {
        let mut w = self.write.lock();
        self.live()?;
        let w = &mut *w;
        w.deps.functions.check_register(name, version)?;
        let fi = w.deps.functions.set(name, version, code);
        let graph = &w.deps.graph;
        let mut pages = Vec::new();
        let mut changes = Vec::new();
        for n in graph.bound_to(fi) {
            let s = &graph.slots[n as usize];
            if s.binding.is_some_and(|b| b.version != version) {
                pages.push(s.page);
                changes.push(Change::DeclareDerived {
                    page: s.page,
                    function: name.to_owned(),
                    version,
                    parents: s.args.iter().map(|&p| graph.slots[p as usize].page).collect(),
                });
            }
        }
        pages.sort_unstable();
        self.commit(w, changes)?;
        // Queued work that needs a function not registered yet (after a
        // restart, say) waits for it.
        if Self::due_ready(&w.deps) {
            self.after_graph_change(w)?;
        }
        Ok(pages)
    }

    /// Whether recompute function `name` is registered at `version`.
    pub fn has_function(&self, name: &str, version: u32) -> bool {
        self.write.lock().deps.functions.has(name, version)
    }

    /// Make `page` a derived page: its bytes are `function(parents…)`, with
    /// data edges from each parent (in call order; a parent may repeat).
    /// Replaces an earlier derivation. The function runs once on the
    /// current bytes before anything changes; the page is then recomputed
    /// (at once in immediate mode). A derived page can still be written
    /// directly (an override, logged as a user write): the next recompute,
    /// when a parent changes, replaces those bytes, and
    /// [`Mmsb::verify_recompute`] reports an override its function does not
    /// reproduce.
    ///
    /// # Errors
    /// [`Error::PageNotFound`]; [`Error::Function`] when `function` is not
    /// registered; [`Error::GraphCycle`] when a parent is `page` or depends
    /// on it; [`Error::Recompute`] when the function panics (or, for a
    /// device function, when the driver refuses its PTX);
    /// [`Error::UnsupportedLocation`] when a device function would derive
    /// a page in host memory. Nothing changes on error.
    pub fn declare_derived(&self, page: PageId, function: &str, parents: &[PageId]) -> Result<()> {
        let mut w = self.write.lock();
        self.live()?;
        let w = &mut *w;
        let (fi, version) = w.deps.functions.current(function)?;
        let (_, cell, len) = self.handle(page)?;
        if let Some(propagate::Code::Device(f)) = &w.deps.functions.entries[fi as usize].f {
            // A kernel is not run ahead, but it must be able to run: the
            // page is on a GPU, and the driver takes the PTX there.
            let p = cell.read();
            match p.storage.gpu() {
                Some(g) => crate::gpu::load_function(f, g).map_err(|e| Error::Recompute {
                    page,
                    function: function.to_owned(),
                    reason: e.to_string(),
                })?,
                None => {
                    return Err(Error::UnsupportedLocation {
                        op: "device recompute function",
                        location: p.location,
                    })
                }
            }
        }
        let handles: Vec<PageHandle> = parents.iter().map(|&p| self.handle(p)).collect::<Result<_>>()?;
        w.deps.graph.check_declare(page, parents)?;
        // Dry run, so that a function that panics is refused up front.
        if let Some(propagate::Code::Host(f)) = &w.deps.functions.entries[fi as usize].f {
            dry_run(f, function, page, len, &handles)?;
        }
        drop(cell);
        let change = Change::DeclareDerived {
            page,
            function: function.to_owned(),
            version,
            parents: parents.to_vec(),
        };
        self.commit(w, vec![change])?;
        self.after_graph_change(w)
    }

    /// Add a dependency edge `from → to`. A [`EdgeKind::Data`] edge adds
    /// `from` as the last argument of derived page `to` (which is then
    /// recomputed); a [`EdgeKind::Control`] edge makes `to` stale whenever
    /// `from` changes.
    ///
    /// # Errors
    /// [`Error::PageNotFound`]; [`Error::GraphCycle`] naming the cycle the
    /// edge would close (self-loops included); [`Error::InvalidEdge`] when
    /// the pages are already linked or a data edge feeds a page that is not
    /// derived. Nothing changes on error.
    ///
    /// # Complexity
    /// Amortised near O(1) when the edge agrees with the current topological
    /// order; otherwise proportional to the nodes between the two pages in
    /// that order (Pearce–Kelly).
    pub fn add_edge(&self, from: PageId, to: PageId, kind: EdgeKind) -> Result<()> {
        let mut w = self.write.lock();
        self.live()?;
        self.handle(from)?;
        self.handle(to)?;
        w.deps.graph.check_edge(from, to, kind)?;
        self.commit(&mut w, vec![Change::AddEdge { from, to, kind }])?;
        self.after_graph_change(&mut w)
    }

    /// Remove the dependency edge `from → to`. Removing a data edge drops
    /// `from` from the child's arguments and recomputes the child (at once
    /// in immediate mode).
    ///
    /// # Errors
    /// [`Error::InvalidEdge`] when there is no such edge; for a data edge,
    /// as [`Mmsb::delete_page`] for the child's function. Nothing changes
    /// on error.
    pub fn remove_edge(&self, from: PageId, to: PageId) -> Result<()> {
        let mut w = self.write.lock();
        self.live()?;
        let g = &w.deps.graph;
        match (g.edge(from, to), g.node(from), g.node(to)) {
            (None, ..) => {
                return Err(Error::InvalidEdge { from, to, reason: "no edge between these pages".into() })
            }
            (Some(EdgeKind::Data), Some(a), Some(b)) => self.try_recompute_without(&w, b, a)?,
            _ => {}
        }
        self.commit(&mut w, vec![Change::RemoveEdge { from, to }])?;
        self.after_graph_change(&mut w)
    }

    /// Whether `page`'s bytes may be out of date: a control parent changed
    /// since the page was last written, or a recomputation of it is queued
    /// (a new derivation, a data edge added or removed, a data parent
    /// deleted), or, in deferred mode, a page it depends on through data
    /// edges was written and [`Mmsb::propagate`] has not run since.
    /// Staleness survives a restart: recovery follows it through the log,
    /// and a checkpoint names the pages stale at that moment.
    ///
    /// # Errors
    /// [`Error::PageNotFound`].
    pub fn is_stale(&self, page: PageId) -> Result<bool> {
        self.registry.get(page)?;
        let w = self.write.lock();
        let g = &w.deps.graph;
        Ok(g.node(page).is_some_and(|n| g.out_of_date(n)))
    }

    /// How `page` is derived, if it is.
    ///
    /// # Errors
    /// [`Error::PageNotFound`].
    pub fn derivation(&self, page: PageId) -> Result<Option<Derivation>> {
        self.registry.get(page)?;
        let w = self.write.lock();
        let (g, f) = (&w.deps.graph, &w.deps.functions);
        Ok(g.node(page).and_then(|n| {
            let s = &g.slots[n as usize];
            s.binding.map(|b| Derivation {
                function: f.entries[b.func as usize].name.to_string(),
                version: b.version,
                parents: s.args.iter().map(|&p| g.slots[p as usize].page).collect(),
            })
        }))
    }

    /// The children of `page` and the kinds of their edges, by page id.
    ///
    /// # Errors
    /// [`Error::PageNotFound`].
    pub fn children(&self, page: PageId) -> Result<Vec<(PageId, EdgeKind)>> {
        self.registry.get(page)?;
        let w = self.write.lock();
        let g = &w.deps.graph;
        let mut out: Vec<(PageId, EdgeKind)> = g
            .node(page)
            .map(|n| {
                let s = &g.slots[n as usize];
                let data = s.data_children.iter().map(|&c| (g.slots[c as usize].page, EdgeKind::Data));
                data.chain(s.control_children.iter().map(|&c| (g.slots[c as usize].page, EdgeKind::Control)))
                    .collect()
            })
            .unwrap_or_default();
        out.sort_unstable_by_key(|c| c.0);
        Ok(out)
    }

    /// Re-run every derived page's function on the current bytes and check
    /// that it reproduces them (a determinism check). Pages with queued or
    /// stale work are skipped. Returns the number of pages checked.
    ///
    /// # Errors
    /// [`Error::Invariant`] naming the first page that differs; the errors
    /// of a recompute ([`Error::Recompute`], [`Error::Function`]).
    pub fn verify_recompute(&self) -> Result<usize> {
        let w = self.write.lock();
        self.live()?;
        let (g, f) = (&w.deps.graph, &w.deps.functions);
        let skip = g.downstream_of_pending();
        let mut checked = 0;
        for n in g.live_nodes() {
            let s = &g.slots[n as usize];
            let Some(b) = s.binding else { continue };
            if s.stale || skip[n as usize] {
                continue;
            }
            if !propagate::reproduces(g, f, n)? {
                return Err(Error::Invariant(format!(
                    "derived page {} differs from a recompute by {:?} v{}",
                    s.page, f.entries[b.func as usize].name, b.version
                )));
            }
            checked += 1;
        }
        Ok(checked)
    }

    /// Subscribe to the event stream. Events are delivered without ever
    /// blocking a writer; see [`crate::events`] for what happens when a
    /// subscriber falls behind.
    pub fn subscribe(&self) -> Subscription {
        self.events.subscribe()
    }

    /// A copy of the page's bytes. For a GPU or unified page, queued deltas
    /// are applied first and the bytes come back through pinned memory.
    ///
    /// # Errors
    /// [`Error::PageNotFound`]; [`Error::Gpu`] when the device fails.
    pub fn query_page(&self, id: PageId) -> Result<Vec<u8>> {
        let cell = self.registry.get(id)?;
        let page = cell.read();
        page.copy_bytes()
    }

    /// Move page `id` to `to`, keeping its bytes, epoch and metadata.
    ///
    /// # Errors
    /// [`Error::PageNotFound`]; [`Error::NoDevice`] / [`Error::GpuMemory`]
    /// when the target cannot hold it (the page then stays where it was).
    pub fn migrate_page(&self, id: PageId, to: Location) -> Result<()> {
        let _write = self.write.lock();
        self.live()?;
        let cell = self.registry.get(id)?;
        let mut page = crate::registry::write_page(&cell, id)?;
        if page.location == to {
            return Ok(());
        }
        let bytes = page.copy_bytes()?;
        page.storage = Storage::copied(to, &bytes, &self.alloc)?;
        page.location = to;
        page.changed.get_mut().touch();
        Ok(())
    }

    /// Number of bytes in which pages `a` and `b` (of equal length) differ.
    /// Runs on the GPU when both pages live on the same device.
    ///
    /// # Errors
    /// [`Error::PageNotFound`]; [`Error::InvalidPage`] for pages of
    /// different lengths.
    pub fn compare_pages(&self, a: PageId, b: PageId) -> Result<u64> {
        self.with_two_pages(a, b, |pa, pb| {
            same_length(pa, pb)?;
            match (pa.storage.gpu(), pb.storage.gpu()) {
                (Some(ga), Some(gb)) if crate::gpu::same_device(ga, gb) => {
                    crate::gpu::compare(ga, gb).map(|(_, n)| n)
                }
                _ => {
                    let (x, y) = (pa.copy_bytes()?, pb.copy_bytes()?);
                    Ok(x.iter().zip(&y).filter(|(p, q)| p != q).count() as u64)
                }
            }
        })
    }

    /// The smallest payload that turns page `old` into page `new`: the same
    /// payload [`Payload::diff`] gives for their bytes. Runs the comparison on
    /// the GPU when both pages live on the same device.
    ///
    /// # Errors
    /// [`Error::PageNotFound`]; [`Error::InvalidPage`] for pages of
    /// different lengths.
    pub fn diff_pages(&self, old: PageId, new: PageId) -> Result<Payload> {
        self.with_two_pages(old, new, |po, pn| {
            same_length(po, pn)?;
            match (po.storage.gpu(), pn.storage.gpu()) {
                (Some(go), Some(gn)) if crate::gpu::same_device(go, gn) => crate::gpu::diff(go, gn),
                _ => Payload::diff(&po.copy_bytes()?, &pn.copy_bytes()?),
            }
        })
    }

    /// Apply every delta queued for GPU pages and wait for the devices.
    ///
    /// # Errors
    /// [`Error::Gpu`] when a device fails.
    pub fn flush_gpu(&self) -> Result<()> {
        crate::gpu::flush_all()
    }

    fn with_two_pages<T>(
        &self,
        a: PageId,
        b: PageId,
        f: impl FnOnce(&Page, &Page) -> Result<T>,
    ) -> Result<T> {
        let (ca, cb) = (self.registry.get(a)?, self.registry.get(b)?);
        if a == b {
            let g = ca.read();
            return f(&g, &g);
        }
        // Never wait for one lock while holding the other: a propagation
        // write-locks the pages it changes in dependency order, which need
        // not be id order, so a reader holding one page while it waits for
        // the other could wait on a writer that waits on it.
        loop {
            let ga = ca.read();
            if let Some(gb) = cb.try_read() {
                return f(&ga, &gb);
            }
            drop(ga);
            let gb = cb.read();
            if let Some(ga) = ca.try_read() {
                return f(&ga, &gb);
            }
            drop(gb);
            std::thread::yield_now();
        }
    }

    /// A read guard that borrows the page's bytes without copying.
    ///
    /// # Errors
    /// [`Error::PageNotFound`]; [`Error::UnsupportedLocation`] for a page
    /// whose bytes are not in host memory (use [`Mmsb::query_page`]).
    pub fn read_page(&self, id: PageId) -> Result<PageRef> {
        let cell = self.registry.get(id)?;
        let guard = cell.read_arc();
        if guard.location != Location::Cpu {
            return Err(Error::UnsupportedLocation { op: "read_page", location: guard.location });
        }
        crate::registry::note_borrow(parking_lot::ArcRwLockReadGuard::rwlock(&guard));
        Ok(PageRef { guard, _not_send: std::marker::PhantomData })
    }

    /// A read guard that borrows the page's bytes without copying and,
    /// unlike [`Mmsb::read_page`], may be sent to and shared with other
    /// threads ([`SharedPageRef`]): while it lives, writes to the page are
    /// refused with [`Error::PageBorrowed`] on every thread.
    ///
    /// # Errors
    /// [`Error::PageNotFound`]; [`Error::UnsupportedLocation`] for a page
    /// whose bytes are not in host memory (use [`Mmsb::query_page`]).
    pub fn read_page_shared(&self, id: PageId) -> Result<SharedPageRef> {
        let cell = self.registry.get(id)?;
        let guard = cell.read_arc();
        if guard.location != Location::Cpu {
            return Err(Error::UnsupportedLocation { op: "read_page_shared", location: guard.location });
        }
        crate::registry::note_shared(parking_lot::ArcRwLockReadGuard::rwlock(&guard));
        Ok(SharedPageRef { guard })
    }

    /// Hand the device memory of GPU or unified page `id` to another
    /// library (DLPack for PyTorch, CuPy, JAX): its queued deltas are
    /// applied and the device's stream drained first. Returns the export
    /// and the page's epoch at that moment. No byte is copied.
    ///
    /// Writes made through the export bypass the log until
    /// [`Mmsb::commit_device_writes`] captures them; reads of the page
    /// through MMSB meanwhile see them (they are in the page's memory).
    ///
    /// # Errors
    /// [`Error::PageNotFound`]; [`Error::UnsupportedLocation`] for a page
    /// in host memory (use [`Mmsb::read_page`]); [`Error::Gpu`].
    pub fn export_device(&self, id: PageId) -> Result<(crate::gpu::DeviceExport, Epoch)> {
        let cell = self.registry.get(id)?;
        let page = cell.read();
        let Some(g) = page.storage.gpu() else {
            return Err(Error::UnsupportedLocation { op: "export_device", location: page.location });
        };
        Ok((g.export()?, page.epoch))
    }

    /// Log the writes another library made through `export` (from
    /// [`Mmsb::export_device`] of page `id`): every stream of the device
    /// is drained, the page's bytes are read back and compared with
    /// `before` (the page's bytes at epoch `base`, which the caller kept),
    /// and the bytes that differ are committed as one user delta at base
    /// epoch `base` (applying it on the device writes the bytes already
    /// there). Returns the new epoch, or `None` when nothing changed; on
    /// success `before` holds the page's bytes as committed, ready for the
    /// next capture at the returned epoch.
    ///
    /// # Errors
    /// [`Error::PageNotFound`]; [`Error::InvalidDelta`] when the page's
    /// memory is no longer the exported memory (migrated, deleted and
    /// recreated) or `before` has another length; [`Error::StaleEpoch`]
    /// when the page was written through MMSB since epoch `base` (the
    /// device writes are then not logged: the page's memory holds bytes
    /// the log does not explain until they are written again and
    /// committed, or the state is reopened); [`Error::Gpu`].
    pub fn commit_device_writes(
        &self,
        id: PageId,
        export: &crate::gpu::DeviceExport,
        before: &mut [u8],
        base: Epoch,
    ) -> Result<Option<Epoch>> {
        export.synchronize()?;
        let payload = {
            let cell = self.registry.get(id)?;
            let page = cell.read();
            if !page.storage.gpu().is_some_and(|g| g.is_exported_as(export)) {
                return Err(Error::invalid_delta(
                    Some(id),
                    "the page no longer lives in the exported device memory (migrated or deleted since the export)",
                ));
            }
            if before.len() as u64 != page.len {
                return Err(Error::invalid_delta(
                    Some(id),
                    format!(
                        "{} bytes given as the page's earlier bytes; the page has {}",
                        before.len(),
                        page.len
                    ),
                ));
            }
            if page.epoch != base {
                return Err(Error::StaleEpoch { page: id, expected: base, actual: page.epoch });
            }
            let now = page.copy_bytes()?;
            (Payload::diff(before, &now)?, now)
        };
        let (payload, now) = payload;
        if payload.touched() == 0 {
            return Ok(None);
        }
        let epoch = self.update_page_at(id, payload, base)?;
        before.copy_from_slice(&now);
        Ok(Some(epoch))
    }

    /// A page's id, length, epoch, location and metadata.
    ///
    /// # Errors
    /// [`Error::PageNotFound`].
    pub fn page_info(&self, id: PageId) -> Result<PageInfo> {
        let cell = self.registry.get(id)?;
        let p = cell.read();
        Ok(PageInfo { id: p.id, len: p.len, epoch: p.epoch, location: p.location, meta: p.meta.clone() })
    }

    /// Ids of all pages, ascending.
    pub fn page_ids(&self) -> Vec<PageId> {
        self.registry.ids()
    }

    /// The page whose `name` metadata entry is `name` ([`PageSpec::named`]),
    /// the one with the lowest id when several share it; `None` when no
    /// page has it. Names are stored with the page, so this finds pages
    /// after a restart as before it.
    ///
    /// # Complexity
    /// A scan of every page's metadata.
    ///
    /// # Examples
    /// ```
    /// use mmsb::{Config, Mmsb, PageSpec};
    /// # fn main() -> mmsb::Result<()> {
    /// let dir = tempfile::tempdir()?;
    /// let state = Mmsb::start(Config::at(dir.path()))?;
    /// let p = state.create_page(PageSpec::new(8).named("positions"))?;
    /// state.stop()?;
    /// let state = Mmsb::start(Config::existing(dir.path()))?;
    /// assert_eq!(state.page_named("positions"), Some(p));
    /// assert_eq!(state.page_named("velocities"), None);
    /// # Ok(())
    /// # }
    /// ```
    pub fn page_named(&self, name: &str) -> Option<PageId> {
        self.registry.cells().into_iter().find(|(_, c)| c.read().name() == Some(name)).map(|(id, _)| id)
    }

    /// The state's LSN: that of the last record of the last commit (a
    /// batch's end marker), the number [`Mmsb::snapshot`], a replay of the
    /// directory to its end, `mmsb stats`, `mmsb inspect` and `mmsb verify`
    /// give for the same state. Replaying the directory to this LSN
    /// ([`crate::history::replay::replay_dir`]) gives this state. No page is copied.
    pub fn lsn(&self) -> Lsn {
        self.write.lock().log.last_lsn()
    }

    /// Wait until the log segments and checkpoints that the last
    /// [`Mmsb::checkpoint`] retired are gone for good: their storage
    /// released (a checkpoint removes their names before it returns and
    /// frees their blocks on another thread) and their removal durable
    /// (the log directory synced).
    ///
    /// # Errors
    /// [`Error::Io`] when the directory cannot be synced.
    pub fn wait_retired(&self) -> Result<()> {
        self.join_reaper();
        let dir = crate::storage::files::log_dir(self.dir());
        self.vfs.sync_dir(&dir).map_err(|e| Error::from(e).in_file(&dir))
    }

    /// Logical time: the number of changes accepted so far.
    pub fn timestamp(&self) -> u64 {
        self.write.lock().clock.timestamp
    }

    /// Allocator statistics.
    pub fn alloc_stats(&self) -> AllocStats {
        self.alloc.stats()
    }

    /// Run `f` on page `id` under its read lock (typed views read bytes
    /// and epoch together through this). A read: it answers after
    /// [`Mmsb::stop`] too.
    pub(crate) fn read_locked<R>(&self, id: PageId, f: impl FnOnce(&Page) -> Result<R>) -> Result<R> {
        let cell = self.registry.get(id)?;
        let page = cell.read();
        f(&page)
    }

    /// A snapshot of the state's counters: pages and bytes per location,
    /// allocator pools, deltas applied, propagation latencies, log and
    /// checkpoint figures (see [`crate::stats`]).
    pub fn stats(&self) -> crate::stats::Stats {
        let mut locations: Vec<(Location, crate::stats::PageCounts)> = Vec::new();
        for (_, cell) in self.registry.cells() {
            let (loc, len) = {
                let p = cell.read();
                (p.location, p.len)
            };
            let i = match locations.binary_search_by_key(&loc, |(l, _)| *l) {
                Ok(i) => i,
                Err(i) => {
                    locations.insert(i, (loc, Default::default()));
                    i
                }
            };
            locations[i].1.pages += 1;
            locations[i].1.bytes += len;
        }
        self.monitor.snapshot(locations, self.alloc.stats(), self.log_stats())
    }

    /// Publish [`Mmsb::stats`] through the `metrics` facade (see
    /// [`crate::stats::Stats::publish`]). Call it periodically, or before
    /// an exporter scrapes.
    #[cfg(feature = "metrics")]
    pub fn publish_metrics(&self) {
        self.stats().publish();
    }

    /// Check the registry invariants.
    ///
    /// # Errors
    /// [`Error::Invariant`] naming the first violation.
    pub fn verify(&self) -> Result<()> {
        let w = self.write.lock();
        self.registry.verify(PageId(w.clock.next_page))?;
        w.deps.graph.verify()
    }
}

/// The dependency graph as data, with function names resolved.
pub(super) fn graph_image(w: &WriteState) -> crate::storage::image::GraphImage {
    let f = &w.deps.functions;
    w.deps.graph.export(&|i| f.entries.get(i as usize).map(|e| e.name.to_string()).unwrap_or_default())
}

/// [`Error::InvalidPage`] naming both pages unless they have one length.
fn same_length(a: &Page, b: &Page) -> Result<()> {
    if a.len == b.len {
        return Ok(());
    }
    Err(Error::InvalidPage {
        reason: format!(
            "pages {} ({} bytes) and {} ({} bytes) differ in length: only pages of one length compare",
            a.id, a.len, b.id, b.len
        ),
    })
}

/// Run `f` (registered as `function`, deriving `page` of `len` bytes) once
/// on the current bytes of `parents`, discarding its output.
///
/// # Errors
/// [`Error::Recompute`] when it panics.
fn dry_run(
    f: &propagate::RecomputeFn,
    function: &str,
    page: PageId,
    len: usize,
    parents: &[PageHandle],
) -> Result<()> {
    let locks: Vec<_> = parents.iter().map(|h| h.1.read_recursive()).collect();
    // Pages on a device are read from copies.
    let copies: Vec<std::borrow::Cow<'_, [u8]>> =
        locks.iter().map(|g| g.storage.read()).collect::<Result<_>>()?;
    let inputs: Vec<&[u8]> = copies.iter().map(|c| &c[..]).collect();
    let mut out = vec![0u8; len];
    propagate::catch_quietly(|| f(&inputs, &mut out)).map_err(|p| Error::Recompute {
        page,
        function: function.to_owned(),
        reason: propagate::panic_message(p.as_ref()),
    })
}

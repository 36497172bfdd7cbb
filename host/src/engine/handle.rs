//! The public handle: [`Mmsb`].

use crate::alloc::{AllocStats, PageAllocator, DEFAULT_POOL_BUDGET};
use crate::delta::change::{Change, EdgeKind, Update};
use crate::delta::Payload;
use crate::engine::write::{Batch, Clock, Ctx, Small, WriteState};
use crate::events::{Event, EventBus, Subscription};
use crate::gpu::Storage;
use crate::graph::propagate::{self, Deps, PropagationMode, PropagationStats, Settings};
use crate::graph::PageHandle;
use crate::registry::{Page, Registry};
use crate::storage::checkpoint::{CheckpointInfo, CheckpointWriter};
use crate::storage::codec::page::PageImage;
use crate::storage::codec::Limits;
use crate::storage::image::StateImage;
use crate::storage::log::{Durability, LogStats, LogWriter};
use crate::storage::recovery::{RecoveryMode, RecoveryReport};
use crate::storage::vfs::{StdVfs, Vfs};
use crate::types::page::{Location, Metadata, PageSpec};
use crate::{Error, Result};
use parking_lot::{Mutex, RawRwLock};
use shared_types::{Epoch, Lsn, PageId};
use smallvec::SmallVec;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// How to start a state.
#[derive(Clone, Debug)]
pub struct Config {
    /// The state directory; `None` makes a fresh temporary one that is
    /// removed when the handle is dropped.
    pub dir: Option<PathBuf>,
    /// Open only an existing state: [`Mmsb::start`] refuses a `dir` that is
    /// missing or holds no MMSB log ([`Error::NotAState`]) instead of
    /// creating an empty state there ([`Config::existing`]).
    pub existing: bool,
    /// Byte budget of the page allocator's free lists (split over its
    /// eight shards). On Linux, with at least 2 MiB a shard, pages of 256
    /// KiB to 1 MiB are cut from 2 MiB huge-page chunks whose other blocks
    /// wait in the free lists; with less, each such page is mapped alone.
    pub pool_budget: u64,
    /// How durable a commit is when it returns.
    pub durability: Durability,
    /// What recovery does about corruption that is not a torn tail.
    pub recovery: RecoveryMode,
    /// Segment size at which the log starts a new segment file (at least
    /// [`MIN_SEGMENT_BYTES`]).
    pub segment_bytes: u64,
    /// Bounds the decoders enforce on persisted data.
    pub limits: Limits,
    /// The file system under the log and checkpoints (`None`: the real one).
    pub vfs: Option<Arc<dyn Vfs>>,
    /// When derived pages are recomputed.
    pub propagation: PropagationMode,
    /// Threads a propagation may use for one wide level (0: the number of
    /// available cores; at most [`MAX_PROPAGATION_THREADS`]).
    pub propagation_threads: usize,
    /// Bytes (outputs plus inputs) a level must involve before it is
    /// recomputed on several threads; thread start-up costs microseconds.
    pub parallel_min_bytes: u64,
    /// Capacity of each subscriber's event channel (at least 1); events
    /// beyond it are dropped for that subscriber and counted.
    pub event_capacity: usize,
    /// When deltas accepted for GPU pages are applied on the device (see
    /// [`crate::gpu::GpuApply`]).
    pub gpu_apply: crate::gpu::GpuApply,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            dir: None,
            existing: false,
            pool_budget: DEFAULT_POOL_BUDGET,
            durability: Durability::default(),
            recovery: RecoveryMode::default(),
            segment_bytes: crate::storage::log::DEFAULT_SEGMENT_BYTES,
            limits: Limits::default(),
            vfs: None,
            propagation: PropagationMode::Immediate,
            propagation_threads: 0,
            parallel_min_bytes: 256 << 10,
            event_capacity: 1 << 16,
            gpu_apply: crate::gpu::GpuApply::Immediate,
        }
    }
}

impl Config {
    /// The settings [`Mmsb::start`] refuses, as it refuses them.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first setting out of range.
    pub fn check(&self) -> Result<()> {
        if self.segment_bytes < MIN_SEGMENT_BYTES {
            return Err(Error::Config(format!(
                "segment_bytes {} is under the minimum of {MIN_SEGMENT_BYTES}",
                self.segment_bytes
            )));
        }
        if self.event_capacity == 0 {
            return Err(Error::Config("event_capacity must be at least 1".into()));
        }
        if self.propagation_threads > MAX_PROPAGATION_THREADS {
            return Err(Error::Config(format!(
                "propagation_threads {} is over the maximum of {MAX_PROPAGATION_THREADS} (0 means one per core)",
                self.propagation_threads
            )));
        }
        Ok(())
    }

    /// A configuration with a temporary state directory.
    pub fn temporary() -> Self {
        Self::default()
    }

    /// A configuration for the state directory `dir`: the state there is
    /// opened, or a new one is created when `dir` is missing or empty. A
    /// directory that holds other files but no MMSB log is refused
    /// ([`Error::NotAState`]), never adopted.
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: Some(dir.into()), ..Self::default() }
    }

    /// A configuration that opens the existing state in `dir` and never
    /// creates one: a mistyped path is an error ([`Error::NotAState`]), not
    /// a new empty state.
    ///
    /// # Examples
    /// ```
    /// use mmsb::{Config, Error, Mmsb};
    /// let dir = tempfile::tempdir().unwrap();
    /// let missing = dir.path().join("no-such-state");
    /// assert!(matches!(Mmsb::start(Config::existing(&missing)), Err(Error::NotAState { .. })));
    /// assert!(!missing.exists());
    /// ```
    pub fn existing(dir: impl Into<PathBuf>) -> Self {
        Self { dir: Some(dir.into()), existing: true, ..Self::default() }
    }

    /// Set the durability.
    #[must_use]
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }

    /// Set the recovery mode.
    #[must_use]
    pub fn recovery(mut self, m: RecoveryMode) -> Self {
        self.recovery = m;
        self
    }

    /// Use `vfs` for the log and checkpoints.
    #[must_use]
    pub fn vfs(mut self, vfs: Arc<dyn Vfs>) -> Self {
        self.vfs = Some(vfs);
        self
    }
    /// The same configuration with another GPU apply mode.
    #[must_use]
    pub fn with_gpu_apply(mut self, mode: crate::gpu::GpuApply) -> Self {
        self.gpu_apply = mode;
        self
    }

    /// The same configuration with another propagation mode.
    #[must_use]
    pub fn with_propagation(mut self, mode: PropagationMode) -> Self {
        self.propagation = mode;
        self
    }
}

/// Whether `dir` may be started as a state directory: with `existing`, it
/// must hold a log with a segment or a checkpoint; otherwise it may also be
/// missing or empty, but not hold other files without a log.
fn check_state_dir(vfs: &dyn Vfs, dir: &Path, existing: bool) -> Result<()> {
    let not_a_state = |reason: String| Error::NotAState { dir: dir.to_path_buf(), reason };
    let log_dir = crate::storage::files::log_dir(dir);
    match vfs.list(&log_dir) {
        Ok(names) => {
            let holds_state = names.iter().any(|n| {
                crate::storage::files::parse_segment_name(n).is_some()
                    || crate::storage::files::parse_checkpoint_name(n).is_some()
            });
            if existing && !holds_state {
                return Err(not_a_state("its log/ holds no log segment or checkpoint".into()));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match (existing, vfs.list(dir)) {
            (true, Ok(_)) => Err(not_a_state("it has no log/ directory".into())),
            (true, Err(_)) => Err(not_a_state("it does not exist".into())),
            (false, Ok(names)) if !names.is_empty() => Err(not_a_state(format!(
                "it holds other files ({}{}) and no log/; give an empty or new directory to create a state",
                names.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
                if names.len() > 3 { ", ..." } else { "" }
            ))),
            (false, _) => Ok(()),
        },
        Err(e) => Err(Error::from(e).in_file(&log_dir)),
    }
}

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

/// The smallest [`Config::segment_bytes`]: a segment's header and one
/// small record (a segment is started when a record would pass the size,
/// so smaller values only multiply files).
pub const MIN_SEGMENT_BYTES: u64 = 1024;

/// The most threads [`Config::propagation_threads`] may ask for.
pub const MAX_PROPAGATION_THREADS: usize = 1024;

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
}

impl PageRef {
    /// The page.
    pub fn page(&self) -> &Page {
        &self.guard
    }

    /// The bytes (the page is in host memory: [`Mmsb::read_page`] checked it).
    pub fn bytes(&self) -> &[u8] {
        match &self.guard.storage {
            Storage::Host(b) => b,
            // read_page only hands out guards on host pages.
            Storage::Device(_) | Storage::Unified(_) => &[],
        }
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

impl std::fmt::Debug for PageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageRef").field("id", &self.guard.id).field("epoch", &self.guard.epoch).finish()
    }
}

enum DirHolder {
    Temp(tempfile::TempDir),
    Given(PathBuf),
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
    dir: DirHolder,
    alloc: PageAllocator,
    registry: Registry,
    /// The write path: the commit lock, held by every change.
    write: Mutex<WriteState>,
    stopped: AtomicBool,
    vfs: Arc<dyn Vfs>,
    limits: Limits,
    report: RecoveryReport,
    events: EventBus,
    monitor: crate::stats::Monitor,
    /// Releases the storage of files a checkpoint made unnecessary (their
    /// names are already gone); joined by the next checkpoint, `stop` and drop.
    reaper: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The hold on the state directory ([`Vfs::lock_dir`]): released by
    /// `stop` and by drop, so that the directory can be started again.
    lock: Mutex<Option<crate::storage::vfs::DirLock>>,
}

impl Drop for Mmsb {
    fn drop(&mut self) {
        // A handle dropped without `stop` closes its log as `stop` does
        // (best effort: errors are dropped with it); a temporary state is
        // removed anyway.
        if !self.stopped.load(Ordering::Acquire) && matches!(self.dir, DirHolder::Given(_)) {
            let mut w = self.write.lock();
            if w.log.poisoned().is_none() {
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
    /// Start a state in `config.dir` (a temporary directory when `None`).
    /// An existing state is recovered: the newest valid checkpoint, then the
    /// log after it (see [`Mmsb::recovery_report`]).
    ///
    /// # Errors
    /// [`Error::Io`] when the directory cannot be created or read;
    /// [`Error::Corrupt`] when the stored state is corrupt (in
    /// [`RecoveryMode::Strict`]) or a logged change does not validate;
    /// [`Error::UnsupportedLocation`] for a stored page this build cannot hold;
    /// [`Error::InUse`] when another handle holds the directory;
    /// [`Error::Config`] for settings out of range (checked before the
    /// directory is touched): `segment_bytes` under
    /// [`MIN_SEGMENT_BYTES`], `event_capacity` 0, `propagation_threads`
    /// over [`MAX_PROPAGATION_THREADS`].
    pub fn start(config: Config) -> Result<Mmsb> {
        let _span = tracing::info_span!("mmsb.start").entered();
        config.check()?;
        let vfs: Arc<dyn Vfs> = config.vfs.clone().unwrap_or_else(|| Arc::new(StdVfs));
        let dir = match config.dir {
            Some(d) => {
                check_state_dir(vfs.as_ref(), &d, config.existing)?;
                if config.vfs.is_none() {
                    StdVfs.create_dir_all(&d).map_err(|e| Error::from(e).in_file(&d))?;
                }
                DirHolder::Given(d)
            }
            None => DirHolder::Temp(tempfile::Builder::new().prefix("mmsb-").tempdir().map_err(Error::from)?),
        };
        let threads = match config.propagation_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let state_dir = match &dir {
            DirHolder::Temp(t) => t.path().to_path_buf(),
            DirHolder::Given(p) => p.clone(),
        };
        let log_dir = crate::storage::files::log_dir(&state_dir);
        vfs.create_dir_all(&log_dir).map_err(|e| Error::from(e).in_file(&log_dir))?;
        // One writing handle per directory, held before anything is read or
        // removed (the temporaries below may be another handle's).
        let lock = vfs.lock_dir(&log_dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock => Error::InUse { dir: state_dir.clone() },
            _ => Error::from(e).in_file(&log_dir),
        })?;
        if let Ok(names) = vfs.list(&log_dir) {
            for n in names.iter().filter(|n| n.ends_with(".tmp")) {
                let _ = vfs.remove(&log_dir.join(n));
            }
        }
        let alloc = PageAllocator::new(config.pool_budget);
        let (mut image, mut report, resume) = {
            let _span = tracing::info_span!("mmsb.recovery", dir = %state_dir.display()).entered();
            crate::storage::recovery::recover_with(
                vfs.as_ref(),
                &state_dir,
                config.recovery,
                &config.limits,
                Some(&alloc),
            )?
        };
        if !report.dropped.is_empty() {
            crate::storage::recovery::set_aside_dropped(vfs.as_ref(), &log_dir, &mut report)?;
        }
        let registry = Registry::default();
        for (_, p) in std::mem::take(&mut image.pages) {
            // Pages come back to the location they were checkpointed at.
            let len = p.bytes.len() as u64;
            let storage = match p.location {
                Location::Cpu => Storage::Host(p.bytes.into_page_buf(&alloc)?),
                Location::Gpu(_) => Storage::Device(crate::gpu::page_from(p.location, &p.bytes)?),
                Location::Unified => Storage::Unified(crate::gpu::page_from(p.location, &p.bytes)?),
            };
            registry.insert(Page {
                id: p.id,
                len,
                epoch: p.epoch,
                location: p.location,
                meta: p.meta,
                storage,
            })?;
        }
        let log = LogWriter::resume(vfs.clone(), &log_dir, &resume, config.durability, config.segment_bytes)?;
        report.generation = log.generation();
        let state = Mmsb {
            dir,
            alloc,
            registry,
            write: Mutex::new(WriteState::new(
                Clock {
                    next_page: image.next_page,
                    next_delta: image.next_delta,
                    timestamp: image.timestamp,
                },
                log,
                config.propagation,
                Settings {
                    threads,
                    parallel_min_bytes: usize::try_from(config.parallel_min_bytes).unwrap_or(usize::MAX),
                },
                config.gpu_apply,
            )),
            stopped: AtomicBool::new(false),
            vfs,
            limits: config.limits,
            report,
            events: EventBus::new(config.event_capacity),
            monitor: crate::stats::Monitor::default(),
            reaper: Mutex::new(None),
            lock: Mutex::new(lock),
        };
        state.restore_graph(&image.graph)?;
        Ok(state)
    }

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

    /// Write a checkpoint of the whole state (writers wait meanwhile), then
    /// remove the log segments and older checkpoints it makes unnecessary.
    ///
    /// # Errors
    /// [`Error::Io`] or [`Error::Poisoned`]; a failed checkpoint leaves the
    /// previous one and the log intact.
    pub fn checkpoint(&self) -> Result<CheckpointInfo> {
        let _span = tracing::info_span!("mmsb.checkpoint").entered();
        let mut w = self.write.lock();
        self.join_reaper();
        self.live()?;
        // A poisoned log may have lost records the pages reflect: no checkpoint.
        if let Some(why) = w.log.poisoned() {
            return Err(Error::Poisoned(why.to_owned()));
        }
        let lsn = w.log.last_lsn().0;
        let dir = crate::storage::files::log_dir(self.dir());
        // Propagation work queued now is not in the checkpoint: a due record
        // names it, first in a new segment, durable before the checkpoint
        // is (a crash in between recovers from the older checkpoint, and
        // replays the due record too: it only queues work again). Pages
        // stale through control edges are named the same way, in a stale
        // record.
        let queued = w.deps.graph.has_pending();
        let stale = w.deps.graph.stale_pages();
        let due = queued || !stale.is_empty();
        if due {
            let g = &w.deps.graph;
            let pages = |nodes: &[u32]| {
                let mut v: Vec<PageId> = nodes.iter().map(|&n| g.slots[n as usize].page).collect();
                v.sort_unstable();
                v
            };
            let (written, forced) = (pages(&g.pending), pages(&g.forced));
            w.log.rotate()?;
            if queued {
                w.log.append_due(&written, &forced)?;
            }
            if !stale.is_empty() {
                w.log.append_stale(&stale)?;
            }
            w.log.sync()?;
        }
        let counters = StateImage {
            pages: Default::default(),
            next_page: w.clock.next_page,
            next_delta: w.clock.next_delta,
            timestamp: w.clock.timestamp,
            lsn,
            graph: graph_image(&w),
        };
        let cells = self.registry.cells();
        let generation = w.log.generation();
        let mut cw =
            CheckpointWriter::new(self.vfs.clone(), &dir, generation, &counters, cells.len() as u64)?;
        for (_, cell) in &cells {
            let p = cell.read();
            // GPU pages apply their queued deltas and come back through pinned memory.
            let bytes = match &p.storage {
                Storage::Host(b) => std::borrow::Cow::Borrowed(&b[..]),
                _ => std::borrow::Cow::Owned(p.copy_bytes()?),
            };
            cw.page(p.id, p.epoch, p.location, &p.meta, &bytes)?;
        }
        let (path, pages, bytes) = cw.finish()?;
        // The checkpoint is durable and covers every record so far: the log
        // moves to a new segment without syncing the old one. Older
        // checkpoints and the segments before the new one can go (a crash
        // midway, or before the removals reach the disk with the next
        // directory sync, leaves extras that recovery skips). Their names go
        // now; their blocks are freed on another thread.
        // With `due`, the log went on to a new segment already.
        let new_seq = if due { w.log.seq() } else { w.log.rotate_covered()? };
        let (mut removed_segments, mut removed_checkpoints) = (0, 0);
        let mut released = Vec::new();
        for (l, p) in crate::storage::checkpoint::list(self.vfs.as_ref(), &dir)? {
            if l < lsn {
                if let Ok(r) = self.vfs.remove_keep_open(&p) {
                    removed_checkpoints += 1;
                    released.extend(r);
                }
            }
        }
        if let Ok(names) = self.vfs.list(&dir) {
            for n in names {
                if crate::storage::files::parse_segment_name(&n).is_some_and(|s| s < new_seq) {
                    if let Ok(r) = self.vfs.remove_keep_open(&dir.join(&n)) {
                        removed_segments += 1;
                        released.extend(r);
                    }
                }
            }
        }
        if !released.is_empty() {
            self.join_reaper();
            // Without a thread the files are released here, as before.
            let handle =
                std::thread::Builder::new().name("mmsb-release".into()).spawn(move || drop(released));
            *self.reaper.lock() = handle.ok();
        }
        self.monitor.checkpointed();
        if self.events.active() {
            self.events.send(Event::CheckpointWritten { lsn: shared_types::Lsn(lsn) });
        }
        Ok(CheckpointInfo {
            lsn: shared_types::Lsn(lsn),
            path,
            pages,
            bytes,
            generation,
            removed_segments,
            removed_checkpoints,
        })
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
        let mut copies = Vec::new();
        for g in &guards {
            if g.bytes().is_err() {
                copies.push((g.id, g.copy_bytes()?));
            }
        }
        Ok(crate::storage::image::hash_pages(guards.iter().map(|g| {
            let bytes = match g.bytes() {
                Ok(b) => b,
                Err(_) => copies.iter().find(|(id, _)| *id == g.id).map_or(&[][..], |(_, b)| &b[..]),
            };
            (g.id, g.epoch, bytes)
        })))
    }

    /// The decoder bounds in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Stop the state: the log is synced and closed (the last segment
    /// holding records is followed by an empty one that names the next
    /// LSN, so that any later cut of the log reads as missing records; see
    /// docs/RELIABILITY.md) and the state directory released (another
    /// handle may start on it). Dropping a handle without stopping it does
    /// the same, ignoring errors. Every later call that would change the
    /// state or write to its directory (updates, page creation and
    /// deletion, derivations, functions, propagation, checkpoints, `sync`)
    /// returns [`Error::Stopped`]; reads of what is in memory (pages, their
    /// info, the state hash, a snapshot, comparisons) keep answering until
    /// the handle is dropped.
    ///
    /// # Errors
    /// [`Error::Stopped`] when already stopped.
    pub fn stop(&self) -> Result<()> {
        self.join_reaper();
        let mut w = self.write.lock();
        if self.stopped.swap(true, Ordering::SeqCst) {
            return Err(Error::Stopped);
        }
        let closed = w.log.close().map(drop);
        // Every later call is refused, so the directory is free for another
        // handle from here on.
        self.lock.lock().take();
        closed
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        match &self.dir {
            DirHolder::Temp(t) => t.path(),
            DirHolder::Given(p) => p,
        }
    }

    /// Wait until the files removed by the last checkpoint are released.
    fn join_reaper(&self) {
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
            Ok(f) => f,
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
    fn restore_graph(&self, g: &crate::storage::image::GraphImage) -> Result<()> {
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
        let mut w = self.write.lock();
        self.live()?;
        let w = &mut *w;
        w.deps.functions.check_register(name, version)?;
        let fi = w.deps.functions.set(name, version, Arc::new(f));
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
    /// on it; [`Error::Recompute`] when the function panics. Nothing changes
    /// on error.
    pub fn declare_derived(&self, page: PageId, function: &str, parents: &[PageId]) -> Result<()> {
        let mut w = self.write.lock();
        self.live()?;
        let w = &mut *w;
        let (fi, version) = w.deps.functions.current(function)?;
        let (_, cell, len) = self.handle(page)?;
        let handles: Vec<PageHandle> = parents.iter().map(|&p| self.handle(p)).collect::<Result<_>>()?;
        w.deps.graph.check_declare(page, parents)?;
        // Dry run, so that a function that panics is refused up front.
        if let Some(f) = &w.deps.functions.entries[fi as usize].f {
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
        page.storage = match to {
            Location::Cpu => Storage::Host(self.alloc.alloc_copy(&bytes)?),
            Location::Gpu(_) => Storage::Device(crate::gpu::page_from(to, &bytes)?),
            Location::Unified => Storage::Unified(crate::gpu::page_from(to, &bytes)?),
        };
        page.location = to;
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
        Ok(PageRef { guard })
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
fn graph_image(w: &WriteState) -> crate::storage::image::GraphImage {
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
    let inputs: Vec<&[u8]> = locks.iter().map(|g| g.bytes()).collect::<Result<_>>()?;
    let mut out = vec![0u8; len];
    propagate::catch_quietly(|| f(&inputs, &mut out)).map_err(|p| Error::Recompute {
        page,
        function: function.to_owned(),
        reason: propagate::panic_message(p.as_ref()),
    })
}

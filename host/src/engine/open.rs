//! Opening a state: [`Config`] and [`Mmsb::start`] (the directory checked
//! and locked, the state recovered, each page placed at its location, the
//! dependency graph rebuilt).

use super::handle::Mmsb;
use super::write::{Clock, WriteState};
use crate::alloc::{PageAllocator, DEFAULT_POOL_BUDGET};
use crate::events::EventBus;
use crate::gpu::Storage;
use crate::graph::propagate::{PropagationMode, Settings};
use crate::registry::{Page, Registry};
use crate::storage::codec::Limits;
use crate::storage::log::{Durability, LogWriter};
use crate::storage::recovery::RecoveryMode;
use crate::storage::vfs::{StdVfs, Vfs};
use crate::{Error, Result};
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
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
    /// Increments a checkpoint chain may hold before the next checkpoint is
    /// full again (0: every checkpoint is full; at most 64). See [`Mmsb::checkpoint`].
    pub checkpoint_chain: u32,
    /// A clean [`Mmsb::stop`] (or drop) of a state directory (not a
    /// temporary one, which no start reopens) writes a checkpoint when the log
    /// a start would replay (written since the last checkpoint, or replayed
    /// by this start and not covered since) holds at least this many bytes
    /// and at least as many as the checkpoint would write (an increment
    /// when the chain allows one), so that the next start reads the
    /// checkpoint instead of replaying the log. That checkpoint removes
    /// nothing: the log and the older checkpoints stay, and replay to any
    /// earlier LSN works as before (the next [`Mmsb::checkpoint`] retires
    /// them as usual). `u64::MAX`: never. Default
    /// [`DEFAULT_STOP_CHECKPOINT_BYTES`].
    pub stop_checkpoint_bytes: u64,
    /// Where each commit's framed records go before it is acknowledged
    /// (a replicated log; see [`crate::CommitSink`]). `None`: the local
    /// log alone.
    pub commit_sink: Option<Arc<dyn crate::CommitSink>>,
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
            checkpoint_chain: DEFAULT_CHECKPOINT_CHAIN,
            stop_checkpoint_bytes: DEFAULT_STOP_CHECKPOINT_BYTES,
            commit_sink: None,
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

    /// Hand each commit to `sink` before it is acknowledged.
    #[must_use]
    pub fn commit_sink(mut self, sink: Arc<dyn crate::CommitSink>) -> Self {
        self.commit_sink = Some(sink);
        self
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

    /// The same configuration with chains of at most `n` increments (0:
    /// full checkpoints only).
    #[must_use]
    pub fn checkpoint_chain(mut self, n: u32) -> Self {
        self.checkpoint_chain = n;
        self
    }

    /// The same configuration with a clean stop writing a checkpoint from
    /// `bytes` of log to replay ([`Config::stop_checkpoint_bytes`];
    /// `u64::MAX`: never).
    #[must_use]
    pub fn stop_checkpoint_bytes(mut self, bytes: u64) -> Self {
        self.stop_checkpoint_bytes = bytes;
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

/// The smallest [`Config::segment_bytes`]: a segment's header and one
/// small record (a segment is started when a record would pass the size,
/// so smaller values only multiply files).
pub const MIN_SEGMENT_BYTES: u64 = 1024;

/// Increments a checkpoint chain holds by default ([`Config::checkpoint_chain`]).
pub const DEFAULT_CHECKPOINT_CHAIN: u32 = 8;

/// The log a start would replay, in bytes, from which a clean stop writes a
/// checkpoint by default ([`Config::stop_checkpoint_bytes`]): about 25 ms
/// of replay on the build machine (docs/BENCHMARKS.md, the reopen rows).
pub const DEFAULT_STOP_CHECKPOINT_BYTES: u64 = 8 << 20;

/// The most threads [`Config::propagation_threads`] may ask for.
pub const MAX_PROPAGATION_THREADS: usize = 1024;

/// The state directory: a temporary one (removed with the handle) or the
/// caller's.
pub(super) enum DirHolder {
    Temp(tempfile::TempDir),
    Given(PathBuf),
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
            let storage = Storage::restored(p.location, p.bytes, &alloc)?;
            // Pages the log changed after the checkpoint go whole into the
            // next increment (blocks are tracked from here on).
            let changed = parking_lot::Mutex::new(if resume.changed.binary_search(&p.id).is_ok() {
                crate::registry::Changed::whole()
            } else {
                crate::registry::Changed::default()
            });
            registry.insert(Page {
                id: p.id,
                len,
                epoch: p.epoch,
                location: p.location,
                meta: p.meta,
                storage,
                changed,
            })?;
        }
        let mut log =
            LogWriter::resume(vfs.clone(), &log_dir, &resume, config.durability, config.segment_bytes)?;
        log.set_sink(config.commit_sink.clone());
        let resume_chain = resume.chain;
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
                super::write::Checkpoints {
                    chain: resume_chain,
                    max_chain: config.checkpoint_chain.min(crate::storage::checkpoint::MAX_CHAIN),
                    at_stop: config.stop_checkpoint_bytes,
                    log_before: report.log_bytes_replayed,
                    log_mark: 0,
                },
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
}

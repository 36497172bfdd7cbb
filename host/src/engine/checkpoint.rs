//! Checkpoints of a running state: [`Mmsb::checkpoint`] writes one under
//! the commit lock, then retires the log segments and older checkpoints it
//! covers (their names at once, their storage on a reaper thread).

use super::handle::{graph_image, Mmsb};
use super::write::WriteState;
use crate::events::Event;
use crate::storage::checkpoint::{Chain, CheckpointInfo, CheckpointKind, CheckpointWriter, Link};
use crate::storage::image::StateImage;
use crate::{Error, PageId, Result};

impl Mmsb {
    /// Write a checkpoint (writers wait meanwhile): of the whole state, or,
    /// when the last checkpoint's chain allows it, an increment on the last
    /// checkpoint holding only what changed since (the changed blocks of
    /// [`crate::CHANGE_BLOCK`] bytes of its pages, pages created whole, the
    /// ids of pages deleted). A chain holds at most
    /// [`Config::checkpoint_chain`](crate::Config::checkpoint_chain)
    /// increments, and a checkpoint is full again when the chain's
    /// increments would hold as many bytes as its full checkpoint.
    ///
    /// A full checkpoint then removes the log segments and older
    /// checkpoints it makes unnecessary; an increment removes nothing (its
    /// chain, the log since the chain's full checkpoint and any older
    /// checkpoint stay), so a replay may start from any checkpoint kept and
    /// a damaged increment is bridged by the log. A checkpoint written by
    /// a clean stop ([`Config::stop_checkpoint_bytes`](crate::Config::stop_checkpoint_bytes))
    /// removes nothing either.
    ///
    /// # Errors
    /// [`Error::Io`] or [`Error::Poisoned`]; a failed checkpoint leaves the
    /// previous one and the log intact.
    pub fn checkpoint(&self) -> Result<CheckpointInfo> {
        self.checkpoint_as(false)
    }

    /// Write a full checkpoint whatever the chain (then remove what it makes
    /// unnecessary, as [`Mmsb::checkpoint`] does after a full one): for a
    /// state copied or archived as one file, or a chain started afresh.
    ///
    /// # Errors
    /// As [`Mmsb::checkpoint`].
    pub fn checkpoint_full(&self) -> Result<CheckpointInfo> {
        self.checkpoint_as(true)
    }

    fn checkpoint_as(&self, full: bool) -> Result<CheckpointInfo> {
        let _span = tracing::info_span!("mmsb.checkpoint").entered();
        let mut w = self.write.lock();
        self.join_reaper();
        self.live()?;
        self.checkpoint_locked(&mut w, full.then_some(Plan::Full), true)
    }

    /// The checkpoint a clean stop writes (see
    /// [`Config::stop_checkpoint_bytes`](crate::Config::stop_checkpoint_bytes)):
    /// `None` when the log a start would replay is shorter than the
    /// setting or than the checkpoint, or the log is poisoned. It retires
    /// nothing.
    pub(super) fn checkpoint_at_stop(&self, w: &mut WriteState) -> Result<Option<CheckpointInfo>> {
        if w.log.poisoned().is_some() {
            return Ok(None);
        }
        let since = w.checkpoints.log_since(w.log.stats().bytes);
        if since < w.checkpoints.at_stop {
            return Ok(None);
        }
        let cells = self.registry.cells();
        let (plan, bytes) =
            plan(w.checkpoints.chain.as_ref(), w.checkpoints.max_chain, w.log.last_lsn().0, &cells);
        if bytes > since {
            return Ok(None);
        }
        let _span = tracing::info_span!("mmsb.checkpoint", at_stop = true).entered();
        self.join_reaper();
        self.checkpoint_locked(w, Some(plan), false).map(Some)
    }

    /// Write a checkpoint under the commit lock `w`: the one `plan` says,
    /// or the one [`plan`] chooses when `None`; a full one retires what it
    /// covers when `retire`.
    fn checkpoint_locked(
        &self,
        w: &mut WriteState,
        plan: Option<Plan>,
        retire: bool,
    ) -> Result<CheckpointInfo> {
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
            graph: graph_image(w),
        };
        let cells = self.registry.cells();
        let generation = w.log.generation();
        let chain = w.checkpoints.chain.take();
        let plan = match plan {
            Some(p) => p,
            None => self::plan(chain.as_ref(), w.checkpoints.max_chain, lsn, &cells).0,
        };
        let written = self.write_checkpoint(&dir, generation, &counters, &cells, &plan);
        let (path, pages, bytes, fingerprint) = match written {
            Ok(r) => r,
            Err(e) => {
                // The chain on disk is as it was.
                w.checkpoints.chain = chain;
                return Err(e);
            }
        };
        // Every change is in a checkpoint now.
        let mut ids = Vec::with_capacity(cells.len());
        for (id, cell) in &cells {
            cell.read().changed.lock().clear();
            ids.push(*id);
        }
        let (kind, mut next) = match (&plan, chain) {
            (Plan::Increment { base, .. }, Some(mut c)) => {
                c.head = Link { lsn, fingerprint, depth: base.depth + 1 };
                c.files.push((lsn, path.clone(), bytes));
                (CheckpointKind::Increment { base: shared_types::Lsn(base.lsn), depth: base.depth + 1 }, c)
            }
            _ => (
                CheckpointKind::Full,
                Chain {
                    head: Link { lsn, fingerprint, depth: 0 },
                    files: vec![(lsn, path.clone(), bytes)],
                    pages: Vec::new(),
                },
            ),
        };
        next.pages = ids;
        w.checkpoints.chain = Some(next);
        // The checkpoint is durable and covers every record so far: the log
        // moves to a new segment without syncing the old one. A full
        // checkpoint retires older checkpoints and the segments before the
        // new one; an increment keeps its chain and the log since the
        // chain's full checkpoint (a crash midway, or before the removals
        // reach the disk with the next directory sync, leaves extras that
        // recovery skips). Their names go now; their blocks are freed on
        // another thread.
        // With `due`, the log went on to a new segment already.
        let new_seq = if due { w.log.seq() } else { w.log.rotate_covered()? };
        // The log a start would replay begins here now.
        w.checkpoints.log_before = 0;
        w.checkpoints.log_mark = w.log.stats().bytes;
        // Only a full checkpoint retires: an increment keeps its chain and
        // the log since the chain's full checkpoint, and whatever older
        // checkpoint that log may need (a full checkpoint written by a stop
        // retires nothing, so the log before it can still be replayed from
        // the checkpoint before it).
        let retired = if retire && matches!(kind, CheckpointKind::Full) {
            crate::storage::checkpoint::retire(self.vfs.as_ref(), &dir, lsn, new_seq)?
        } else {
            crate::storage::checkpoint::Retired::default()
        };
        let (removed_segments, removed_checkpoints, released) =
            (retired.segments, retired.checkpoints, retired.released);
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
            kind,
        })
    }

    /// Write the checkpoint `plan` says, of `cells` (ids ascending).
    fn write_checkpoint(
        &self,
        dir: &std::path::Path,
        generation: u64,
        counters: &StateImage,
        cells: &[(PageId, crate::registry::PageCell)],
        plan: &Plan,
    ) -> Result<(std::path::PathBuf, u64, u64, u64)> {
        let vfs = self.vfs.clone();
        let mut cw = match plan {
            Plan::Full => CheckpointWriter::new(vfs, dir, generation, counters, cells.len() as u64)?,
            Plan::Increment { base, deleted, entries } => {
                CheckpointWriter::new_increment(vfs, dir, generation, counters, *base, deleted, *entries)?
            }
        };
        let full = matches!(plan, Plan::Full);
        // The changed blocks of GPU pages, gathered on their device a
        // window of pages at a time: only those bytes cross the bus.
        let mut gathered: std::collections::HashMap<PageId, Gathered> = Default::default();
        for (k, (id, cell)) in cells.iter().enumerate() {
            let mut p = cell.read();
            if !full && p.changed.lock().is_clean() {
                continue;
            }
            if !full && !p.changed.lock().is_whole() && p.storage.gpu().is_some() {
                if !gathered.contains_key(id) {
                    drop(p);
                    gathered = gather_window(&cells[k..])?;
                    p = cell.read();
                }
                let (packed, runs) = gathered
                    .remove(id)
                    .ok_or_else(|| crate::Error::Invariant(format!("page {id} was not gathered")))?;
                let len = usize::try_from(p.len).map_err(|_| crate::Error::InvalidPage {
                    reason: "page exceeds the address space".into(),
                })?;
                let ranges = usize_ranges(&runs);
                cw.patch_packed(p.id, p.epoch, p.location, &p.meta, len, &ranges, &packed)?;
                continue;
            }
            // GPU pages apply their queued deltas and come back through
            // pinned memory.
            let bytes = p.storage.read()?;
            if full || p.changed.lock().is_whole() {
                cw.page(p.id, p.epoch, p.location, &p.meta, &bytes)?;
            } else {
                cw.patch(
                    p.id,
                    p.epoch,
                    p.location,
                    &p.meta,
                    &bytes,
                    &usize_ranges(&p.changed.lock().runs(p.len)),
                )?;
            }
        }
        cw.finish()
    }
}

impl super::write::Checkpoints {
    /// The log bytes a start would replay now, given the writer's appended
    /// bytes so far.
    pub(crate) fn log_since(&self, appended: u64) -> u64 {
        self.log_before.saturating_add(appended.saturating_sub(self.log_mark))
    }
}

/// Byte ranges of a page in memory as `usize` (a page in memory fits the
/// address space).
fn usize_ranges(r: &[std::ops::Range<u64>]) -> Vec<std::ops::Range<usize>> {
    r.iter().map(|x| x.start as usize..x.end as usize).collect()
}

/// A GPU page's changed bytes, packed, and the byte ranges they came from.
type Gathered = (Vec<u8>, Vec<std::ops::Range<u64>>);

/// Changed bytes gathered from the device per launch (at most; a page's
/// blocks are never split).
const GATHER_WINDOW: u64 = 64 << 20;

/// Gather the changed blocks of the GPU pages at the front of `cells` that
/// an increment patches: the first such page and the following ones on the
/// same device, up to [`GATHER_WINDOW`] changed bytes.
fn gather_window(
    cells: &[(PageId, crate::registry::PageCell)],
) -> Result<std::collections::HashMap<PageId, Gathered>> {
    type Held<'c> =
        (PageId, parking_lot::RwLockReadGuard<'c, crate::registry::Page>, Vec<std::ops::Range<u64>>);
    let mut guards: Vec<Held<'_>> = Vec::new();
    let mut bytes = 0u64;
    for (id, cell) in cells {
        if bytes >= GATHER_WINDOW {
            break;
        }
        let p = cell.read();
        let Some(g) = p.storage.gpu() else { continue };
        if p.changed.lock().is_clean() || p.changed.lock().is_whole() {
            continue;
        }
        let same = guards
            .first()
            .is_none_or(|(_, q, _)| q.storage.gpu().is_some_and(|f| crate::gpu::same_device(f, g)));
        if !same {
            continue;
        }
        bytes += p.changed.lock().bytes(p.len);
        let runs = p.changed.lock().runs(p.len);
        guards.push((*id, p, runs));
    }
    let parts: Vec<(&crate::gpu::GpuPage, &[std::ops::Range<u64>])> =
        guards.iter().filter_map(|(_, p, runs)| p.storage.gpu().map(|g| (g, &runs[..]))).collect();
    let packed = crate::gpu::gather(&parts)?;
    Ok(guards.into_iter().zip(packed).map(|((id, _, runs), bytes)| (id, (bytes, runs))).collect())
}

/// What the next checkpoint is.
enum Plan {
    /// Every page, whole.
    Full,
    /// The changes since `base`: `deleted` pages, `entries` pages.
    Increment { base: Link, deleted: Vec<PageId>, entries: u64 },
}

/// An increment on `chain` when there is one at an earlier LSN, it is
/// shorter than `max_chain`, and the chain's increments with this one would
/// still hold fewer bytes than its full checkpoint (restoring it would cost
/// more than a full checkpoint otherwise); else a full checkpoint.
/// With it, about the bytes that checkpoint writes.
fn plan(
    chain: Option<&Chain>,
    max_chain: u32,
    lsn: u64,
    cells: &[(PageId, crate::registry::PageCell)],
) -> (Plan, u64) {
    // A full checkpoint: its header and trailer, then each entry's head
    // and the page.
    let full = || cells.iter().fold(128u64, |n, (_, cell)| n.saturating_add(80 + cell.read().len));
    let Some(c) = chain.filter(|c| c.head.lsn < lsn && c.head.depth < max_chain) else {
        return (Plan::Full, full());
    };
    // The file's own bytes (header, increment section, trailer), then each
    // entry's head and data.
    let mut bytes = 128u64 + 8 * c.pages.len().saturating_sub(cells.len()) as u64;
    let mut entries = 0u64;
    for (_, cell) in cells {
        let p = cell.read();
        if !p.changed.lock().is_clean() {
            entries += 1;
            bytes += 80 + p.changed.lock().bytes(p.len);
        }
    }
    if bytes.saturating_add(c.increment_bytes()) >= c.full_bytes() {
        return (Plan::Full, full());
    }
    // The base's pages that are gone (ids are never reused).
    let mut deleted = Vec::new();
    let mut live = cells.iter().map(|(id, _)| *id).peekable();
    for id in &c.pages {
        while live.next_if(|l| l < id).is_some() {}
        if live.peek() != Some(id) {
            deleted.push(*id);
        }
    }
    (Plan::Increment { base: c.head, deleted, entries }, bytes)
}

//! Checkpoints of a running state: [`Mmsb::checkpoint`] writes one under
//! the commit lock, then retires the log segments and older checkpoints it
//! covers (their names at once, their storage on a reaper thread).

use super::handle::{graph_image, Mmsb};
use crate::events::Event;
use crate::storage::checkpoint::{CheckpointInfo, CheckpointWriter};
use crate::storage::image::StateImage;
use crate::{Error, PageId, Result};

impl Mmsb {
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
            let bytes = p.storage.read()?;
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
        let retired = crate::storage::checkpoint::retire(self.vfs.as_ref(), &dir, lsn, new_seq)?;
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
        })
    }
}

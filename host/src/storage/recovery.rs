//! Recovery: newest valid checkpoint, then every committed unit of the log
//! after its LSN, each re-validated before it is applied.
//!
//! A torn tail (the last bytes of the last segment do not form complete,
//! valid records and no valid record follows them, or a batch was left
//! open: all a crash can leave, see the crash model in
//! docs/RELIABILITY.md) is cut and reported. Anything else is corruption:
//! an error in [`RecoveryMode::Strict`]; in [`RecoveryMode::Tolerant`] the
//! longest valid prefix is kept, what was dropped is reported, and files
//! dropped whole are set aside. Nothing corrupt is ever applied.

use super::log::reader;
pub use super::log::{Continued, Dropped, RecoveryMode, Resume, TornTail};
use crate::alloc::PageAllocator;
use crate::storage::codec::Limits;
use crate::storage::files::{log_dir, SET_ASIDE_SUFFIX};
use crate::storage::image::StateImage;
use crate::storage::vfs::Vfs;
use crate::{Error, Result};
use shared_types::{Lsn, PageId};
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

/// Make what tolerant recovery dropped stay dropped: every file it dropped
/// whole is renamed `<name>.dropped`, then the directory synced. (A file
/// dropped from an offset on is cut by the new generation the writer
/// starts next, which then follows it directly.)
///
/// # Errors
/// [`crate::Error::Io`] when a rename or the directory sync fails.
pub(crate) fn set_aside_dropped(vfs: &dyn Vfs, log_dir: &Path, report: &mut RecoveryReport) -> Result<()> {
    let mut moved = false;
    for d in report.dropped.iter_mut().filter(|d| d.offset == 0) {
        let mut name = d.file.clone().into_os_string();
        name.push(SET_ASIDE_SUFFIX);
        let to = PathBuf::from(name);
        vfs.rename(&d.file, &to).map_err(|e| crate::Error::from(e).in_file(&d.file))?;
        d.set_aside = Some(to);
        moved = true;
    }
    if moved {
        vfs.sync_dir(log_dir).map_err(|e| crate::Error::from(e).in_file(log_dir))?;
    }
    Ok(())
}

/// Propagation work a recovered state still owes: what the live graph had
/// queued when the log ends (a write of a parent whose propagation did not
/// reach the log, in deferred mode or because of a crash; a derivation
/// declared but not yet computed). Conservative: it may name work that a
/// propagation did and found nothing to change (recomputing it again
/// changes nothing either).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// Pages written since the last propagation: their data children are due.
    pub written: BTreeSet<PageId>,
    /// Derived pages queued for recomputation.
    pub forced: BTreeSet<PageId>,
    /// Pages a control parent's write left stale and that were not written
    /// since (no work is owed for them: they read as stale again, as they
    /// did before the restart, until they are written).
    pub stale: BTreeSet<PageId>,
}

impl Due {
    /// Whether no propagation work is owed ([`Due::stale`] is not work).
    pub fn is_empty(&self) -> bool {
        self.written.is_empty() && self.forced.is_empty()
    }

    /// Before a committed unit is applied to a state whose graph is
    /// `graph`: follow the staleness control edges give, as the live graph
    /// does. A delta makes its page fresh and the page's control children
    /// stale, in record order; a deleted page is forgotten; a stale record
    /// names pages stale at a checkpoint; a propagation leaves the derived
    /// pages queued for it fresh (they were recomputed, whether or not
    /// their bytes changed). Call before [`Due::note`], which settles the
    /// queued work.
    pub(crate) fn note_stale(
        &mut self,
        graph: &crate::storage::image::GraphImage,
        commit: reader::Commit<'_, '_>,
    ) {
        use reader::Record;
        let mut propagated = false;
        for (_, r) in commit {
            match r {
                Record::Delta(v) => {
                    propagated |= v.source == 1;
                    self.stale.remove(&v.page);
                    self.stale.extend(graph.children(v.page, crate::delta::change::EdgeKind::Control));
                }
                Record::Settled => propagated = true,
                Record::Delete { id } => {
                    self.stale.remove(id);
                }
                Record::Stale(pages) => self.stale.extend(pages),
                _ => {}
            }
        }
        if propagated && !self.stale.is_empty() {
            for f in &self.forced {
                self.stale.remove(f);
            }
        }
    }

    /// Account for a committed unit of the log, replayed onto a state whose
    /// dependency graph is empty when `no_graph`: a propagation's deltas,
    /// or its settled record when it changed nothing, settle everything
    /// queued before them (a propagation covers all queued work); a write
    /// queues its page's children; a declaration queues its page; a due
    /// record queues what it names.
    pub fn note(&mut self, no_graph: bool, commit: reader::Commit<'_, '_>) {
        use reader::Record;
        let mut propagated = false;
        for (_, r) in commit {
            match r {
                Record::Delta(v) if v.source == 1 => propagated = true,
                Record::Settled => propagated = true,
                Record::Delta(v) if !no_graph => {
                    self.written.insert(v.page);
                }
                Record::Graph(
                    crate::Change::DeclareDerived { page, .. }
                    | crate::Change::AddEdge { to: page, kind: crate::delta::change::EdgeKind::Data, .. },
                ) => {
                    self.forced.insert(*page);
                }
                Record::Delete { id } => {
                    self.written.remove(id);
                    self.forced.remove(id);
                }
                Record::Due { written, forced } => {
                    self.written.extend(written);
                    self.forced.extend(forced);
                }
                _ => {}
            }
        }
        if propagated {
            self.written.clear();
            self.forced.clear();
        }
    }

    /// Before a committed unit is applied to a state whose graph is
    /// `graph`: the derived pages that read a page it deletes as a data
    /// parent are queued (they are recomputed from the parents they keep).
    pub(crate) fn note_deletions(
        &mut self,
        graph: &crate::storage::image::GraphImage,
        commit: reader::Commit<'_, '_>,
    ) {
        for (_, r) in commit {
            if let reader::Record::Delete { id } = r {
                self.forced.extend(graph.children(*id, crate::delta::change::EdgeKind::Data));
            }
        }
    }
}

/// What [`crate::Mmsb::start`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The checkpoint recovery started from.
    pub checkpoint: Option<(Lsn, PathBuf)>,
    /// Newer checkpoints that failed verification (and were skipped).
    pub invalid_checkpoints: Vec<(PathBuf, String)>,
    /// Segments read.
    pub segments: usize,
    /// Committed units replayed from the log.
    pub commits_replayed: u64,
    /// Changes replayed from the log.
    pub changes_replayed: u64,
    /// Bytes of the log segments that held the replayed records (what a
    /// start read beyond its checkpoint; a clean stop uses it to decide
    /// whether to write a checkpoint, see [`crate::Config::stop_checkpoint_bytes`]).
    pub log_bytes_replayed: u64,
    /// LSN of the last record reflected in the recovered state.
    pub last_lsn: Lsn,
    /// The torn tail cut, if any.
    pub torn_tail: Option<TornTail>,
    /// What tolerant recovery dropped.
    pub dropped: Vec<Dropped>,
    /// Generation of the segments written from now on.
    pub generation: u64,
    /// Propagation work the recovered state owes (queued again at start).
    pub due: Due,
}

impl RecoveryReport {
    /// Whether recovery found everything intact (no torn tail, nothing
    /// dropped, no invalid checkpoint).
    pub fn is_clean(&self) -> bool {
        self.torn_tail.is_none() && self.dropped.is_empty() && self.invalid_checkpoints.is_empty()
    }
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.checkpoint {
            Some((lsn, p)) => writeln!(f, "checkpoint: LSN {lsn} ({})", p.display())?,
            None => writeln!(f, "checkpoint: none")?,
        }
        for (p, e) in &self.invalid_checkpoints {
            writeln!(f, "skipped invalid checkpoint {}: {e}", p.display())?;
        }
        writeln!(
            f,
            "log: {} segments, {} commits / {} changes replayed ({} bytes of log), last LSN {}",
            self.segments,
            self.commits_replayed,
            self.changes_replayed,
            self.log_bytes_replayed,
            self.last_lsn
        )?;
        if !self.due.is_empty() {
            writeln!(
                f,
                "queued propagation: children of {} written pages, {} derived pages",
                self.due.written.len(),
                self.due.forced.len()
            )?;
        }
        if !self.due.stale.is_empty() {
            writeln!(f, "stale through control edges: {} pages", self.due.stale.len())?;
        }
        if let Some(t) = &self.torn_tail {
            writeln!(f, "torn tail cut: {} bytes at offset {} of {}", t.bytes, t.offset, t.file.display())?;
        }
        for d in &self.dropped {
            writeln!(
                f,
                "dropped {} bytes at offset {} of {}: {}",
                d.bytes,
                d.offset,
                d.file.display(),
                d.reason
            )?;
            if let Some(to) = &d.set_aside {
                writeln!(f, "  set aside as {}", to.display())?;
            }
        }
        write!(f, "generation: {}", self.generation)
    }
}

/// Recover the state stored in `state_dir`.
///
/// # Errors
/// [`crate::Error::Corrupt`] (strict mode, or a gap no mode can bridge;
/// when the gap is the log a checkpoint retired and that checkpoint does
/// not verify, the error names the checkpoint's file and fault),
/// [`crate::Error::Io`], or the typed error of a logged change that does not
/// validate (strict mode).
pub fn recover(
    vfs: &dyn Vfs,
    state_dir: &Path,
    mode: RecoveryMode,
    limits: &Limits,
) -> Result<(StateImage, RecoveryReport, Resume)> {
    recover_with(vfs, state_dir, mode, limits, None)
}

/// [`recover`], with the checkpoint's page bytes read straight into buffers
/// of `alloc` when given.
///
/// # Errors
/// As [`recover`].
pub fn recover_with(
    vfs: &dyn Vfs,
    state_dir: &Path,
    mode: RecoveryMode,
    limits: &Limits,
    alloc: Option<&PageAllocator>,
) -> Result<(StateImage, RecoveryReport, Resume)> {
    let dir = log_dir(state_dir);
    let (ckpt, invalid) = crate::storage::checkpoint::newest_valid_with(vfs, &dir, limits, None, alloc)?;
    let after = ckpt.as_ref().map_or(0, |(_, img, _)| img.lsn);
    if !invalid.is_empty() {
        // A checkpoint that does not verify may be the one that covered
        // the log records its writing retired: name it, rather than the
        // gap the log reader would find.
        let names = vfs.list(&dir).map_err(|e| crate::Error::from(e).in_file(&dir))?;
        if let Some(first) = crate::storage::recovery::log_starts_after(vfs, &dir, &names, after) {
            return Err(crate::storage::recovery::history_gap(vfs, &dir, after, first, &invalid)?);
        }
    }
    let mut report = RecoveryReport {
        invalid_checkpoints: invalid.into_iter().map(|(p, e)| (p, e.to_string())).collect(),
        ..RecoveryReport::default()
    };
    let (mut image, chain) = match ckpt {
        Some((path, img, chain)) => {
            report.checkpoint = Some((Lsn(img.lsn), path));
            (img, Some(chain))
        }
        None => (StateImage::default(), None),
    };
    // The pages' epochs at the checkpoint: a page the log changes after it
    // ends at another epoch (every delta counts one).
    let at_checkpoint: std::collections::HashMap<PageId, u64> =
        image.pages.iter().map(|(id, p)| (*id, p.epoch.0)).collect();
    let (mut commits, mut changes) = (0u64, 0u64);
    let mut due = Due::default();
    let scan = reader::scan(vfs, &dir, after, mode, limits, &mut |c| {
        due.note_deletions(&image.graph, c);
        due.note_stale(&image.graph, c);
        image.apply_commit(c)?;
        due.note(image.graph.is_empty(), c);
        commits += 1;
        changes += c.len() as u64;
        Ok(true)
    })?;
    report.segments = scan.segments.len();
    report.commits_replayed = commits;
    report.changes_replayed = changes;
    report.log_bytes_replayed =
        scan.segments.iter().filter(|s| s.lsns.is_some_and(|(_, last)| last > after)).map(|s| s.bytes).sum();
    report.last_lsn = Lsn(scan.last_lsn.max(image.lsn));
    report.torn_tail = scan.torn;
    report.dropped = scan.dropped;
    report.generation = scan.max_generation + 1;
    report.due = due;
    image.lsn = report.last_lsn.0;
    let mut resume = Resume {
        seq: scan.max_seq.map_or(1, |s| s + 1),
        generation: report.generation,
        next_lsn: report.last_lsn.0 + 1,
        continued: None,
        changed: image
            .pages
            .iter()
            .filter(|(id, p)| at_checkpoint.get(id) != Some(&p.epoch.0))
            .map(|(id, _)| *id)
            .collect(),
        chain,
    };
    // The last segment read is a header and nothing else (so it holds no
    // torn tail: only the last segment can), it starts where the log
    // ends, and no later generation exists (a segment after dropped data
    // is not read, so a tolerant recovery that dropped anything never
    // ends in such a segment): appending to it is the same log.
    if let Some((last, h)) = scan.segments.last().and_then(|s| s.header.map(|h| (s, h))) {
        if last.bytes == super::log::SEGMENT_HEAD_LEN as u64
            && h.first_lsn == resume.next_lsn
            && h.generation == scan.max_generation
        {
            resume.continued =
                Some(Continued { path: last.path.clone(), seq: h.seq, generation: h.generation });
        }
    }
    Ok((image, report, resume))
}

/// Where the log of `dir` (its file `names`) starts, when that is past
/// LSN `after + 1`: the records after `after` before it are in no file.
/// The start is the lowest first LSN among the segments whose headers read
/// (any segment, whatever its generation: a replay can start in none
/// earlier).
pub(crate) fn log_starts_after(vfs: &dyn Vfs, dir: &Path, names: &[String], after: u64) -> Option<u64> {
    log_first_lsn(vfs, dir, names).filter(|&f| f > after + 1)
}

/// The first LSN of the log in `dir` (whose file names are `names`): the
/// smallest `first_lsn` of the segments whose headers read.
pub(crate) fn log_first_lsn(vfs: &dyn Vfs, dir: &Path, names: &[String]) -> Option<u64> {
    let first = |name: &String| -> Option<u64> {
        crate::storage::files::parse_segment_name(name)?;
        segment_header(vfs, &dir.join(name)).ok().map(|h| h.first_lsn)
    };
    names.iter().filter_map(first).min()
}

/// The header of the segment at `path`.
fn segment_header(vfs: &dyn Vfs, path: &Path) -> Result<reader::SegmentHeader> {
    let mut f = vfs.open_read(path)?;
    let mut head = [0u8; crate::storage::log::SEGMENT_HEAD_LEN];
    f.read_exact_at(&mut head, 0)?;
    reader::parse_segment_header(&head)
}

/// The first segment of `dir` (by name) whose header cannot be read, and
/// why (a segment is named only once its header is durable, so no crash
/// leaves one).
pub(crate) fn unreadable_segment(vfs: &dyn Vfs, dir: &Path) -> Option<(PathBuf, Error)> {
    let names = vfs.list(dir).ok()?;
    names.iter().filter(|n| crate::storage::files::parse_segment_name(n).is_some()).find_map(|n| {
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
    let kept = crate::storage::checkpoint::list(vfs, dir)?;
    Ok(match kept.last() {
        Some((oldest, path)) => {
            // Its logical time too, for a point asked for as a time (an
            // error path: the checkpoint is read whole).
            let time = crate::storage::checkpoint::read(vfs, path, &crate::storage::codec::Limits::default())
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

//! Replay and state images: a plain, ordered copy of a state that the log
//! replays into, with a state hash, a state diff, replay to an LSN or a
//! logical timestamp, and the full history of one page.
//!
//! Every change replayed is re-validated (the log is untrusted input): page
//! existence, payload fit, base epochs, epoch overflow, and that ids and
//! timestamps follow the order the commit path hands them out. A commit is
//! validated as a whole before any of it is applied.

use crate::storage::codec::Limits;
// The state image, its hash and diff: what a replay gives and compares.
pub use crate::storage::image::{diff, hash_pages, StateImage};
use crate::storage::log::reader::{self, Record, Visitor};
use crate::storage::recovery::{history_gap, log_starts_after};
use crate::storage::recovery::{RecoveryMode, TornTail};
use crate::storage::vfs::Vfs;
use crate::{Error, Result};
use shared_types::{Epoch, Lsn, PageId};
use std::path::Path;

/// Replay a state directory with a stop rule and an observer.
///
/// `stop(image, commit)` is asked before each committed unit is applied;
/// `seen(image, commit)` after. Uses the newest valid checkpoint whose LSN
/// is at most `max_ckpt_lsn`.
///
/// # Errors
/// As recovery: [`Error::Corrupt`] (strict mode), [`Error::Io`], or a
/// typed validation error for a change that cannot be replayed.
pub fn replay_observed(
    vfs: &dyn Vfs,
    state_dir: &Path,
    max_ckpt_lsn: Option<u64>,
    limits: &Limits,
    stop: &mut dyn FnMut(&StateImage, reader::Commit<'_, '_>) -> bool,
    seen: &mut dyn FnMut(&StateImage, reader::Commit<'_, '_>),
) -> Result<StateImage> {
    replay_impl(vfs, state_dir, max_ckpt_lsn, limits, stop, seen, None).map(|(image, _)| image)
}

/// [`replay_observed`], also returning the torn tail the log ends in
/// (as [`replay_to`] does): for readers that must say where the history
/// they read stops.
///
/// # Errors
/// As [`replay_observed`].
pub fn replay_history(
    vfs: &dyn Vfs,
    state_dir: &Path,
    max_ckpt_lsn: Option<u64>,
    limits: &Limits,
    stop: &mut dyn FnMut(&StateImage, reader::Commit<'_, '_>) -> bool,
    seen: &mut dyn FnMut(&StateImage, reader::Commit<'_, '_>),
) -> Result<Replayed> {
    replay_impl(vfs, state_dir, max_ckpt_lsn, limits, stop, seen, None)
        .map(|(image, torn)| Replayed { image, torn })
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

/// [`replay_observed`], and with `fast_stop` (see [`Replayer`]) batches of
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
    let dir = crate::storage::files::log_dir(state_dir);
    // A directory that is not there is an error, not an empty state.
    let names = vfs.list(&dir).map_err(|e| Error::from(e).in_file(&dir))?;
    let (ckpt, bad) = crate::storage::checkpoint::newest_valid(vfs, &dir, limits, max_ckpt_lsn)?;
    let image = ckpt.map(|(_, img)| img).unwrap_or_default();
    let after = image.lsn;
    if let Some(first) = log_starts_after(vfs, &dir, &names, after) {
        return Err(history_gap(vfs, &dir, after, first, &bad)?);
    }
    let mut r = Replayer { image, limits, stop, seen, fast_stop };
    let scan = reader::scan_with(vfs, &dir, after, RecoveryMode::Strict, limits, &mut r)?;
    Ok((r.image, scan.torn))
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
/// As [`replay_observed`]; [`Error::Config`] when the point precedes the
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
            let dir = crate::storage::files::log_dir(state_dir);
            // The newest checkpoint not past `t`.
            let mut best: Option<u64> = None;
            for (lsn, path) in crate::storage::checkpoint::list(vfs, &dir)? {
                if let Ok(img) = crate::storage::checkpoint::read(vfs, &path, limits) {
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
    replay_to(&crate::storage::vfs::StdVfs, state_dir, until, &Limits::default())
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

/// A commit boundary of a history: the LSN of the commit's last record and
/// the logical time after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitPoint {
    /// LSN.
    pub lsn: Lsn,
    /// Logical time.
    pub timestamp: u64,
}

/// Where the history on disk starts: LSN 0 while the log still begins at
/// its first record (no checkpoint retired any of it; a checkpoint
/// written by a clean stop or an increment retires nothing), else the
/// oldest checkpoint kept (a full checkpoint retired the log before it).
/// The page history, the timeline, provenance and `mmsb export` read from
/// here.
///
/// # Errors
/// [`Error::Io`] when the log directory cannot be listed.
pub fn history_start(vfs: &dyn Vfs, state_dir: &Path) -> Result<u64> {
    let dir = crate::storage::files::log_dir(state_dir);
    let oldest = crate::storage::checkpoint::list(vfs, &dir)?.last().map(|(l, _)| *l).unwrap_or(0);
    if oldest == 0 {
        return Ok(0);
    }
    let names = vfs.list(&dir).map_err(|e| Error::from(e).in_file(&dir))?;
    Ok(match crate::storage::recovery::log_first_lsn(vfs, &dir, &names) {
        Some(first) if first <= 1 => 0,
        _ => oldest,
    })
}

/// Every point [`replay_to`] can stop at in the history still on disk.
#[derive(Debug)]
pub struct Timeline {
    /// Where the history starts ([`history_start`]): the oldest checkpoint
    /// kept, or LSN 0.
    pub start: CommitPoint,
    /// Each commit after that, in order.
    pub commits: Vec<CommitPoint>,
    /// The state at the end of the log.
    pub end: StateImage,
    /// The torn tail the log ends in, when there is one.
    pub torn: Option<TornTail>,
}

/// The history of `state_dir` as a timeline: its start and every commit
/// boundary after it (the points a viewer's slider moves between), read
/// in one replay from where the history starts ([`history_start`]).
///
/// # Errors
/// As [`replay_observed`].
///
/// # Examples
/// ```
/// use mmsb::history::replay::{replay_dir, timeline, Until};
/// use mmsb::vfs::StdVfs;
/// use mmsb::{Config, Limits, Mmsb, PageSpec, Payload};
/// # fn main() -> mmsb::Result<()> {
/// let dir = tempfile::tempdir()?;
/// let state = Mmsb::start(Config::at(dir.path()))?;
/// let p = state.create_page(PageSpec::new(4))?;
/// state.update_page(p, Payload::Full(vec![1; 4]))?;
/// state.update_page(p, Payload::Full(vec![2; 4]))?;
/// state.stop()?;
/// let t = timeline(&StdVfs, dir.path(), &Limits::default())?;
/// assert_eq!(t.start.lsn.0, 0);
/// assert_eq!(t.commits.len(), 3); // the creation, then two writes
/// // Each point is one replay_to can stop at; the last is the end.
/// let second = replay_dir(dir.path(), Until::Lsn(t.commits[1].lsn))?.image;
/// assert_eq!(&second.pages[&p].bytes[..], &[1; 4]);
/// assert_eq!(t.end.state_hash(), replay_dir(dir.path(), Until::End)?.image.state_hash());
/// # Ok(())
/// # }
/// ```
pub fn timeline(vfs: &dyn Vfs, state_dir: &Path, limits: &Limits) -> Result<Timeline> {
    let oldest = history_start(vfs, state_dir)?;
    let mut start: Option<CommitPoint> = None;
    let mut commits = Vec::new();
    let point = |img: &StateImage| CommitPoint { lsn: Lsn(img.lsn), timestamp: img.timestamp };
    let (end, torn) = replay_impl(
        vfs,
        state_dir,
        Some(oldest),
        limits,
        &mut |img, _| {
            start.get_or_insert_with(|| point(img));
            false
        },
        &mut |img, _| commits.push(point(img)),
        None,
    )?;
    Ok(Timeline { start: start.unwrap_or_else(|| point(&end)), commits, end, torn })
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
/// As [`replay_observed`]; [`Error::PageNotFound`] when the history on disk
/// holds no version of the page.
pub fn page_history(
    vfs: &dyn Vfs,
    state_dir: &Path,
    id: PageId,
    limits: &Limits,
) -> Result<Vec<PageVersion>> {
    let oldest = history_start(vfs, state_dir)?;
    let out: std::cell::RefCell<Vec<PageVersion>> = std::cell::RefCell::new(Vec::new());
    let mut first = true;
    replay_observed(
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
    use crate::delta::{Delta, Payload, Source, SparseDelta};
    use crate::storage::codec::delta::{encode_delta_body, DeltaView};
    use crate::storage::codec::page::PageImage;
    use crate::storage::image::op_of_record;
    use crate::types::page::{Location, Metadata};
    use proptest::prelude::*;
    use shared_types::DeltaId;

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

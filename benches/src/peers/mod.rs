//! `mmsb bench --peers`: MMSB beside the systems its users would pick
//! instead, on the same work (built with the `peers` feature only).
//!
//! - State updates: pages of [`PAGE`] bytes held as values under their page
//!   id; each commit changes 64 bytes of one page (8 runs of 8 bytes at
//!   random 8-byte slots), or of 100 pages in the batch variant. MMSB,
//!   redb, fjall and SQLite (WAL), at each one's setting that survives a
//!   power cut, then at the one that survives a process crash: commits per
//!   second and bytes written per commit.
//! - Recovery and history: time to reopen after a history of single-page
//!   commits, and time to read every page as of the history's midpoint.
//! - Incremental computation against salsa ([`incr`]).
//!
//! Every row's value is MMSB's figure, its limit the peer's figure on the
//! same work in the same run, its ratio oriented so that higher is better
//! for MMSB, and [`crate::Row::peer`] names the peer, its version and
//! setting.

use crate::{median, Row};
use mmsb::Result;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use std::time::Instant;

pub mod incr;
mod stores;

use stores::System;

/// Bytes of a page (one value of the peers).
pub const PAGE: usize = 4096;
/// Pages a commit of the batch variant changes.
pub const BATCH_PAGES: usize = 100;
/// Runs of changed bytes per page change, and their length (64 bytes).
const RUNS: usize = 8;
const RUN: usize = 8;

/// The counts of the peer rows (the rows' names carry them).
#[derive(Clone, Copy, Debug)]
pub struct PeerBudget {
    /// Pages in the state.
    pub pages: usize,
    /// Single-page commits timed at the power-cut setting.
    pub power_commits: usize,
    /// Batch commits (100 pages each) timed at the power-cut setting.
    pub power_batches: usize,
    /// Single-page commits timed at the process-crash setting.
    pub crash_commits: usize,
    /// Batch commits timed at the process-crash setting.
    pub crash_batches: usize,
    /// Single-page commits before the reopen (at the process-crash setting).
    pub history_commits: usize,
    /// Children of the fan-out in the incremental rows.
    pub fanout: usize,
    /// Sources and derived nodes of the DAG in the incremental rows.
    pub dag: (usize, usize),
    /// Time budget of the incremental rows' samples.
    pub time: crate::Budget,
}

impl PeerBudget {
    /// The `--quick --peers` counts.
    pub const QUICK: PeerBudget = PeerBudget {
        pages: 1_000,
        power_commits: 300,
        power_batches: 100,
        crash_commits: 2_000,
        crash_batches: 200,
        history_commits: 20_000,
        fanout: 10_000,
        dag: (10_000, 90_000),
        time: crate::Budget::QUICK,
    };
    /// The full `--peers` counts (the reopen after 1,000,000 commits).
    pub const FULL: PeerBudget = PeerBudget {
        pages: 10_000,
        power_commits: 1_000,
        power_batches: 50,
        crash_commits: 20_000,
        crash_batches: 500,
        history_commits: 1_000_000,
        fanout: 10_000,
        dag: (10_000, 90_000),
        time: crate::Budget::FULL,
    };
    /// Tiny counts, for tests of the code paths.
    pub const TINY: PeerBudget = PeerBudget {
        pages: 30,
        power_commits: 3,
        power_batches: 2,
        crash_commits: 10,
        crash_batches: 2,
        history_commits: 40,
        fanout: 50,
        dag: (100, 400),
        time: crate::Budget { sample: std::time::Duration::from_millis(2), samples: 3 },
    };
}

/// The durability settings compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    /// The strongest: a commit survives a power cut once it returns.
    PowerCut,
    /// A commit survives a crash of the process, not of the machine.
    ProcessCrash,
    /// Loading a history fast: each system's cheapest commits, made durable
    /// at the close (redb: durable every 1,000 commits, or its file grows
    /// without bound). Only the history rows use it, for the commits
    /// before the timed reopen.
    Bulk,
}

impl Setting {
    fn key(self) -> &'static str {
        match self {
            Setting::PowerCut => "power",
            Setting::ProcessCrash => "crash",
            Setting::Bulk => "bulk",
        }
    }
}

/// The change of one page in a commit: runs of bytes at offsets.
#[derive(Clone, Debug)]
pub struct Change {
    /// Page index (0-based, in creation order).
    pub page: usize,
    /// (offset, bytes), sorted and apart.
    pub runs: Vec<(usize, Vec<u8>)>,
}

impl Change {
    /// The whole page.
    fn whole(page: usize, bytes: Vec<u8>) -> Change {
        Change { page, runs: vec![(0, bytes)] }
    }

    /// 64 bytes of page `page`: [`RUNS`] runs of [`RUN`] bytes in distinct
    /// random 8-byte slots.
    fn scattered(rng: &mut ChaCha8Rng, page: usize) -> Change {
        let mut slots: Vec<usize> = Vec::with_capacity(RUNS);
        while slots.len() < RUNS {
            let s = rng.random_range(0..PAGE / RUN);
            if !slots.contains(&s) {
                slots.push(s);
            }
        }
        slots.sort_unstable();
        let runs = slots
            .into_iter()
            .map(|s| {
                let mut b = vec![0u8; RUN];
                rng.fill_bytes(&mut b);
                (s * RUN, b)
            })
            .collect();
        Change { page, runs }
    }
}

/// Commits of `pages_each` random pages each, from `seed`.
fn commits(seed: u64, pages: usize, count: usize, pages_each: usize) -> Vec<Vec<Change>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let mut picked: Vec<usize> = Vec::with_capacity(pages_each);
            while picked.len() < pages_each.min(pages) {
                let p = rng.random_range(0..pages);
                if !picked.contains(&p) {
                    picked.push(p);
                }
            }
            picked.into_iter().map(|p| Change::scattered(&mut rng, p)).collect()
        })
        .collect()
}

/// The initial bytes of page `k`: random, from its index.
fn initial(k: usize) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(0x5EED_0000 + k as u64);
    let mut b = vec![0u8; PAGE];
    rng.fill_bytes(&mut b);
    b
}

/// A peer's version as Cargo.lock pinned it for this build.
pub(crate) fn version_of(name: &str) -> &'static str {
    env!("MMSB_PEER_VERSIONS")
        .split(';')
        .find_map(|p| p.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
        .unwrap_or("unknown")
}

/// A peer's failure as an MMSB error (an I/O error naming the peer).
pub(crate) fn peer_error<E: std::fmt::Display>(name: &'static str) -> impl Fn(E) -> mmsb::Error {
    move |e| mmsb::Error::from(std::io::Error::other(format!("{name}: {e}")))
}

/// Bytes this process has handed to `write`-family calls so far (`wchar`
/// of /proc/self/io; every thread, the peers' background threads included).
fn written_bytes() -> Result<u64> {
    let io = std::fs::read_to_string("/proc/self/io").map_err(|e| {
        mmsb::Error::Config(format!("the bytes-written rows need /proc/self/io (Linux): {e}"))
    })?;
    io.lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| mmsb::Error::Config("/proc/self/io has no wchar line".into()))
}

/// One system's figures on one commit workload.
#[derive(Clone, Copy, Debug)]
struct Run {
    commits_per_s: f64,
    bytes_per_commit: f64,
}

/// Load the pages into a fresh store, then time `work`'s commits.
fn commit_run(sys: System, setting: Setting, b: PeerBudget, work: &[Vec<Change>], dir: &Path) -> Result<Run> {
    let mut store = sys.open(dir, setting, b.pages, &initial)?;
    let w0 = written_bytes()?;
    let t = Instant::now();
    for c in work {
        store.commit(c)?;
    }
    let secs = t.elapsed().as_secs_f64();
    let w1 = written_bytes()?;
    store.close()?;
    std::fs::remove_dir_all(dir)?;
    let n = work.len().max(1) as f64;
    Ok(Run { commits_per_s: n / secs, bytes_per_commit: (w1 - w0) as f64 / n })
}

/// The commit rows: single-page and batch commits at both settings, each
/// system on the same commits.
pub fn commit_rows(b: PeerBudget, base: &Path) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for setting in [Setting::PowerCut, Setting::ProcessCrash] {
        let (single, batches) = match setting {
            Setting::PowerCut => (b.power_commits, b.power_batches),
            Setting::ProcessCrash | Setting::Bulk => (b.crash_commits, b.crash_batches),
        };
        for (variant, count, each) in [("single", single, 1), ("batch100", batches, BATCH_PAGES)] {
            let work = commits(21 + each as u64, b.pages, count, each);
            let dir = base.join(format!("peers-{}-{variant}", setting.key()));
            let ours = commit_run(System::Mmsb, setting, b, &work, &dir)?;
            for sys in System::PEERS {
                let theirs = commit_run(sys, setting, b, &work, &dir)?;
                let peer = sys.peer(setting);
                let label = format!("{} {}, {}", peer.name, peer.version, peer.setting);
                rows.push(
                    Row::throughput(
                        &format!("peers_commit_{variant}_{}_{}_{}", setting.key(), count, sys.key()),
                        ours.commits_per_s,
                        "commits/s",
                        &label,
                        theirs.commits_per_s,
                        Some(1.0),
                    )
                    .against(peer.clone()),
                );
                rows.push(
                    Row::cost(
                        &format!("peers_bytes_{variant}_{}_{}", setting.key(), sys.key()),
                        ours.bytes_per_commit,
                        "B/commit",
                        &label,
                        theirs.bytes_per_commit,
                        Some(10.0),
                    )
                    .against(peer),
                );
            }
        }
    }
    Ok(rows)
}

/// One system's history figures, in seconds: to reopen and read one page,
/// to reopen and read every page, the same for MMSB after a checkpoint,
/// and to read every page as of the midpoint, when the system can.
struct HistoryRun {
    reopen: f64,
    reopen_all: f64,
    checkpointed: Option<(f64, f64)>,
    as_of: Option<f64>,
}

/// Reopen the store in `dir` and read every page: the seconds to the
/// first page and to the last, the pages checked against `model`.
fn timed_reopen(
    sys: System,
    b: PeerBudget,
    dir: &Path,
    model: &[Vec<u8>],
) -> Result<(Box<dyn stores::PageStore>, f64, f64)> {
    let t = Instant::now();
    let mut store = sys.reopen(dir, Setting::Bulk, b.pages)?;
    let mut pages = vec![store.read(0)?];
    let first = t.elapsed().as_secs_f64();
    for k in 1..b.pages {
        pages.push(store.read(k)?);
    }
    let all = t.elapsed().as_secs_f64();
    if let Some(k) = (0..b.pages).find(|&k| pages[k] != model[k]) {
        return Err(mmsb::Error::Invariant(format!("{}: page {k} differs after the reopen", sys.key())));
    }
    Ok((store, first, all))
}

/// The state after `n` commits of `work`'s generator, page by page.
fn apply_model(model: &mut [Vec<u8>], commit: &[Change]) {
    for c in commit {
        for (at, bytes) in &c.runs {
            model[c.page][*at..at + bytes.len()].copy_from_slice(bytes);
        }
    }
}

/// A history of `b.history_commits` single-page commits at the bulk
/// setting (generated as it goes: a million commits are not
/// held in memory), a midpoint marked, the store closed; then a timed
/// reopen and a timed read as of the midpoint, both checked against a
/// model of the pages.
fn history_run(sys: System, b: PeerBudget, dir: &Path) -> Result<HistoryRun> {
    let setting = Setting::Bulk;
    let mut store = sys.open(dir, setting, b.pages, &initial)?;
    let mut model: Vec<Vec<u8>> = (0..b.pages).map(initial).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    let half = b.history_commits / 2;
    let (mut mid_model, mut mid_lsn, mut savepoint) = (None, None, None);
    for k in 0..b.history_commits {
        if k == half {
            mid_model = Some(model.clone());
            mid_lsn = store.mmsb_lsn();
            savepoint = store.savepoint()?;
        }
        let page = rng.random_range(0..b.pages);
        let c = [Change::scattered(&mut rng, page)];
        apply_model(&mut model, &c);
        store.commit(&c)?;
    }
    store.close()?;
    let (mut store, reopen, reopen_all) = timed_reopen(sys, b, dir, &model)?;
    let mid = mid_model.unwrap_or_else(|| model.clone());
    let mut checkpointed = None;
    let as_of = if let Some((state_dir, lsn)) = mid_lsn {
        store.close()?;
        let t = Instant::now();
        let image = mmsb::history::replay::replay_to_lsn(
            &mmsb::vfs::StdVfs,
            &state_dir,
            Some(lsn),
            &mmsb::Limits::default(),
        )?;
        let pages: Vec<Vec<u8>> = image.pages.values().take(b.pages).map(|p| p.bytes.to_vec()).collect();
        let e = t.elapsed().as_secs_f64();
        if pages != mid {
            return Err(mmsb::Error::Invariant("mmsb: the replay to the midpoint differs".into()));
        }
        // The same state after the reopened handle's clean stop, which
        // (default settings, the log it replayed being long) wrote a
        // checkpoint and removed nothing.
        let log = state_dir.join("log");
        let checkpoints = std::fs::read_dir(&log)?
            .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".ckpt")))
            .count();
        if checkpoints != 1 {
            return Err(mmsb::Error::Invariant(format!(
                "mmsb: {checkpoints} checkpoints after the default stop of the reopened state, expected 1"
            )));
        }
        let (store, first, all) = timed_reopen(sys, b, dir, &model)?;
        store.close()?;
        checkpointed = Some((first, all));
        Some(e)
    } else if let Some(id) = savepoint {
        let t = Instant::now();
        let pages = store.read_at_savepoint(id, b.pages)?;
        let e = t.elapsed().as_secs_f64();
        if pages.as_ref() != Some(&mid) {
            return Err(mmsb::Error::Invariant(format!("{}: the state at the savepoint differs", sys.key())));
        }
        store.close()?;
        Some(e)
    } else {
        store.close()?;
        None
    };
    std::fs::remove_dir_all(dir)?;
    Ok(HistoryRun { reopen, reopen_all, checkpointed, as_of })
}

/// What a peer offers instead of a read as of an earlier commit.
fn history_setting(sys: System) -> std::result::Result<&'static str, &'static str> {
    match sys {
        System::Mmsb => Ok("replay_to_lsn of the log"),
        System::Redb => {
            Ok("a persistent savepoint taken at the midpoint, restored in a write transaction then aborted")
        }
        System::Fjall => Err("not supported: its snapshots live in memory only and end with the process"),
        System::Sqlite => {
            Err("not supported: no history is kept (a backup copy at the midpoint would be needed)")
        }
    }
}

/// The recovery and history rows.
pub fn history_rows(b: PeerBudget, base: &Path) -> Result<Vec<Row>> {
    let dir = base.join("peers-history");
    let ours = history_run(System::Mmsb, b, &dir)?;
    let n = b.history_commits;
    let mut rows = Vec::new();
    for sys in System::PEERS {
        let theirs = history_run(sys, b, &dir)?;
        let peer = sys.peer(Setting::Bulk);
        let label = format!("{} {}, {}", peer.name, peer.version, peer.setting);
        // MMSB reopened from its log alone, then after the checkpoint a
        // default clean stop wrote.
        let (cp_first, cp_all) = ours.checkpointed.unwrap_or((f64::NAN, f64::NAN));
        for (what, mine, theirs) in [
            ("", ours.reopen, theirs.reopen),
            ("_read_all", ours.reopen_all, theirs.reopen_all),
            ("_checkpointed", cp_first, theirs.reopen),
            ("_checkpointed_read_all", cp_all, theirs.reopen_all),
        ] {
            rows.push(
                Row::cost(
                    &format!("peers_reopen{what}_after_{n}_commits_{}", sys.key()),
                    mine * 1e3,
                    "ms",
                    &label,
                    theirs * 1e3,
                    Some(1.0),
                )
                .against(peer.clone()),
            );
        }
        let mut peer = peer;
        let label = match history_setting(sys) {
            Ok(how) => {
                peer.setting = how.into();
                format!("{} {}, {how}", peer.name, peer.version)
            }
            Err(why) => {
                peer.unsupported = Some(why.into());
                format!("{} {}", peer.name, peer.version)
            }
        };
        rows.push(
            Row::cost(
                &format!("peers_read_as_of_commit_{}_{}", n / 2, sys.key()),
                ours.as_of.unwrap_or(f64::NAN) * 1e3,
                "ms",
                &label,
                theirs.as_of.unwrap_or(f64::NAN) * 1e3,
                Some(1.0),
            )
            .against(peer),
        );
    }
    Ok(rows)
}

/// Every peer row: commits, recovery and history, incremental computation.
///
/// # Errors
/// Any system's failure, or a state that does not read back as written.
pub fn rows(b: PeerBudget, base: &Path) -> Result<Vec<Row>> {
    let mut rows = commit_rows(b, base)?;
    rows.extend(history_rows(b, base)?);
    rows.extend(incr::rows(b)?);
    Ok(rows)
}

/// The median of `v`, for the incremental rows.
fn med(mut v: Vec<f64>) -> f64 {
    median(&mut v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_peer_row_runs_on_tiny_counts() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let rows = rows(PeerBudget::TINY, dir.path())?;
        // 2 settings x 2 variants x 3 peers x (rate + bytes), 3 peers x
        // (4 reopens + history), 4 incremental rows.
        assert_eq!(rows.len(), 24 + 15 + 4, "{:?}", rows.iter().map(|r| &r.name).collect::<Vec<_>>());
        for r in &rows {
            let peer = r.peer.as_ref().expect("every row names its peer");
            assert!(peer.version != "unknown", "{}: no version for {}", r.name, peer.name);
            assert!(r.value.is_finite() && r.value > 0.0, "{}: {}", r.name, r.value);
            match &peer.unsupported {
                None => assert!(r.limit_value.is_finite() && r.limit_value > 0.0, "{}", r.name),
                Some(_) => assert!(r.meets_target.is_none(), "{}", r.name),
            }
        }
        // Every peer rewrites the 4 KiB value; MMSB writes the changed bytes.
        for r in rows.iter().filter(|r| r.name.starts_with("peers_bytes_single")) {
            assert!(r.limit_value >= PAGE as f64, "{}: the peer wrote {} B", r.name, r.limit_value);
            assert!(r.value < PAGE as f64, "{}: MMSB wrote {} B", r.name, r.value);
        }
        Ok(())
    }

    #[test]
    fn changes_are_64_bytes_in_distinct_slots() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..100 {
            let c = Change::scattered(&mut rng, 3);
            assert_eq!(c.runs.iter().map(|r| r.1.len()).sum::<usize>(), 64);
            assert!(c.runs.windows(2).all(|w| w[0].0 + RUN <= w[1].0));
            assert!(c.runs.iter().all(|(at, b)| at + b.len() <= PAGE));
        }
        let batch = commits(5, 200, 3, BATCH_PAGES);
        for c in &batch {
            let mut pages: Vec<usize> = c.iter().map(|c| c.page).collect();
            pages.sort_unstable();
            pages.dedup();
            assert_eq!(pages.len(), BATCH_PAGES);
        }
    }

    #[test]
    fn the_peers_versions_come_from_the_lock_file() {
        for name in ["redb", "fjall", "salsa", "rusqlite"] {
            let v = version_of(name);
            assert!(
                v.split('.').count() == 3 && v.split('.').all(|p| p.parse::<u32>().is_ok()),
                "{name}: {v}"
            );
        }
    }
}

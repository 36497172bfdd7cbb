//! A clean stop writes a checkpoint when the log the next start would
//! replay is long, removes nothing with it, and the next start reads the
//! checkpoint instead of the log; history before it still replays.

use mmsb::history::replay::{history_start, page_history, replay_dir, timeline, Until};
use mmsb::vfs::StdVfs;
use mmsb::Limits;
use mmsb::{CheckpointKind, Config, Lsn, Mmsb, PageId, PageSpec, Payload, Result, SparseDelta};
use std::path::Path;

/// The files of the state's log directory, sorted.
fn files(state: &Path, ext: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(state.join("log"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(ext))
        .collect();
    v.sort();
    v
}

/// `n` small sparse writes spread over `ids`; returns the LSN after each.
fn writes(s: &Mmsb, ids: &[PageId], n: usize, seed: u64) -> Result<Vec<Lsn>> {
    let mut rng = mmsb_tests::Rng::new(seed);
    let mut lsns = Vec::with_capacity(n);
    for _ in 0..n {
        let id = ids[rng.below(ids.len() as u64) as usize];
        let len = s.page_info(id)?.len;
        let at = rng.below(len - 64);
        s.update_page(id, Payload::Sparse(SparseDelta::from_pairs([(at, &rng.bytes(64)[..])])?))?;
        lsns.push(s.lsn());
    }
    Ok(lsns)
}

fn pages(s: &Mmsb, n: usize, len: u64) -> Result<Vec<PageId>> {
    (0..n).map(|_| s.create_page(PageSpec::new(len))).collect()
}

#[test]
fn a_stop_after_a_long_log_writes_a_checkpoint_that_removes_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = || Config::at(dir.path()).stop_checkpoint_bytes(64 << 10);
    let s = Mmsb::start(cfg())?;
    let ids = pages(&s, 4, 4096)?;
    let lsns = writes(&s, &ids, 2_000, 1)?;
    let hash = s.state_hash()?;
    let early = (lsns[10], replay_dir(dir.path(), Until::Lsn(lsns[10]))?.image.state_hash());
    let segments = files(dir.path(), ".log");
    assert!(files(dir.path(), ".ckpt").is_empty());
    s.stop()?;
    // One checkpoint, at the last LSN; every segment is still there.
    assert_eq!(files(dir.path(), ".ckpt").len(), 1, "{:?}", files(dir.path(), ""));
    let after = files(dir.path(), ".log");
    assert!(segments.iter().all(|f| after.contains(f)), "{segments:?} against {after:?}");

    let s = Mmsb::start(cfg())?;
    let r = s.recovery_report();
    assert_eq!(r.checkpoint.as_ref().map(|c| c.0), Some(*lsns.last().unwrap()), "{r}");
    assert_eq!((r.commits_replayed, r.log_bytes_replayed), (0, 0), "{r}");
    assert_eq!(s.state_hash()?, hash);
    // The history before the checkpoint replays as before.
    assert_eq!(replay_dir(dir.path(), Until::Lsn(early.0))?.image.state_hash(), early.1);
    // A clean stop with nothing to replay writes nothing more.
    s.stop()?;
    assert_eq!(files(dir.path(), ".ckpt").len(), 1);
    Ok(())
}

#[test]
fn a_stop_under_the_setting_or_a_checkpoint_larger_than_the_log_writes_none() -> Result<()> {
    // Under the setting (the default, 8 MiB): no checkpoint.
    let dir = tempfile::tempdir()?;
    let s = Mmsb::start(Config::at(dir.path()))?;
    let ids = pages(&s, 4, 4096)?;
    writes(&s, &ids, 2_000, 2)?;
    s.stop()?;
    assert!(files(dir.path(), ".ckpt").is_empty());

    // Over the setting, but the checkpoint (4 MiB of pages) would write
    // more than the start would replay (2,000 writes of 64 bytes).
    let dir = tempfile::tempdir()?;
    let s = Mmsb::start(Config::at(dir.path()).stop_checkpoint_bytes(64 << 10))?;
    let ids = pages(&s, 4, 1 << 20)?;
    writes(&s, &ids, 2_000, 3)?;
    s.stop()?;
    assert!(files(dir.path(), ".ckpt").is_empty());

    // `u64::MAX`: never, however long the log.
    let dir = tempfile::tempdir()?;
    let s = Mmsb::start(Config::at(dir.path()).stop_checkpoint_bytes(u64::MAX))?;
    let ids = pages(&s, 1, 4096)?;
    s.update_page(ids[0], Payload::Full(vec![7; 4096]))?;
    writes(&s, &ids, 3_000, 4)?;
    s.stop()?;
    assert!(files(dir.path(), ".ckpt").is_empty());
    Ok(())
}

#[test]
fn the_log_a_start_replayed_counts_toward_the_next_stop() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s = Mmsb::start(Config::at(dir.path()).stop_checkpoint_bytes(u64::MAX))?;
    let ids = pages(&s, 4, 4096)?;
    writes(&s, &ids, 2_000, 5)?;
    let hash = s.state_hash()?;
    s.stop()?;
    let log: u64 = files(dir.path(), ".log")
        .iter()
        .map(|f| std::fs::metadata(dir.path().join("log").join(f)).unwrap().len())
        .sum();

    // This start replays the whole log and writes nothing; its stop
    // checkpoints what it replayed.
    let s = Mmsb::start(Config::at(dir.path()).stop_checkpoint_bytes(64 << 10))?;
    let replayed = s.recovery_report().log_bytes_replayed;
    assert!(replayed > 64 << 10 && replayed <= log, "replayed {replayed} of {log}");
    // The report a user prints says it too.
    let text = s.recovery_report().to_string();
    assert!(text.contains(&format!("({replayed} bytes of log)")), "{text}");
    s.stop()?;
    assert_eq!(files(dir.path(), ".ckpt").len(), 1);
    let s = Mmsb::start(Config::at(dir.path()))?;
    assert_eq!(s.recovery_report().commits_replayed, 0);
    assert_eq!(s.state_hash()?, hash);
    Ok(())
}

#[test]
fn a_dropped_handle_checkpoints_as_a_stop_does_and_a_later_increment_keeps_the_history() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = || Config::at(dir.path()).stop_checkpoint_bytes(64 << 10);
    let early;
    {
        let s = Mmsb::start(cfg())?;
        // Pages of several blocks, so that a few writes make an increment.
        let ids = pages(&s, 4, 16 << 10)?;
        let lsns = writes(&s, &ids, 2_000, 6)?;
        early = (lsns[0], replay_dir(dir.path(), Until::Lsn(lsns[0]))?.image.state_hash());
    }
    assert_eq!(files(dir.path(), ".ckpt").len(), 1);
    let s = Mmsb::start(cfg())?;
    let ids: Vec<PageId> = s.page_ids();
    writes(&s, &ids, 4, 7)?;
    let inc = s.checkpoint()?;
    assert!(matches!(inc.kind, CheckpointKind::Increment { .. }), "{inc:?}");
    assert_eq!((inc.removed_checkpoints, inc.removed_segments), (0, 0));
    assert_eq!(replay_dir(dir.path(), Until::Lsn(early.0))?.image.state_hash(), early.1);
    // The history views still start at the first record: every commit is
    // a point of the timeline, every write a version of its page.
    let (vfs, limits) = (StdVfs, Limits::default());
    assert_eq!(history_start(&vfs, dir.path())?, 0);
    let t = timeline(&vfs, dir.path(), &limits)?;
    assert_eq!(t.start.lsn, Lsn(0));
    assert_eq!(t.commits.len(), 4 + 2_000 + 4, "creations, writes, the last writes");
    let versions: usize = ids
        .iter()
        .map(|id| page_history(&vfs, dir.path(), *id, &limits).map(|v| v.len()))
        .sum::<Result<usize>>()?;
    assert_eq!(versions, 4 + 2_000 + 4);
    // A full checkpoint retires the history before it, as before.
    writes(&s, &ids, 10, 8)?;
    let full = s.checkpoint_full()?;
    assert_eq!(full.removed_checkpoints, 2, "{full:?}");
    assert!(full.removed_segments > 0, "{full:?}");
    assert!(replay_dir(dir.path(), Until::Lsn(early.0)).is_err());
    assert_eq!(history_start(&vfs, dir.path())?, full.lsn.0);
    assert_eq!(timeline(&vfs, dir.path(), &limits)?.start.lsn, full.lsn);
    s.stop()?;
    Ok(())
}

#[test]
fn a_stop_whose_checkpoint_meets_a_full_disk_stops_and_loses_nothing() -> Result<()> {
    use mmsb::vfs::{CrashMode, SimVfs};
    use mmsb::Error;
    use std::sync::Arc;
    let cfg = |v: &SimVfs| {
        Config::at("/state")
            .vfs(Arc::new(v.clone()))
            .stop_checkpoint_bytes(64 << 10)
            .durability(mmsb::Durability::SYNC)
    };
    let load = |s: &Mmsb| -> Result<u128> {
        let ids = pages(s, 4, 4096)?;
        writes(s, &ids, 1_000, 9)?;
        s.state_hash()
    };
    // The file operations of the stop, on a disk that never fills.
    let v = SimVfs::new();
    let s = Mmsb::start(cfg(&v))?;
    let want = load(&s)?;
    let before = v.ops();
    s.stop()?;
    let stop_ops = v.ops() - before;
    assert!(stop_ops > 0);
    let mut refused = 0;
    for k in 0..stop_ops {
        for crash in [false, true] {
            let v = SimVfs::new();
            let s = Mmsb::start(cfg(&v))?;
            assert_eq!(load(&s)?, want);
            v.disk_full_after(k + 1);
            let what = format!("disk full from operation {k} of the stop (crash after: {crash})");
            match s.stop() {
                Ok(()) => {}
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::StorageFull => {
                    refused += 1
                }
                Err(Error::Poisoned(_)) => refused += 1,
                Err(e) => panic!("{what}: {e}"),
            }
            // Stopped whatever happened, and the directory released.
            assert!(matches!(s.stop(), Err(Error::Stopped)), "{what}");
            assert!(matches!(s.create_page(PageSpec::new(8)), Err(Error::Stopped)), "{what}");
            drop(s);
            v.free_space();
            if crash {
                v.crash(CrashMode::DropUnsynced);
            }
            let s = Mmsb::start(cfg(&v)).unwrap_or_else(|e| panic!("{what}: strict start: {e}"));
            assert_eq!(s.state_hash()?, want, "{what}: {}", s.recovery_report());
            s.stop()?;
        }
    }
    // Every operation of the stop wrote (its checkpoint and the log's
    // close): a full disk at any of them is an error the stop returns.
    eprintln!("stop operations: {stop_ops}, failed stops: {refused}");
    assert!(refused > 0);
    Ok(())
}

#[test]
fn the_setting_is_a_lower_bound_met_at_equality() -> Result<()> {
    // The same workload three times: the log it leaves to replay, then the
    // setting at exactly that many bytes (a checkpoint), then one byte
    // more (none).
    let run = |setting: u64| -> Result<(u64, usize)> {
        let dir = tempfile::tempdir()?;
        let s = Mmsb::start(Config::at(dir.path()).stop_checkpoint_bytes(setting))?;
        let ids = pages(&s, 4, 4096)?;
        writes(&s, &ids, 1_500, 10)?;
        let appended = s.log_stats().bytes;
        s.stop()?;
        Ok((appended, files(dir.path(), ".ckpt").len()))
    };
    let (log, none) = run(u64::MAX)?;
    assert_eq!(none, 0);
    assert_eq!(run(log)?, (log, 1));
    assert_eq!(run(log + 1)?, (log, 0));
    Ok(())
}

#[test]
fn a_temporary_state_writes_no_checkpoint_at_its_stop() -> Result<()> {
    let s = Mmsb::start(Config::temporary().stop_checkpoint_bytes(64 << 10))?;
    let ids = pages(&s, 4, 4096)?;
    writes(&s, &ids, 2_000, 11)?;
    let dir = s.dir().to_path_buf();
    s.stop()?;
    assert!(files(&dir, ".ckpt").is_empty());
    Ok(())
}

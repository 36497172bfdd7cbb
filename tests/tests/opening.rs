//! Opening a state as a user does: only an existing state when asked,
//! never a directory of other files; finding pages by name after a
//! restart; the LSN without a copy; replay in one call; checkpoint events
//! and waiting for retired files.

use mmsb::history::replay::{replay_dir, Until};
use mmsb::{Config, Durability, Error, Event, Mmsb, PageSpec, Payload, RecoveryMode, Result};

#[test]
fn existing_opens_only_a_state_and_creates_nothing() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let missing = tmp.path().join("typo");
    match Mmsb::start(Config::existing(&missing)) {
        Err(Error::NotAState { dir, reason }) => {
            assert_eq!(dir, missing);
            assert!(reason.contains("does not exist"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!missing.exists(), "a mistyped path became a directory");
    // An empty directory is no state either.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty)?;
    assert!(matches!(Mmsb::start(Config::existing(&empty)), Err(Error::NotAState { .. })));
    assert_eq!(std::fs::read_dir(&empty)?.count(), 0, "nothing was created in it");
    // A real state opens, with every setting of `Config` kept.
    let dir = tmp.path().join("state");
    let s = Mmsb::start(Config::at(&dir))?;
    let p = s.create_page(PageSpec::new(4).named("p"))?;
    s.update_page(p, Payload::Full(vec![5; 4]))?;
    let hash = s.state_hash()?;
    s.stop()?;
    let s = Mmsb::start(Config::existing(&dir).durability(Durability::SYNC).recovery(RecoveryMode::Strict))?;
    assert_eq!(s.state_hash()?, hash);
    Ok(())
}

#[test]
fn a_directory_of_other_files_is_not_adopted() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    std::fs::write(tmp.path().join("thesis.tex"), b"\\documentclass{article}")?;
    match Mmsb::start(Config::at(tmp.path())) {
        Err(Error::NotAState { reason, .. }) => assert!(reason.contains("thesis.tex"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(!tmp.path().join("log").exists(), "a log was created among the other files");
    // A new or empty directory becomes a state.
    let fresh = tmp.path().join("fresh");
    Mmsb::start(Config::at(&fresh))?.stop()?;
    let empty = tempfile::tempdir()?;
    Mmsb::start(Config::at(empty.path()))?.stop()?;
    Ok(())
}

#[test]
fn pages_are_found_by_name_after_a_restart() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (pos, vel) = {
        let s = Mmsb::start(Config::at(tmp.path()))?;
        let pos = s.create_page(PageSpec::new(16).named("positions"))?;
        let vel = s.create_page(PageSpec::new(16).named("velocities"))?;
        // A second page of one name: the first one is found.
        s.create_page(PageSpec::new(16).named("positions"))?;
        s.stop()?;
        (pos, vel)
    };
    let s = Mmsb::start(Config::existing(tmp.path()))?;
    assert_eq!(s.page_named("positions"), Some(pos));
    assert_eq!(s.page_named("velocities"), Some(vel));
    assert_eq!(s.page_named("accelerations"), None);
    s.delete_page(pos)?;
    assert_eq!(s.page_named("positions").map(|p| p.0), Some(pos.0 + 2));
    Ok(())
}

#[test]
fn the_lsn_and_one_call_replay_agree() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let s = Mmsb::start(Config::at(tmp.path()))?;
    let p = s.create_page(PageSpec::new(8))?;
    let mut points = Vec::new();
    for i in 0..5u8 {
        s.update_page(p, Payload::Full(vec![i; 8]))?;
        assert_eq!(s.lsn().0, s.snapshot()?.lsn);
        points.push((s.lsn(), s.state_hash()?));
    }
    s.checkpoint()?;
    s.update_page(p, Payload::Full(vec![9; 8]))?;
    let end = (s.lsn(), s.state_hash()?);
    // Replay reads a directory a running handle writes.
    let live = replay_dir(tmp.path(), Until::End)?.image;
    assert_eq!((mmsb::Lsn(live.lsn), live.state_hash()), end);
    s.stop()?;
    let r = replay_dir(tmp.path(), Until::End)?;
    assert_eq!((mmsb::Lsn(r.image.lsn), r.image.state_hash()), end);
    assert!(r.torn.is_none());
    // Points before the checkpoint retired their log: refused, saying so.
    for (lsn, _) in &points[..4] {
        assert!(matches!(replay_dir(tmp.path(), Until::Lsn(*lsn)), Err(Error::Config(_))));
    }
    let (lsn, hash) = points[4];
    assert_eq!(replay_dir(tmp.path(), Until::Lsn(lsn))?.image.state_hash(), hash);
    Ok(())
}

#[test]
fn a_checkpoint_is_announced_and_its_retired_files_can_be_waited_for() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let s = Mmsb::start(Config::at(tmp.path()))?;
    let events = s.subscribe();
    let p = s.create_page(PageSpec::new(1 << 20))?;
    s.update_page(p, Payload::Full(vec![1; 1 << 20]))?;
    let info = s.checkpoint()?;
    assert!(info.removed_segments >= 1);
    let announced: Vec<Event> =
        events.drain().into_iter().filter(|e| matches!(e, Event::CheckpointWritten { .. })).collect();
    assert_eq!(announced, vec![Event::CheckpointWritten { lsn: info.lsn }]);
    s.wait_retired()?;
    let log = tmp.path().join("log");
    let segments = std::fs::read_dir(&log)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".log")))
        .count();
    assert_eq!(segments, 1, "only the segment after the checkpoint is left");
    Ok(())
}

//! Incremental checkpoints: an increment holds the changed blocks only,
//! chains are bounded, reading a checkpoint reads its chain, a damaged or
//! replaced link is never applied, and every state a chain holds replays.

use mmsb::history::replay::{replay_dir, Until};
use mmsb::internals::checkpoint::{decode_file, read_chain, CheckpointFile};
use mmsb::vfs::StdVfs;
use mmsb::{
    CheckpointKind, Config, Limits, Lsn, Mmsb, PageId, PageSpec, Payload, RecoveryMode, Result, SparseDelta,
    CHANGE_BLOCK,
};
use std::path::{Path, PathBuf};

const PAGE: u64 = 256 << 10;

fn noise(seed: u64, n: usize) -> Vec<u8> {
    mmsb_tests::Rng::new(seed).bytes(n)
}

/// 16 pages of 256 KiB of noise.
fn filled(cfg: Config) -> Result<(Mmsb, Vec<PageId>)> {
    let s = Mmsb::start(cfg)?;
    let mut ids = Vec::new();
    for k in 0..16 {
        let p = s.create_page(PageSpec::new(PAGE))?;
        s.update_page(p, Payload::Full(noise(k + 1, PAGE as usize)))?;
        ids.push(p);
    }
    Ok((s, ids))
}

/// Change `n` scattered 8-byte runs (each in its own block).
fn scatter(s: &Mmsb, ids: &[PageId], n: usize, seed: u64) -> Result<()> {
    for k in 0..n {
        let page = ids[(k * 7 + seed as usize) % ids.len()];
        let block = (k as u64 * 13 + seed) % (PAGE / CHANGE_BLOCK as u64);
        let at = block * CHANGE_BLOCK as u64 + (k as u64 * 31) % (CHANGE_BLOCK as u64 - 8);
        s.update_page(
            page,
            Payload::Sparse(SparseDelta::from_pairs([(at, &noise(seed + k as u64, 8)[..])])?),
        )?;
    }
    Ok(())
}

fn checkpoints(state: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(state.join("log"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".ckpt"))
        .collect();
    v.sort();
    v
}

#[test]
fn an_increment_holds_the_changed_blocks_and_the_chain_reopens_exactly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (s, ids) = filled(Config::at(dir.path()))?;
    let full = s.checkpoint()?;
    assert_eq!(full.kind, CheckpointKind::Full);
    // 1% of the 1,024 blocks.
    scatter(&s, &ids, 10, 1)?;
    let h1 = s.state_hash()?;
    let i1 = s.checkpoint()?;
    assert_eq!(i1.kind, CheckpointKind::Increment { base: full.lsn, depth: 1 });
    assert!(i1.bytes * 20 < full.bytes, "increment {} bytes, full {}", i1.bytes, full.bytes);
    assert!(i1.bytes >= 10 * CHANGE_BLOCK as u64, "{} bytes hold 10 blocks", i1.bytes);
    assert_eq!((i1.removed_checkpoints, i1.removed_segments), (0, 0), "an increment keeps its chain and log");
    // A deleted page, a created one, more changes.
    s.delete_page(ids[3])?;
    let new = s.create_page(PageSpec::new(10_000).named("new"))?;
    s.update_page(new, Payload::Full(noise(99, 10_000)))?;
    scatter(&s, &ids[4..], 5, 2)?;
    let h2 = s.state_hash()?;
    let i2 = s.checkpoint()?;
    assert_eq!(i2.kind, CheckpointKind::Increment { base: i1.lsn, depth: 2 });
    // After the chain's head: only the log.
    scatter(&s, &ids[4..], 3, 3)?;
    let h3 = s.state_hash()?;
    s.stop()?;
    drop(s);
    assert_eq!(checkpoints(dir.path()).len(), 3);

    // Reading the head reads the chain.
    let (img, chain) = read_chain(&StdVfs, &i2.path, &Limits::default(), None)?;
    assert_eq!(img.state_hash(), h2);
    let lsns: Vec<u64> = chain.files.iter().map(|f| f.0).collect();
    assert_eq!(lsns, [full.lsn.0, i1.lsn.0, i2.lsn.0]);
    assert_eq!(chain.head.depth, 2);

    let s = Mmsb::start(Config::at(dir.path()))?;
    let r = s.recovery_report();
    assert!(r.is_clean(), "{r}");
    assert_eq!(r.checkpoint.as_ref().map(|c| c.0), Some(i2.lsn));
    assert_eq!(r.commits_replayed, 3);
    assert_eq!(s.state_hash()?, h3);
    assert_eq!(s.page_info(new)?.meta.get("name").map(|v| &v[..]), Some(&b"new"[..]));
    assert!(s.page_info(ids[3]).is_err());
    s.stop()?;
    drop(s);

    // Every state the chain holds replays: from the element at or before it.
    for (lsn, h) in [(i1.lsn, h1), (i2.lsn, h2)] {
        assert_eq!(replay_dir(dir.path(), Until::Lsn(lsn))?.image.state_hash(), h, "LSN {lsn}");
    }
    assert_eq!(replay_dir(dir.path(), Until::End)?.image.state_hash(), h3);
    Ok(())
}

#[test]
fn a_chain_is_bounded_and_a_full_checkpoint_retires_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (s, ids) = filled(Config::at(dir.path()).checkpoint_chain(3))?;
    assert_eq!(s.checkpoint()?.kind, CheckpointKind::Full);
    for depth in 1..=3 {
        scatter(&s, &ids, 4, depth.into())?;
        let i = s.checkpoint()?;
        assert!(matches!(i.kind, CheckpointKind::Increment { depth: d, .. } if d == depth), "{i:?}");
    }
    assert_eq!(checkpoints(dir.path()).len(), 4);
    scatter(&s, &ids, 4, 9)?;
    let f = s.checkpoint()?;
    assert_eq!(f.kind, CheckpointKind::Full);
    assert_eq!(f.removed_checkpoints, 4);
    assert!(f.removed_segments >= 1);
    assert_eq!(checkpoints(dir.path()).len(), 1);
    // Everything changed: a full checkpoint, whatever the chain.
    scatter(&s, &ids, 2, 10)?;
    assert!(matches!(s.checkpoint()?.kind, CheckpointKind::Increment { depth: 1, .. }));
    for (k, p) in ids.iter().enumerate() {
        s.update_page(*p, Payload::Full(noise(50 + k as u64, PAGE as usize)))?;
    }
    assert_eq!(s.checkpoint()?.kind, CheckpointKind::Full);
    let h = s.state_hash()?;
    s.stop()?;
    drop(s);
    let s = Mmsb::start(Config::at(dir.path()))?;
    assert_eq!(s.state_hash()?, h);
    // checkpoint_chain(0): every checkpoint is full.
    drop(s);
    let s = Mmsb::start(Config::at(dir.path()).checkpoint_chain(0))?;
    scatter(&s, &ids, 1, 11)?;
    assert_eq!(s.checkpoint()?.kind, CheckpointKind::Full);
    Ok(())
}

#[test]
fn a_restart_continues_the_chain_with_the_pages_the_log_changed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (s, ids) = filled(Config::at(dir.path()))?;
    let full = s.checkpoint()?;
    scatter(&s, &ids[..2], 4, 1)?;
    s.stop()?;
    drop(s);
    let s = Mmsb::start(Config::at(dir.path()))?;
    scatter(&s, &ids[5..6], 1, 2)?;
    let h = s.state_hash()?;
    let i = s.checkpoint()?;
    assert_eq!(i.kind, CheckpointKind::Increment { base: full.lsn, depth: 1 });
    // The two pages the log changed go whole, the third as its block.
    assert!(i.bytes >= 2 * PAGE && i.bytes < 3 * PAGE, "{} bytes", i.bytes);
    s.stop()?;
    drop(s);
    let s = Mmsb::start(Config::at(dir.path()))?;
    assert_eq!(s.recovery_report().commits_replayed, 0);
    assert_eq!(s.state_hash()?, h);
    Ok(())
}

/// A chain of a full checkpoint and two increments, then a commit; the
/// hash at the end.
fn chain_dir(dir: &Path, seed: u64) -> Result<(u128, Vec<PathBuf>)> {
    let (s, ids) = filled(Config::at(dir))?;
    let mut files = vec![s.checkpoint()?.path];
    for k in 0..2 {
        scatter(&s, &ids, 6, seed + k)?;
        files.push(s.checkpoint()?.path);
    }
    scatter(&s, &ids, 2, seed + 7)?;
    let h = s.state_hash()?;
    s.stop()?;
    Ok((h, files))
}

#[test]
fn a_damaged_increment_is_never_applied_and_the_log_bridges_it() -> Result<()> {
    for mode in [RecoveryMode::Strict, RecoveryMode::Tolerant] {
        let dir = tempfile::tempdir()?;
        let (h, files) = chain_dir(dir.path(), 1)?;
        let mut b = std::fs::read(&files[2])?;
        let at = b.len() / 2;
        b[at] ^= 0x10;
        std::fs::write(&files[2], &b)?;
        let s = Mmsb::start(Config::at(dir.path()).recovery(mode))?;
        let r = s.recovery_report();
        assert_eq!(r.checkpoint.as_ref().map(|c| &c.1), Some(&files[1]), "{r}");
        assert_eq!(r.invalid_checkpoints.len(), 1, "{r}");
        assert_eq!(r.invalid_checkpoints[0].0, files[2]);
        assert!(!r.is_clean());
        assert_eq!(s.state_hash()?, h, "{mode:?}");
        drop(s);
        // verify names it.
        let v = mmsb::history::tools::verify(dir.path());
        let p = v.problem.expect("verify reports the damaged increment");
        assert_eq!(p.file.as_ref(), Some(&files[2]), "{p:?}");
    }
    Ok(())
}

#[test]
fn a_damaged_or_replaced_base_refuses_its_increments() -> Result<()> {
    // A replaced base: another state's full checkpoint at the same LSN.
    let a = tempfile::tempdir()?;
    let b = tempfile::tempdir()?;
    let (_, fa) = chain_dir(a.path(), 1)?;
    let (_, fb) = {
        let s = Mmsb::start(Config::at(b.path()))?;
        for k in 0..16 {
            let p = s.create_page(PageSpec::new(PAGE))?;
            s.update_page(p, Payload::Full(noise(k + 100, PAGE as usize)))?;
        }
        let f = s.checkpoint()?.path;
        s.stop()?;
        ((), vec![f])
    };
    assert_eq!(fa[0].file_name(), fb[0].file_name(), "the same LSN");
    let before = std::fs::read(&fa[0])?;
    std::fs::copy(&fb[0], &fa[0])?;
    assert_ne!(before, std::fs::read(&fa[0])?);
    let e = match read_chain(&StdVfs, &fa[2], &Limits::default(), None) {
        Ok((_, c)) => panic!("a replaced base was accepted: {:?}", c.files),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("not the checkpoint it was written on"), "{e}");
    // The start skips both increments and says so (the base itself is a
    // valid checkpoint: it starts from it and the log since it).
    let s = Mmsb::start(Config::at(a.path()))?;
    let r = s.recovery_report();
    assert!(!r.is_clean());
    let skipped: Vec<&PathBuf> = r.invalid_checkpoints.iter().map(|(p, _)| p).collect();
    assert_eq!(skipped, [&fa[2], &fa[1]], "{r}");
    drop(s);

    // A missing base.
    let c = tempfile::tempdir()?;
    let (_, fc) = chain_dir(c.path(), 2)?;
    std::fs::remove_file(&fc[1])?;
    let e = match read_chain(&StdVfs, &fc[2], &Limits::default(), None) {
        Ok((_, c)) => panic!("a missing base was accepted: {:?}", c.files),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("its base, the checkpoint at LSN"), "{e}");
    // The full checkpoint and the log since it are intact: the start
    // recovers from the full one and replays the log over the gap.
    let s = Mmsb::start(Config::at(c.path()))?;
    assert_eq!(s.recovery_report().checkpoint.as_ref().map(|c| &c.1), Some(&fc[0]));
    Ok(())
}

#[test]
fn every_bit_flip_and_cut_of_an_increment_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s = Mmsb::start(Config::at(dir.path()))?;
    let mut ids = Vec::new();
    for k in 0..3u64 {
        let p = s.create_page(PageSpec::new(3 * CHANGE_BLOCK as u64 + 5))?;
        s.update_page(p, Payload::Full(noise(k, 3 * CHANGE_BLOCK + 5)))?;
        ids.push(p);
    }
    s.checkpoint()?;
    s.update_page(ids[1], Payload::Sparse(SparseDelta::from_pairs([(5000u64, &[1u8, 2, 3][..])])?))?;
    s.delete_page(ids[2])?;
    let p = s.create_page(PageSpec::new(100))?;
    s.update_page(p, Payload::Full(vec![7; 100]))?;
    let i = s.checkpoint()?;
    assert!(matches!(i.kind, CheckpointKind::Increment { .. }));
    drop(s);
    let good = std::fs::read(&i.path)?;
    let lim = Limits::default();
    match decode_file(&good, &lim)?.file {
        CheckpointFile::Increment(inc) => {
            assert_eq!(inc.deleted, [ids[2]]);
            assert_eq!(inc.entries.len(), 2, "one patch, one created page");
        }
        CheckpointFile::Full(_) => panic!("an increment"),
    }
    // An increment alone is not a state.
    assert!(mmsb::internals::checkpoint::decode(&good, &lim).is_err());
    let mut b = good.clone();
    for bit in 0..good.len() * 8 {
        b[bit / 8] ^= 1 << (bit % 8);
        assert!(decode_file(&b, &lim).is_err(), "bit {bit} of {}", good.len());
        b[bit / 8] ^= 1 << (bit % 8);
    }
    for cut in 0..good.len() {
        assert!(decode_file(&good[..cut], &lim).is_err(), "cut at {cut}");
    }
    Ok(())
}

#[test]
fn lsn_of_a_chain_file_must_match_its_name() -> Result<()> {
    // An increment renamed to another LSN is skipped as invalid.
    let dir = tempfile::tempdir()?;
    let (h, files) = chain_dir(dir.path(), 3)?;
    let renamed = files[2].with_file_name(format!("ckpt-{:020}.ckpt", 999_999));
    std::fs::rename(&files[2], &renamed)?;
    let s = Mmsb::start(Config::at(dir.path()))?;
    let r = s.recovery_report();
    assert!(r.invalid_checkpoints.iter().any(|(p, _)| *p == renamed), "{r}");
    assert_eq!(s.state_hash()?, h);
    assert_eq!(
        r.checkpoint.as_ref().map(|c| c.0),
        Some(Lsn(files[1].file_stem().unwrap().to_str().unwrap()[5..].parse().unwrap()))
    );
    Ok(())
}

#[test]
fn a_thread_holding_a_page_guard_can_checkpoint() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (s, ids) = filled(Config::at(dir.path()))?;
    let guard = s.read_page(ids[0])?;
    assert_eq!(s.checkpoint()?.kind, CheckpointKind::Full);
    scatter(&s, &ids[1..], 3, 5)?;
    // The increment clears the pages' change bits without waiting for the
    // guard this thread holds.
    assert!(matches!(s.checkpoint()?.kind, CheckpointKind::Increment { .. }));
    assert_eq!(guard.bytes().len() as u64, PAGE);
    Ok(())
}

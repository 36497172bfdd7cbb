//! Log, checkpoint and recovery: reopen, torn tails at every offset, bit
//! flips, batches, error injection, replay and diff.

use mmsb::history::replay::{self, StateImage};
use mmsb::vfs::{CrashMode, SimVfs, Vfs};
use mmsb::{Config, Lsn, Mmsb, PageSpec, Payload, Result, SparseDelta, Update};
use mmsb::{Durability, RecoveryMode};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn sim_config(vfs: &SimVfs) -> Config {
    Config::at("/state").vfs(Arc::new(vfs.clone())).durability(Durability::SYNC)
}

fn sparse(off: u64, b: &[u8]) -> Payload {
    Payload::Sparse(SparseDelta::from_pairs([(off, b)]).unwrap())
}

/// A small workload: creates, single updates, a batch, a delete.
fn workload(s: &Mmsb) -> Result<Vec<u128>> {
    let mut hashes = vec![s.state_hash().unwrap()];
    let a = s.create_page(PageSpec::new(100).named("a"))?;
    hashes.push(s.state_hash().unwrap());
    let b = s.create_page(PageSpec::new(70))?;
    hashes.push(s.state_hash().unwrap());
    s.update_page(a, sparse(3, &[1, 2, 3]))?;
    hashes.push(s.state_hash().unwrap());
    s.update_batch(vec![Update::new(a, Payload::Full(vec![9; 100])), Update::new(b, sparse(60, &[5; 10]))])?;
    hashes.push(s.state_hash().unwrap());
    s.delete_page(a)?;
    hashes.push(s.state_hash().unwrap());
    Ok(hashes)
}

#[test]
fn reopen_reproduces_the_state_exactly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (hash, snap) = {
        let s = Mmsb::start(Config::at(dir.path()))?;
        workload(&s)?;
        s.stop()?;
        (s.state_hash().unwrap(), s.snapshot().unwrap())
    };
    let s = Mmsb::start(Config::at(dir.path()))?;
    assert!(s.recovery_report().is_clean(), "{}", s.recovery_report());
    assert_eq!(s.state_hash().unwrap(), hash);
    assert_eq!(s.snapshot().unwrap().pages, snap.pages);
    assert_eq!(s.timestamp(), snap.timestamp);
    // Ids continue where they left off.
    let c = s.create_page(PageSpec::new(8))?;
    assert_eq!(c.0, snap.next_page);
    Ok(())
}

#[test]
fn checkpoint_then_more_log_recovers_and_prunes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let hash = {
        let s = Mmsb::start(Config::at(dir.path()))?;
        workload(&s)?;
        let info = s.checkpoint()?;
        assert!(info.removed_segments >= 1);
        assert_eq!(info.removed_checkpoints, 0, "nothing to retire before the first");
        let p = s.create_page(PageSpec::new(5000))?;
        s.update_page(p, sparse(4000, &[7; 64]))?;
        // A second checkpoint retires the first (one is kept) and the
        // segments the new one covers; the report counts exactly those.
        let second = s.checkpoint()?;
        assert_eq!(second.removed_checkpoints, 1, "{second:?}");
        assert!(second.removed_segments >= 1, "{second:?}");
        let left: Vec<_> = std::fs::read_dir(second.path.parent().unwrap())?
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("ckpt-"))
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(!info.path.exists() && second.path.exists());
        s.update_page(p, sparse(10, &[9; 8]))?;
        s.stop()?;
        s.state_hash().unwrap()
    };
    let s = Mmsb::start(Config::at(dir.path()))?;
    let r = s.recovery_report();
    assert!(r.checkpoint.is_some() && r.is_clean(), "{r}");
    assert_eq!(r.changes_replayed, 1);
    assert_eq!(s.state_hash().unwrap(), hash);
    Ok(())
}

fn only_segment(vfs: &SimVfs) -> PathBuf {
    let dir = Path::new("/state/log");
    let mut segs: Vec<String> =
        vfs.list(dir).unwrap().into_iter().filter(|n| n.starts_with("wal-")).collect();
    segs.sort();
    dir.join(&segs[0])
}

/// Hashes after each commit of `workload`, and the log image it leaves
/// when its writer dies without closing the log (every byte it wrote
/// reached the disk; a stopped or dropped handle would close the log with
/// an empty segment, see tests/tests/durability.rs for those).
fn logged_workload() -> (SimVfs, Vec<u128>) {
    let vfs = SimVfs::new();
    let s = Mmsb::start(sim_config(&vfs)).unwrap();
    let hashes = workload(&s).unwrap();
    vfs.crash(CrashMode::KeepAll);
    drop(s);
    (vfs, hashes)
}

#[test]
fn truncation_of_a_crashed_log_past_its_header_recovers_a_committed_prefix() -> Result<()> {
    let (vfs, hashes) = logged_workload();
    let seg = only_segment(&vfs);
    let full = vfs.read(&seg)?;
    for cut in 0..=full.len() {
        let v = vfs.snapshot();
        v.corrupt(&seg, |b| b.truncate(cut))?;
        if cut < mmsb::internals::log::SEGMENT_HEAD_LEN {
            // A segment is named once its header is durable: a cut header
            // is damage, not a crash.
            match Mmsb::start(sim_config(&v)) {
                Err(mmsb::Error::Corrupt { file: Some(f), offset: Some(0), .. }) => assert_eq!(f, seg),
                other => panic!("cut at {cut}: {other:?}"),
            }
            continue;
        }
        let s = Mmsb::start(sim_config(&v))?;
        let h = s.state_hash().unwrap();
        assert!(hashes.contains(&h), "cut at {cut}: state is not a committed prefix");
        let r = s.recovery_report();
        if cut < full.len() {
            // A cut at a record boundary leaves a shorter, valid log.
            if let Some(t) = &r.torn_tail {
                assert!(t.offset <= cut as u64, "cut {cut}: {r}");
            }
        } else {
            assert!(r.is_clean());
            assert_eq!(h, *hashes.last().unwrap());
        }
        // The recovered state keeps working and survives another reopen.
        let p = s.create_page(PageSpec::new(4))?;
        s.update_page(p, Payload::Full(vec![1, 2, 3, 4]))?;
        let h2 = s.state_hash().unwrap();
        drop(s);
        let s = Mmsb::start(sim_config(&v))?;
        assert_eq!(s.state_hash().unwrap(), h2, "cut {cut}: second reopen");
        assert!(s.recovery_report().is_clean(), "cut {cut}: {}", s.recovery_report());
    }
    Ok(())
}

#[test]
fn every_single_bit_flip_of_the_log_is_detected() -> Result<()> {
    let (vfs, hashes) = logged_workload();
    let seg = only_segment(&vfs);
    let full = vfs.read(&seg)?;
    let last = *hashes.last().unwrap();
    for bit in 0..full.len() * 8 {
        let v = vfs.snapshot();
        v.corrupt(&seg, |b| b[bit / 8] ^= 1 << (bit % 8))?;
        let verify = mmsb::history::tools::verify_with(&v, Path::new("/state"), &Default::default());
        assert!(verify.problem.is_some(), "verify missed bit {bit}");
        match Mmsb::start(sim_config(&v)) {
            Err(mmsb::Error::Corrupt { .. }) => {}
            Err(e) => panic!("bit {bit}: unexpected error {e}"),
            Ok(s) => {
                // Only a flip in the last record can look like a torn tail.
                let r = s.recovery_report();
                assert!(r.torn_tail.is_some(), "bit {bit} went unnoticed");
                assert_ne!(s.state_hash().unwrap(), last, "bit {bit}");
                assert!(hashes.contains(&s.state_hash().unwrap()));
            }
        }
    }
    Ok(())
}

#[test]
fn every_single_bit_flip_of_a_checkpoint_is_detected() -> Result<()> {
    let vfs = SimVfs::new();
    let s = Mmsb::start(sim_config(&vfs))?;
    workload(&s)?;
    let info = s.checkpoint()?;
    drop(s);
    let bytes = vfs.read(&info.path)?;
    for bit in 0..bytes.len() * 8 {
        let mut b = bytes.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        assert!(mmsb::internals::checkpoint::decode(&b, &Default::default()).is_err(), "bit {bit}");
    }
    // And at recovery: the flipped checkpoint is skipped, and since the log
    // before it was removed, recovery refuses rather than lose data.
    let v = vfs.snapshot();
    v.corrupt(&info.path, |b| b[100] ^= 4)?;
    assert!(matches!(Mmsb::start(sim_config(&v)), Err(mmsb::Error::Corrupt { .. })));
    Ok(())
}

#[test]
fn corruption_followed_by_valid_records_is_an_error_unless_tolerant() -> Result<()> {
    let (vfs, hashes) = logged_workload();
    let seg = only_segment(&vfs);
    // Flip a byte inside the second record (the second create).
    let v = vfs.snapshot();
    let data = v.read(&seg)?;
    let first_len = u32::from_le_bytes(data[48..52].try_into().unwrap()) as usize;
    let second = 48 + 16 + first_len + 4;
    v.corrupt(&seg, |b| b[second + 20] ^= 0xFF)?;
    let err = Mmsb::start(sim_config(&v)).unwrap_err();
    match err {
        mmsb::Error::Corrupt { offset: Some(o), file: Some(f), .. } => {
            assert_eq!(o, second as u64);
            assert_eq!(f, seg);
        }
        e => panic!("unexpected {e}"),
    }
    let s = Mmsb::start(sim_config(&v).recovery(RecoveryMode::Tolerant))?;
    let r = s.recovery_report().clone();
    assert_eq!(r.dropped.len(), 1, "{r}");
    assert_eq!(r.dropped[0].offset, second as u64);
    assert_eq!(s.state_hash().unwrap(), hashes[1]);
    // The next generation takes over: strict reopen now succeeds.
    s.update_page(mmsb::PageId(1), sparse(0, &[1]))?;
    let h = s.state_hash().unwrap();
    drop(s);
    let s = Mmsb::start(sim_config(&v))?;
    assert_eq!(s.state_hash().unwrap(), h);
    Ok(())
}

#[test]
fn failed_fsync_poisons_the_log() -> Result<()> {
    let vfs = SimVfs::new();
    let s = Mmsb::start(sim_config(&vfs))?;
    let p = s.create_page(PageSpec::new(10))?;
    vfs.fail_sync_after(1);
    assert!(matches!(s.update_page(p, sparse(0, &[1])), Err(mmsb::Error::Io { .. })));
    assert_eq!(s.page_info(p)?.epoch.0, 0, "nothing applied");
    assert!(matches!(s.update_page(p, sparse(0, &[1])), Err(mmsb::Error::Poisoned(_))));
    assert!(matches!(s.create_page(PageSpec::new(3)), Err(mmsb::Error::Poisoned(_))));
    assert!(matches!(s.checkpoint(), Err(mmsb::Error::Poisoned(_))));
    Ok(())
}

#[test]
fn failed_write_poisons_the_log() -> Result<()> {
    let vfs = SimVfs::new();
    let s = Mmsb::start(sim_config(&vfs).durability(Durability::Flush))?;
    let p = s.create_page(PageSpec::new(10))?;
    vfs.fail_write_after(1);
    assert!(matches!(s.update_page(p, sparse(0, &[1])), Err(mmsb::Error::Io { .. })));
    assert!(matches!(s.update_page(p, sparse(0, &[1])), Err(mmsb::Error::Poisoned(_))));
    drop(s);
    // The half-written record is a torn tail at the next start.
    vfs.crash(CrashMode::KeepAll);
    let s = Mmsb::start(sim_config(&vfs))?;
    assert_eq!(s.page_ids().len(), 1);
    assert_eq!(s.page_info(p)?.epoch.0, 0);
    Ok(())
}

#[test]
fn replay_to_lsn_timestamp_and_page_history() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s = Mmsb::start(Config::at(dir.path()))?;
    let p = s.create_page(PageSpec::new(16))?;
    let mut hashes = vec![s.state_hash().unwrap()];
    for i in 0..10u8 {
        s.update_page(p, sparse(i as u64, &[i + 1]))?;
        hashes.push(s.state_hash().unwrap());
    }
    s.sync()?;
    let vfs = mmsb::vfs::StdVfs;
    // LSN 1 is the create; LSN 1 + k is the k-th update.
    for k in 0..=10u64 {
        let img = replay::replay_to_lsn(&vfs, dir.path(), Some(Lsn(1 + k)), &Default::default())?;
        assert_eq!(img.state_hash(), hashes[k as usize]);
        let img = replay::replay_to_timestamp(&vfs, dir.path(), 1 + k, &Default::default())?;
        assert_eq!(img.state_hash(), hashes[k as usize]);
    }
    let hist = replay::page_history(&vfs, dir.path(), p, &Default::default())?;
    assert_eq!(hist.len(), 11);
    for (k, v) in hist.iter().enumerate() {
        assert_eq!(v.epoch.0, k as u64);
    }
    assert_eq!(hist[10].bytes[..10], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    Ok(())
}

#[test]
fn replay_before_the_oldest_history_kept_is_a_config_error_and_later_points_replay() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s = Mmsb::start(Config::at(dir.path()))?;
    let p = s.create_page(PageSpec::new(16))?;
    for i in 0..5u8 {
        s.update_page(p, sparse(u64::from(i), &[i + 1]))?;
    }
    // The checkpoint at LSN 6 retires the log before it.
    let ck = s.checkpoint()?;
    let at_ck = s.state_hash()?;
    s.update_page(p, sparse(9, &[7]))?;
    let end = s.state_hash()?;
    s.sync()?;
    let vfs = mmsb::vfs::StdVfs;
    let lim = Default::default();
    for early in [replay::Until::Lsn(Lsn(2)), replay::Until::Time(2)] {
        match replay::replay_to(&vfs, dir.path(), early, &lim) {
            Err(mmsb::Error::Config(m)) => assert!(m.contains("before the oldest history kept"), "{m}"),
            other => panic!("{early:?}: {other:?}"),
        }
    }
    let r = replay::replay_to(&vfs, dir.path(), replay::Until::Lsn(ck.lsn), &lim)?;
    assert_eq!(r.image.state_hash(), at_ck);
    let r = replay::replay_to(&vfs, dir.path(), replay::Until::End, &lim)?;
    assert_eq!((r.image.state_hash(), r.torn), (end, None));
    Ok(())
}

/// A checkpoint that does not verify, whose log its writing retired: the
/// state cannot be rebuilt, and opening it says which file is at fault
/// (not only that log records are missing).
#[test]
fn start_names_the_corrupt_checkpoint_that_retired_the_log() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ck = {
        let s = Mmsb::start(Config::at(dir.path()))?;
        let p = s.create_page(PageSpec::new(4096))?;
        for i in 0..5u8 {
            s.update_page(p, sparse(u64::from(i) * 100, &[i + 1; 50]))?;
        }
        let ck = s.checkpoint()?;
        s.stop()?;
        ck
    };
    let mut bytes = std::fs::read(&ck.path)?;
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&ck.path, &bytes)?;
    match Mmsb::start(Config::at(dir.path())) {
        Err(mmsb::Error::Corrupt { file, reason, .. }) => {
            assert_eq!(file.as_deref(), Some(ck.path.as_path()), "{reason}");
            assert!(reason.contains("does not verify") && reason.contains("retired"), "{reason}");
        }
        other => panic!("start over a corrupt covering checkpoint: {other:?}"),
    }
    // Nothing was removed or rewritten by the refusal.
    assert_eq!(std::fs::read(&ck.path)?, bytes);
    Ok(())
}

#[test]
fn diff_turns_one_state_into_another() -> Result<()> {
    let a = Mmsb::start(Config::temporary())?;
    let b = Mmsb::start(Config::temporary())?;
    for s in [&a, &b] {
        let p = s.create_page(PageSpec::new(64))?;
        s.update_page(p, sparse(1, &[1, 2]))?;
        s.create_page(PageSpec::new(9))?;
    }
    b.update_page(mmsb::PageId(1), sparse(40, &[9; 20]))?;
    b.update_page(mmsb::PageId(1), sparse(0, &[3]))?;
    b.delete_page(mmsb::PageId(2))?;
    let q = b.create_page(PageSpec::new(33))?;
    b.update_page(q, Payload::Full(vec![4; 33]))?;
    a.update_page(mmsb::PageId(2), sparse(0, &[1]))?;
    let (sa, sb) = (a.snapshot().unwrap(), b.snapshot().unwrap());
    let changes = replay::diff(&sa, &sb)?;
    let mut img: StateImage = sa.clone();
    img.apply_changes(&changes)?;
    assert_eq!(img.state_hash(), sb.state_hash());
    assert_eq!(img.state_hash(), b.state_hash().unwrap());
    assert!(replay::diff(&sb, &sb)?.is_empty());
    Ok(())
}

/// Every derived delta in the log: in a derived record (none is a delta
/// record), reading back as its general delta encoding would, with the
/// payload `Payload::diff` picks for its effect, and a provenance naming
/// each parent at the epoch it had when the page was recomputed. Covers full, dense and sparse payloads, one to three
/// parents, pages also written by the user in the same batch, immediate
/// and deferred propagation.
#[test]
fn derived_delta_records_are_the_general_encoding_of_each_diff() -> Result<()> {
    use mmsb::internals::codec::delta::{decode_delta_body, encode_delta_body, DeltaView};
    use mmsb::internals::codec::derived::DerivedView;
    use mmsb::internals::log::reader::{parse_segment_header, read_frame};
    use mmsb::internals::log::{RecordType, SEGMENT_HEAD_LEN};
    use mmsb::{Epoch, PageId, PropagationMode, Source};
    use std::collections::HashMap;

    for mode in [PropagationMode::Immediate, PropagationMode::Deferred] {
        let vfs = SimVfs::new();
        let s = Mmsb::start(sim_config(&vfs).with_propagation(mode))?;
        s.register_function("copy", 1, |ins: &[&[u8]], out: &mut [u8]| out.copy_from_slice(ins[0]))?;
        s.register_function("sum", 2, |ins: &[&[u8]], out: &mut [u8]| {
            for (i, o) in out.iter_mut().enumerate() {
                *o = ins.iter().fold(0u8, |a, p| a.wrapping_add(p[i]));
            }
        })?;
        let mut pages = Vec::new();
        for len in [8u64, 4096] {
            let a = s.create_page(PageSpec::new(len))?;
            let b = s.create_page(PageSpec::new(len))?;
            let c = s.create_page(PageSpec::new(len))?;
            let d = s.create_page(PageSpec::new(len))?;
            let e = s.create_page(PageSpec::new(len))?;
            s.declare_derived(c, "copy", &[a])?;
            s.declare_derived(d, "sum", &[a, b, c])?;
            s.declare_derived(e, "sum", &[d, c])?;
            pages.push((a, b, c, len as usize));
        }
        let mut k = 0u8;
        for &(a, b, c, len) in &pages {
            for step in 0..6u8 {
                k = k.wrapping_add(17);
                // Sparse: one byte; dense: every other byte; full: all.
                let one = sparse((u64::from(step) * 7) % len as u64, &[k]);
                let mut half = vec![0u8; len];
                half.iter_mut().step_by(2).for_each(|x| *x = k);
                let every = Payload::Full(vec![k; len]);
                let batch = match step {
                    0 => vec![Update::new(a, one)],
                    1 => vec![Update::new(a, Payload::Full(half))],
                    2 => vec![Update::new(a, every), Update::new(b, sparse(1, &[k, k]))],
                    3 => vec![Update::new(b, sparse(0, &[k]))],
                    // A derived page written in the same batch as its parent.
                    4 => vec![Update::new(a, sparse(2, &[k])), Update::new(c, sparse(3, &[k]))],
                    _ => vec![Update::new(a, Payload::Full(vec![k ^ 0x55; len]))],
                };
                s.update_batch(batch)?;
                s.propagate()?;
            }
        }
        let live: HashMap<PageId, Vec<u8>> =
            s.page_ids().into_iter().map(|p| (p, s.query_page(p).unwrap())).collect();
        drop(s);

        // Walk the log, replaying every delta onto zeroed pages.
        let seg = vfs.read(&only_segment(&vfs)).unwrap();
        let mut lsn = parse_segment_header(&seg)?.first_lsn;
        let mut pos = SEGMENT_HEAD_LEN;
        let limits = mmsb::Limits::default();
        let mut bytes: HashMap<PageId, Vec<u8>> = HashMap::new();
        let mut epochs: HashMap<PageId, Epoch> = HashMap::new();
        let mut derived = 0;
        while pos < seg.len() {
            let raw = read_frame(&seg, pos, lsn, &limits).unwrap();
            pos += raw.framed;
            lsn += 1;
            if raw.kind == RecordType::CreatePage as u8 {
                let id = PageId(u64::from_le_bytes(raw.body[0..8].try_into().unwrap()));
                let len = u64::from_le_bytes(raw.body[8..16].try_into().unwrap());
                bytes.insert(id, vec![0; len as usize]);
                epochs.insert(id, Epoch(0));
            }
            let deltas = if raw.kind == RecordType::Delta as u8 {
                vec![DeltaView::parse(raw.body, 0, &limits)?.to_delta()?]
            } else if raw.kind == RecordType::Derived as u8 {
                let mut views = Vec::new();
                DerivedView::parse(raw.body, 0, &limits)?.for_each(&limits, |v| views.push(v))?;
                views.iter().map(|v| v.to_delta()).collect::<Result<Vec<_>>>()?
            } else {
                continue;
            };
            for delta in deltas {
                let page = bytes.get_mut(&delta.page).unwrap();
                let before = page.clone();
                delta.payload.apply_to(page)?;
                let ep = epochs.get_mut(&delta.page).unwrap();
                *ep = Epoch(ep.get() + 1);
                let derived_record = raw.kind == RecordType::Derived as u8;
                assert_eq!(derived_record, matches!(delta.source, Source::Propagation(_)));
                if let Source::Propagation(prov) = &delta.source {
                    derived += 1;
                    let mut general = Vec::new();
                    encode_delta_body(&delta, &mut general)?;
                    assert_eq!(decode_delta_body(&general, &limits)?, delta, "delta {:?}", delta.id);
                    assert_eq!(delta.payload, Payload::diff(&before, page)?, "delta {:?}", delta.id);
                    assert!(delta.base_epoch.is_none() && delta.tag.is_none());
                    let want = if &*prov.function == "copy" { 1 } else { 2 };
                    assert_eq!(prov.version, want);
                    for (p, e) in &prov.parents {
                        assert_eq!(epochs[p], *e, "parent {p} of delta {:?}", delta.id);
                    }
                }
            }
        }
        assert!(derived >= 30, "{derived} derived deltas");
        assert_eq!(bytes, live);
        // `inspect` counts them, and the records holding them.
        let rep = mmsb::history::tools::inspect_with(&vfs, Path::new("/state"), &limits)?;
        assert_eq!(rep.derived_deltas, derived);
        let records = rep.by_type.get("derived").map_or(0, |r| r.0);
        assert!(records >= 1 && records < derived, "{records} derived records");
        assert!(rep.to_string().contains(&format!("bytes ({derived} deltas)")), "{rep}");
    }
    Ok(())
}

//! Error variants not covered by the other suites, each produced by feeding
//! the bad input through the public API.

use mmsb::StateImage;
use mmsb::{Change, Config, Error, Location, Metadata, Mmsb, PageId, PageSpec, Payload};
use std::sync::atomic::{AtomicU8, Ordering};

#[test]
fn page_exists_when_a_change_list_creates_a_page_twice() {
    let create = Change::CreatePage { id: PageId(1), len: 4, location: Location::Cpu, meta: Metadata::new() };
    let mut img = StateImage::new();
    let err = img.apply_changes(&[create.clone(), create]).unwrap_err();
    assert!(matches!(err, Error::PageExists(PageId(1))), "{err}");
    assert!(img.pages.is_empty(), "nothing of the failed list was applied");
}

#[test]
fn invariant_when_a_recompute_function_is_not_deterministic() -> mmsb::Result<()> {
    static CALLS: AtomicU8 = AtomicU8::new(0);
    let s = Mmsb::start(Config::temporary())?;
    s.register_function("counter", 1, |_inputs: &[&[u8]], out: &mut [u8]| {
        out[0] = CALLS.fetch_add(1, Ordering::Relaxed);
    })?;
    let a = s.create_page(PageSpec::new(1))?;
    let c = s.create_page(PageSpec::new(1))?;
    s.declare_derived(c, "counter", &[a])?;
    s.update_page(a, Payload::Full(vec![1]))?;
    let err = s.verify_recompute().unwrap_err();
    assert!(matches!(err, Error::Invariant(_)), "{err}");
    Ok(())
}

#[test]
fn gpu_memory_when_a_device_page_cannot_fit() -> mmsb::Result<()> {
    if !mmsb_tests::gpu_available("gpu_memory_when_a_device_page_cannot_fit") {
        return Ok(());
    }
    // Far beyond any card's memory (64 TiB), yet a valid page length once
    // the state's limit allows it.
    let mut cfg = Config::temporary();
    cfg.limits.max_page_len = u64::MAX;
    let s = Mmsb::start(cfg)?;
    let err = s.create_page(PageSpec::new(64 << 40).on(Location::Gpu(0))).unwrap_err();
    assert!(matches!(err, Error::GpuMemory { .. }), "{err}");
    assert!(s.page_ids().is_empty(), "no page was created");
    // Refused before it was logged: the state goes on.
    let p = s.create_page(PageSpec::new(8).on(Location::Gpu(0)))?;
    s.update_page(p, Payload::Full(vec![5; 8]))?;
    assert_eq!(s.query_page(p)?, vec![5; 8]);
    Ok(())
}

#[test]
fn a_page_longer_than_recovery_reads_is_refused_and_nothing_is_logged() -> mmsb::Result<()> {
    let dir = tempfile::tempdir()?;
    let s = Mmsb::start(Config::at(dir.path()))?;
    let max = s.limits().max_page_len;
    let err = s.create_page(PageSpec::new(max + 64)).unwrap_err();
    assert!(matches!(err, Error::InvalidPage { .. }), "{err}");
    // The state goes on, and starts again.
    let p = s.create_page(PageSpec::new(8))?;
    s.update_page(p, Payload::Full(vec![7; 8]))?;
    let hash = s.state_hash()?;
    s.stop()?;
    let s = Mmsb::start(Config::at(dir.path()))?;
    assert_eq!(s.state_hash()?, hash);
    assert_eq!(s.page_info(p)?.len, 8);
    Ok(())
}

#[test]
fn a_page_the_memory_cannot_hold_changes_nothing() -> mmsb::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = Config::at(dir.path());
    cfg.limits.max_page_len = u64::MAX;
    let s = Mmsb::start(cfg.clone())?;
    let p = s.create_page(PageSpec::new(8))?;
    // More than any address space gives one mapping.
    let err = s.create_page(PageSpec::new(1 << 50)).unwrap_err();
    assert!(matches!(err, Error::InvalidPage { .. }), "{err}");
    // Not logged, so the log is not poisoned and the id is not used up.
    let q = s.create_page(PageSpec::new(8))?;
    assert_eq!(q.0, p.0 + 1);
    s.update_page(q, Payload::Full(vec![1; 8]))?;
    let hash = s.state_hash()?;
    s.stop()?;
    let s = Mmsb::start(cfg)?;
    assert_eq!(s.state_hash()?, hash);
    Ok(())
}

#[test]
fn a_second_handle_on_a_directory_in_use_is_refused() -> mmsb::Result<()> {
    let dir = tempfile::tempdir()?;
    let first = Mmsb::start(Config::at(dir.path()))?;
    let p = first.create_page(PageSpec::new(8))?;
    match Mmsb::start(Config::at(dir.path())) {
        Err(Error::InUse { dir: d }) => assert_eq!(d, dir.path()),
        other => panic!("a second handle started: {other:?}"),
    }
    first.update_page(p, Payload::Full(vec![3; 8]))?;
    let hash = first.state_hash()?;
    // Stopping releases the directory, before the handle is dropped.
    first.stop()?;
    let second = Mmsb::start(Config::at(dir.path()))?;
    assert_eq!(second.state_hash()?, hash);
    drop(second);
    // Dropping releases it too.
    let third = Mmsb::start(Config::at(dir.path()))?;
    assert_eq!(third.state_hash()?, hash);
    Ok(())
}

#[test]
fn changes_after_stop_are_refused_reads_answer_and_pages_of_two_lengths_do_not_compare() -> mmsb::Result<()> {
    let s = Mmsb::start(Config::temporary())?;
    let a = s.create_page(PageSpec::new(8))?;
    let b = s.create_page(PageSpec::new(9))?;
    for err in [s.compare_pages(a, b).unwrap_err(), s.diff_pages(a, b).unwrap_err()] {
        match err {
            Error::InvalidPage { reason } => assert!(reason.contains("differ in length"), "{reason}"),
            other => panic!("{other}"),
        }
    }
    s.update_page(a, Payload::Full(vec![4; 8]))?;
    let hash = s.state_hash()?;
    s.stop()?;
    // Changes are refused; what is in memory still reads.
    assert!(matches!(s.update_page(a, Payload::Full(vec![0; 8])), Err(Error::Stopped)));
    assert!(matches!(s.create_page(PageSpec::new(1)), Err(Error::Stopped)));
    assert!(matches!(s.checkpoint(), Err(Error::Stopped)));
    assert!(matches!(s.sync(), Err(Error::Stopped)));
    assert_eq!(s.query_page(a)?, vec![4; 8]);
    assert_eq!(s.page_info(a)?.len, 8);
    assert_eq!(s.state_hash()?, hash);
    assert_eq!(s.compare_pages(a, a)?, 0);
    // Typed views read too, and typed writes are refused, even one that
    // would change nothing.
    assert_eq!(s.read::<u64>(a)?, u64::from_le_bytes([4; 8]));
    assert_eq!(s.read_slice::<u32>(a)?.0, vec![u32::from_le_bytes([4; 4]); 2]);
    assert!(matches!(s.write::<u64>(a, |_| {}), Err(Error::Stopped)));
    assert!(matches!(s.write::<u64>(a, |v| *v = 1), Err(Error::Stopped)));
    Ok(())
}

#[test]
fn a_change_list_creating_a_page_no_allocation_can_hold_is_refused() {
    let mut img = StateImage::new();
    for len in [u64::MAX, 1 << 63] {
        let create =
            Change::CreatePage { id: PageId(1), len, location: Location::Cpu, meta: Metadata::new() };
        let err = img.apply_changes(&[create]).unwrap_err();
        assert!(matches!(err, Error::InvalidPage { .. }), "{len}: {err}");
        assert!(img.pages.is_empty());
    }
}

#[test]
fn replay_of_a_missing_directory_and_history_of_an_unknown_page_are_errors() -> mmsb::Result<()> {
    let vfs = mmsb::vfs::StdVfs;
    let lim = Default::default();
    let missing = std::env::temp_dir().join("mmsb-no-such-state-directory");
    let err = mmsb::history::replay::replay_to_lsn(&vfs, &missing, None, &lim).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    let dir = tempfile::tempdir()?;
    let s = Mmsb::start(Config::at(dir.path()))?;
    let p = s.create_page(PageSpec::new(4))?;
    s.update_page(p, Payload::Full(vec![1; 4]))?;
    s.sync()?;
    assert_eq!(mmsb::history::replay::page_history(&vfs, dir.path(), p, &lim)?.len(), 2);
    let err = mmsb::history::replay::page_history(&vfs, dir.path(), PageId(999), &lim).unwrap_err();
    assert!(matches!(err, Error::PageNotFound(PageId(999))), "{err}");
    Ok(())
}

#[test]
fn settings_out_of_range_are_refused_before_the_directory_is_touched() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("state");
    type Setting = (&'static str, fn(&mut Config));
    let bad: [Setting; 4] = [
        ("segment_bytes", |c| c.segment_bytes = 1),
        ("segment_bytes", |c| c.segment_bytes = mmsb::MIN_SEGMENT_BYTES - 1),
        ("event_capacity", |c| c.event_capacity = 0),
        ("propagation_threads", |c| c.propagation_threads = mmsb::MAX_PROPAGATION_THREADS + 1),
    ];
    for (name, set) in bad {
        let mut cfg = Config::at(&dir);
        set(&mut cfg);
        match Mmsb::start(cfg) {
            Err(Error::Config(m)) => assert!(m.contains(name), "{m}"),
            other => panic!("{name}: {other:?}"),
        }
        assert!(!dir.exists(), "{name}: nothing created");
    }
    let mut cfg = Config::at(&dir);
    cfg.segment_bytes = mmsb::MIN_SEGMENT_BYTES;
    cfg.propagation_threads = mmsb::MAX_PROPAGATION_THREADS;
    let s = Mmsb::start(cfg).expect("the limits themselves are accepted");
    let p = s.create_page(PageSpec::new(600)).expect("page");
    for i in 0..10u8 {
        s.update_page(p, Payload::Full(vec![i; 600])).expect("write");
    }
}

//! The public API: pages, updates, batches, read guards, the macro, and an
//! error test for every variant the engine core produces.

use mmsb::{
    Config, DenseDelta, Epoch, Error, Location, Mmsb, PageId, PageSpec, Payload, SparseDelta, Update,
};

fn sparse(off: u64, bytes: &[u8]) -> Payload {
    Payload::Sparse(SparseDelta::from_pairs([(off, bytes)]).unwrap())
}

#[test]
fn create_update_query() -> mmsb::Result<()> {
    let s = Mmsb::start(Config::temporary())?;
    let a = s.create_page(PageSpec::new(10).named("a"))?;
    let b = s.create_page(PageSpec::new(1))?;
    assert_eq!((a, b), (PageId(1), PageId(2)), "ids are issued in order");
    assert_eq!(s.update_page(a, sparse(2, &[1, 2]))?, Epoch(1));
    assert_eq!(s.update_page(a, Payload::Full(vec![9; 10]))?, Epoch(2));
    assert_eq!(s.query_page(a)?, vec![9; 10]);
    {
        let r = s.read_page(a)?;
        assert_eq!(r.bytes(), &[9; 10]);
        assert_eq!(r.epoch(), Epoch(2));
        assert_eq!(r.page().name(), Some("a"));
    }
    assert_eq!(s.page_ids(), vec![a, b]);
    s.verify()?;
    s.stop()
}

#[test]
fn ids_are_deterministic() -> mmsb::Result<()> {
    let run = || -> mmsb::Result<Vec<PageId>> {
        let s = Mmsb::start(Config::temporary())?;
        let mut ids = Vec::new();
        for len in [5u64, 6, 7] {
            ids.push(s.create_page(PageSpec::new(len))?);
        }
        s.delete_page(ids[1])?;
        ids.push(s.create_page(PageSpec::new(8))?);
        Ok(ids)
    };
    assert_eq!(run()?, run()?);
    assert_eq!(run()?, vec![PageId(1), PageId(2), PageId(3), PageId(4)], "deleted ids are not reused");
    Ok(())
}

#[test]
fn batch_is_all_or_nothing() -> mmsb::Result<()> {
    let s = Mmsb::start(Config::temporary())?;
    let a = s.create_page(PageSpec::new(4))?;
    let b = s.create_page(PageSpec::new(4))?;
    let ok = Update::new(a, Payload::Full(vec![1; 4]));
    let bad = Update::new(b, sparse(3, &[1, 2]));
    let err = s.update_batch(vec![ok.clone(), bad]).unwrap_err();
    assert!(matches!(err, Error::InvalidDelta { page: Some(p), .. } if p == b), "{err}");
    assert_eq!(s.query_page(a)?, vec![0; 4], "first update of a failed batch is not applied");
    assert_eq!(s.page_info(a)?.epoch, Epoch(0));
    let epochs = s.update_batch(vec![ok.clone(), ok, Update::new(b, sparse(0, &[5]))])?;
    assert_eq!(epochs, vec![Epoch(1), Epoch(2), Epoch(1)]);
    Ok(())
}

#[test]
fn base_epoch_checks_within_a_batch() -> mmsb::Result<()> {
    let s = Mmsb::start(Config::temporary())?;
    let a = s.create_page(PageSpec::new(2))?;
    s.update_batch(vec![
        Update::new(a, sparse(0, &[1])).at_epoch(Epoch(0)),
        Update::new(a, sparse(1, &[2])).at_epoch(Epoch(1)),
    ])?;
    let err = s.update_page_at(a, sparse(0, &[3]), Epoch(1)).unwrap_err();
    assert!(matches!(err, Error::StaleEpoch { expected: Epoch(1), actual: Epoch(2), .. }), "{err}");
    assert_eq!(s.query_page(a)?, vec![1, 2]);
    Ok(())
}

#[test]
fn macro_declares_pages() -> mmsb::Result<()> {
    let state = Mmsb::start(Config::temporary())?;
    mmsb::mmsb! { state;
        page small(3);
        page big(1 << 16) on Location::Cpu;
    }
    assert_eq!(state.page_info(small)?.len, 3);
    assert_eq!(state.page_info(big)?.meta["name"], b"big");
    Ok(())
}

#[test]
fn large_and_odd_pages() -> mmsb::Result<()> {
    let s = Mmsb::start(Config::temporary())?;
    for len in [1u64, 63, 65, 4097, (64 << 20) + 3] {
        let p = s.create_page(PageSpec::new(len))?;
        let mask = (0..len).map(|i| (i % 3 == 0).then_some(0xEE)).collect::<Vec<_>>();
        s.update_page(p, Payload::Dense(DenseDelta::from_options(&mask)?))?;
        let r = s.read_page(p)?;
        assert!(r.bytes().iter().enumerate().all(|(i, &b)| b == if i % 3 == 0 { 0xEE } else { 0 }));
    }
    Ok(())
}

#[test]
fn concurrent_readers_and_writers() -> mmsb::Result<()> {
    let s = Mmsb::start(Config::temporary())?;
    let pages: Vec<PageId> = (0..4).map(|_| s.create_page(PageSpec::new(64))).collect::<Result<_, _>>()?;
    std::thread::scope(|sc| {
        for t in 0..2u8 {
            let (s, pages) = (&s, &pages);
            sc.spawn(move || {
                for i in 0..500u32 {
                    let p = pages[(i as usize + t as usize) % pages.len()];
                    s.update_page(p, Payload::Full(vec![t; 64])).unwrap();
                    let bytes = s.query_page(p).unwrap();
                    assert!(bytes.iter().all(|&b| b == bytes[0]), "torn read");
                }
            });
        }
    });
    let total: u64 = pages.iter().map(|&p| s.page_info(p).map(|i| i.epoch.0)).sum::<Result<_, _>>()?;
    assert_eq!(total, 1000);
    s.verify()
}

// ---- one test per error variant the core produces ----

#[test]
fn error_page_not_found() -> mmsb::Result<()> {
    let s = Mmsb::start(Config::temporary())?;
    assert!(matches!(s.update_page(PageId(7), sparse(0, &[1])), Err(Error::PageNotFound(PageId(7)))));
    assert!(matches!(s.query_page(PageId(7)), Err(Error::PageNotFound(_))));
    assert!(matches!(s.delete_page(PageId(7)), Err(Error::PageNotFound(_))));
    Ok(())
}

#[test]
fn error_invalid_delta() -> mmsb::Result<()> {
    assert!(matches!(
        SparseDelta::from_pairs([(4, &[1u8][..]), (2, &[1u8][..])]),
        Err(Error::InvalidDelta { .. })
    ));
    assert!(matches!(DenseDelta::from_words(vec![0; 2], vec![0; 10]), Err(Error::InvalidDelta { .. })));
    let s = Mmsb::start(Config::temporary())?;
    let p = s.create_page(PageSpec::new(8))?;
    let err = s.update_page(p, Payload::Full(vec![1; 9])).unwrap_err();
    assert!(matches!(err, Error::InvalidDelta { page: Some(q), .. } if q == p));
    assert_eq!(s.page_info(p)?.epoch, Epoch(0));
    Ok(())
}

#[test]
fn error_invalid_page() -> mmsb::Result<()> {
    let s = Mmsb::start(Config::temporary())?;
    assert!(matches!(s.create_page(PageSpec::new(0)), Err(Error::InvalidPage { .. })));
    assert!(matches!(s.create_page(PageSpec::new(u64::MAX)), Err(Error::InvalidPage { .. })));
    let big_meta = PageSpec::new(1).meta("k", vec![0u8; 5000]);
    assert!(matches!(s.create_page(big_meta), Err(Error::InvalidPage { .. })));
    assert!(s.page_ids().is_empty(), "nothing created by failed calls");
    Ok(())
}

#[test]
fn error_stale_epoch() -> mmsb::Result<()> {
    let s = Mmsb::start(Config::temporary())?;
    let p = s.create_page(PageSpec::new(1))?;
    assert!(matches!(s.update_page_at(p, sparse(0, &[1]), Epoch(3)), Err(Error::StaleEpoch { .. })));
    Ok(())
}

#[test]
fn error_io_on_unusable_directory() -> mmsb::Result<()> {
    let tmp = tempfile::NamedTempFile::new().map_err(Error::from)?;
    let err = Mmsb::start(Config::at(tmp.path().join("sub"))).unwrap_err();
    assert!(matches!(err, Error::Io { path: Some(_), .. }), "{err}");
    Ok(())
}

#[test]
fn error_config_on_unknown_location() {
    assert!(matches!("tpu".parse::<Location>(), Err(Error::Config(_))));
    assert_eq!("gpu:2".parse::<Location>().unwrap(), Location::Gpu(2));
}

#[test]
fn error_stopped() -> mmsb::Result<()> {
    let s = Mmsb::start(Config::temporary())?;
    let p = s.create_page(PageSpec::new(1))?;
    s.stop()?;
    assert!(matches!(s.update_page(p, sparse(0, &[1])), Err(Error::Stopped)));
    assert!(matches!(s.create_page(PageSpec::new(1)), Err(Error::Stopped)));
    assert!(matches!(s.stop(), Err(Error::Stopped)));
    Ok(())
}

fn copy(ins: &[&[u8]], out: &mut [u8]) {
    out.copy_from_slice(ins[0]);
}

/// Run `f` on this thread while another thread holds a read guard on
/// `page` of `s` (taken before `f` starts, dropped 100 ms later).
fn while_read_elsewhere(s: &Mmsb, page: PageId, f: impl FnOnce() -> mmsb::Result<()>) -> mmsb::Result<()> {
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let r = s.read_page(page).expect("read");
            held_tx.send(()).expect("send");
            std::thread::sleep(std::time::Duration::from_millis(100));
            drop(r);
        });
        held_rx.recv().map_err(|e| Error::Invariant(e.to_string()))?;
        f()
    })
}

/// A change that would have to wait for a read guard held on its own thread
/// is refused with `PageBorrowed` instead of waiting forever, and changes
/// nothing; a guard held on another thread is waited for.
#[test]
fn a_write_behind_a_read_guard_of_the_same_thread_is_refused_not_a_hang() -> mmsb::Result<()> {
    let s = Mmsb::start(Config::temporary())?;
    s.register_function("copy", 1, copy)?;
    let (a, c) = (s.create_page(PageSpec::new(2))?, s.create_page(PageSpec::new(2))?);
    s.declare_derived(c, "copy", &[a])?;
    s.update_page(a, Payload::Full(vec![1, 1]))?;
    let (hash, time) = (s.state_hash()?, s.timestamp());

    // The page itself, held twice: both guards must go.
    let r1 = s.read_page(a)?;
    let r2 = s.read_page(a)?;
    assert!(
        matches!(s.update_page(a, Payload::Full(vec![2, 2])), Err(Error::PageBorrowed { page }) if page == a)
    );
    drop(r1);
    assert!(matches!(s.write::<u16>(a, |v| *v = 7), Err(Error::PageBorrowed { page }) if page == a));
    drop(r2);
    // A derived page the write's propagation would change.
    let rc = s.read_page(c)?;
    assert!(
        matches!(s.update_page(a, Payload::Full(vec![3, 3])), Err(Error::PageBorrowed { page }) if page == c)
    );
    assert_eq!(rc.bytes(), [1, 1]);
    drop(rc);
    assert_eq!((s.state_hash()?, s.timestamp()), (hash, time), "nothing changed");
    s.update_page(a, Payload::Full(vec![4, 4]))?;
    assert_eq!(s.query_page(c)?, [4, 4]);

    // A guard on another thread is waited for.
    while_read_elsewhere(&s, c, || s.update_page(a, Payload::Full(vec![5, 5])).map(drop))?;
    assert_eq!(s.query_page(c)?, [5, 5]);
    s.verify()
}

#[test]
fn a_deferred_propagation_behind_a_read_guard_of_the_same_thread_is_refused() -> mmsb::Result<()> {
    let s = Mmsb::start(Config::temporary().with_propagation(mmsb::PropagationMode::Deferred))?;
    s.register_function("copy", 1, copy)?;
    let (a, c) = (s.create_page(PageSpec::new(2))?, s.create_page(PageSpec::new(2))?);
    s.declare_derived(c, "copy", &[a])?;
    s.propagate()?;
    let rc = s.read_page(c)?;
    s.update_page(a, Payload::Full(vec![6, 6]))?;
    assert!(matches!(s.propagate(), Err(Error::PageBorrowed { page }) if page == c));
    assert_eq!(rc.bytes(), [0, 0]);
    drop(rc);
    s.propagate()?;
    assert_eq!(s.query_page(c)?, [6, 6]);
    Ok(())
}

/// A guard on a page of one state says nothing about the page with the
/// same id in another state of the process: a write there waits for that
/// page's own readers, and goes through.
#[test]
fn a_read_guard_in_one_state_does_not_refuse_writes_in_another() -> mmsb::Result<()> {
    let (one, two) = (Mmsb::start(Config::temporary())?, Mmsb::start(Config::temporary())?);
    let (p1, p2) = (one.create_page(PageSpec::new(2))?, two.create_page(PageSpec::new(2))?);
    assert_eq!(p1, p2, "the same id in both states");
    let mine = one.read_page(p1)?;
    // The lock is taken by the other thread: this write waits for it.
    while_read_elsewhere(&two, p2, || two.update_page(p2, Payload::Full(vec![8, 8])).map(drop))?;
    assert_eq!(two.query_page(p2)?, [8, 8]);
    assert_eq!(mine.bytes(), [0, 0]);
    Ok(())
}

//! The dependency graph survives a restart: it is logged, replayed and
//! checkpointed, and recovered derived pages keep working once the
//! application registers its functions again.

use mmsb::EdgeKind;
use mmsb::{Config, Mmsb, PageId, PageSpec, Payload};

fn sum(inputs: &[&[u8]], out: &mut [u8]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = inputs.iter().fold(0u8, |acc, x| acc.wrapping_add(x[i]));
    }
}

/// `N` new pages of 4 bytes.
fn pages<const N: usize>(s: &Mmsb) -> mmsb::Result<[PageId; N]> {
    let mut ids = [PageId(0); N];
    for id in &mut ids {
        *id = s.create_page(PageSpec::new(4))?;
    }
    Ok(ids)
}

/// Builds a, b, c = sum(a, b), d with a control edge a → d; writes a and b.
fn build(s: &Mmsb) -> mmsb::Result<[PageId; 4]> {
    s.register_function("sum", 1, sum)?;
    let a = s.create_page(PageSpec::new(4))?;
    let b = s.create_page(PageSpec::new(4))?;
    let c = s.create_page(PageSpec::new(4))?;
    let d = s.create_page(PageSpec::new(4))?;
    s.declare_derived(c, "sum", &[a, b])?;
    s.add_edge(a, d, EdgeKind::Control)?;
    s.update_page(a, Payload::Full(vec![1, 2, 3, 4]))?;
    s.update_page(b, Payload::Full(vec![10, 20, 30, 40]))?;
    assert_eq!(s.query_page(c)?, vec![11, 22, 33, 44]);
    Ok([a, b, c, d])
}

fn check_after_reopen(s: &Mmsb, [a, b, c, d]: [PageId; 4], hash: u128) -> mmsb::Result<()> {
    assert_eq!(s.state_hash()?, hash, "pages come back byte for byte");
    let der = s.derivation(c)?.expect("c is still derived");
    assert_eq!((der.function.as_str(), der.version, der.parents.clone()), ("sum", 1, vec![a, b]));
    let mut kids = s.children(a)?;
    kids.sort_by_key(|(p, _)| *p);
    assert_eq!(kids, vec![(c, EdgeKind::Data), (d, EdgeKind::Control)]);
    // Registering the recorded version again re-derives nothing.
    assert!(s.register_function("sum", 1, sum)?.is_empty());
    assert_eq!(s.state_hash()?, hash, "registration changed nothing");
    s.update_page(b, Payload::Full(vec![0, 0, 0, 1]))?;
    assert_eq!(s.query_page(c)?, vec![1, 2, 3, 5], "c is recomputed after recovery");
    s.verify()
}

#[test]
fn graph_survives_reopen_from_the_log() -> mmsb::Result<()> {
    let dir = tempfile::tempdir().map_err(mmsb::Error::from)?;
    let (ids, hash) = {
        let s = Mmsb::start(Config::at(dir.path()))?;
        let ids = build(&s)?;
        let h = s.state_hash()?;
        s.stop()?;
        (ids, h)
    };
    let s = Mmsb::start(Config::at(dir.path()))?;
    check_after_reopen(&s, ids, hash)
}

#[test]
fn graph_survives_a_checkpoint() -> mmsb::Result<()> {
    let dir = tempfile::tempdir().map_err(mmsb::Error::from)?;
    let (ids, hash) = {
        let s = Mmsb::start(Config::at(dir.path()))?;
        let ids = build(&s)?;
        s.checkpoint()?;
        let h = s.state_hash()?;
        s.stop()?;
        (ids, h)
    };
    let s = Mmsb::start(Config::at(dir.path()))?;
    assert_eq!(s.snapshot()?.graph.derived.len(), 1);
    check_after_reopen(&s, ids, hash)
}

/// A page a control parent's write left stale still reads stale after a
/// restart, whether recovery replays that write from the log, starts from
/// a checkpoint taken after it, or both; a page written since reads fresh,
/// and so does a derived page recomputed after its control parent's write.
#[test]
fn control_staleness_survives_a_restart() -> mmsb::Result<()> {
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Checkpoint {
        None,
        Middle,
        End,
    }
    for at in [Checkpoint::None, Checkpoint::Middle, Checkpoint::End] {
        let dir = tempfile::tempdir().map_err(mmsb::Error::from)?;
        let (pages, want) = {
            let s = Mmsb::start(Config::at(dir.path()))?;
            // d is stale: its control parent a was written.
            let [a, b, c, d] = build(&s)?;
            assert!(s.is_stale(d)?);
            if at == Checkpoint::Middle {
                s.checkpoint()?;
                // Written after the checkpoint that named it stale.
                s.update_page(d, Payload::Full(vec![9; 4]))?;
            }
            // e is written after its control parent: fresh.
            let e = s.create_page(PageSpec::new(4))?;
            s.add_edge(a, e, EdgeKind::Control)?;
            s.update_page(a, Payload::Full(vec![2, 2, 2, 2]))?;
            s.update_page(e, Payload::Full(vec![5; 4]))?;
            // c (derived) is made stale by f, then recomputed from b: fresh;
            // its recompute leaves its control child g stale.
            let f = s.create_page(PageSpec::new(4))?;
            let g = s.create_page(PageSpec::new(4))?;
            s.add_edge(f, c, EdgeKind::Control)?;
            s.add_edge(c, g, EdgeKind::Control)?;
            s.update_page(f, Payload::Full(vec![1; 4]))?;
            assert!(s.is_stale(c)?);
            s.update_page(b, Payload::Full(vec![3; 4]))?;
            let pages = [a, b, c, d, e, f, g];
            let want: Vec<bool> = pages.iter().map(|&p| s.is_stale(p)).collect::<mmsb::Result<_>>()?;
            // a wrote d again after the middle checkpoint's write of d.
            assert_eq!(want, [false, false, false, true, false, false, true], "{at:?}");
            if at == Checkpoint::End {
                s.checkpoint()?;
            }
            s.stop()?;
            (pages, want)
        };
        let s = Mmsb::start(Config::at(dir.path()))?;
        let got: Vec<bool> = pages.iter().map(|&p| s.is_stale(p)).collect::<mmsb::Result<_>>()?;
        assert_eq!(got, want, "{at:?}: a, b, c, d, e, f, g");
        let named: Vec<PageId> = s.recovery_report().due.stale.iter().copied().collect();
        assert_eq!(named, [pages[3], pages[6]], "{at:?}");
        let text = s.recovery_report().to_string();
        assert!(text.contains("stale through control edges: 2 pages"), "{at:?}: {text}");
        // A write still refreshes a recovered stale page, and it stays so.
        s.update_page(pages[6], Payload::Full(vec![4; 4]))?;
        s.stop()?;
        let s = Mmsb::start(Config::at(dir.path()))?;
        assert!(!s.is_stale(pages[6])?, "{at:?}");
        assert!(s.is_stale(pages[3])?, "{at:?}");
    }
    Ok(())
}

/// The same when the propagation changes another page: its deltas are in
/// the log, the unchanged page has none (and there is no settled record),
/// and recovery still knows it was recomputed.
#[test]
fn a_recompute_that_changes_nothing_beside_one_that_does_refreshes_across_a_restart() -> mmsb::Result<()> {
    let dir = tempfile::tempdir().map_err(mmsb::Error::from)?;
    let cfg = || Config::at(dir.path()).with_propagation(mmsb::PropagationMode::Deferred);
    let keep = |_: &[&[u8]], _: &mut [u8]| {};
    let copy = |i: &[&[u8]], o: &mut [u8]| o.copy_from_slice(i[0]);
    let register = |s: &Mmsb| -> mmsb::Result<()> {
        s.register_function("keep", 1, keep)?;
        s.register_function("copy", 1, copy)?;
        Ok(())
    };
    let (h, k) = {
        let s = Mmsb::start(cfg())?;
        register(&s)?;
        let [p, q, h] = pages(&s)?;
        let k = s.create_page(PageSpec::new(4))?;
        s.update_page(q, Payload::Full(vec![7; 4]))?;
        s.declare_derived(h, "keep", &[q])?;
        s.declare_derived(k, "copy", &[q])?;
        s.add_edge(p, h, EdgeKind::Control)?;
        s.update_page(p, Payload::Full(vec![1; 4]))?;
        assert!(s.is_stale(h)?);
        s.propagate()?;
        assert!(!s.is_stale(h)?, "recomputed, to the same bytes");
        assert_eq!(s.query_page(k)?, vec![7; 4], "recomputed, to new bytes");
        s.stop()?;
        (h, k)
    };
    let s = Mmsb::start(cfg())?;
    register(&s)?;
    assert!(!s.is_stale(h)?, "{}", s.recovery_report());
    assert!(!s.is_stale(k)?);
    assert!(s.recovery_report().due.stale.is_empty(), "{}", s.recovery_report());
    assert!(!s.recovery_report().to_string().contains("stale through"), "{}", s.recovery_report());
    Ok(())
}

/// A derived page queued for recomputation and made stale by a control
/// parent stays stale across a restart while only user writes follow (no
/// propagation ran); a stale page that is deleted is no longer named.
#[test]
fn user_writes_do_not_refresh_a_stale_queued_page_and_deleted_pages_are_not_named() -> mmsb::Result<()> {
    let dir = tempfile::tempdir().map_err(mmsb::Error::from)?;
    let cfg = || Config::at(dir.path()).with_propagation(mmsb::PropagationMode::Deferred);
    let keep = |_: &[&[u8]], _: &mut [u8]| {};
    let (h, gone) = {
        let s = Mmsb::start(cfg())?;
        s.register_function("keep", 1, keep)?;
        let [p, q, h, u, gone] = pages(&s)?;
        s.declare_derived(h, "keep", &[q])?;
        s.add_edge(p, h, EdgeKind::Control)?;
        s.add_edge(p, gone, EdgeKind::Control)?;
        s.update_page(p, Payload::Full(vec![1; 4]))?;
        assert!(s.is_stale(h)? && s.is_stale(gone)?);
        // A user write elsewhere, and a stale page deleted; no propagation.
        s.update_page(u, Payload::Full(vec![2; 4]))?;
        s.delete_page(gone)?;
        assert!(s.is_stale(h)?);
        s.stop()?;
        (h, gone)
    };
    let s = Mmsb::start(cfg())?;
    s.register_function("keep", 1, keep)?;
    assert!(s.is_stale(h)?, "{}", s.recovery_report());
    let named: Vec<PageId> = s.recovery_report().due.stale.iter().copied().collect();
    assert_eq!(named, [h], "the deleted page {gone} is not named");
    Ok(())
}

/// A derived page queued for recomputation and made stale by a control
/// parent is fresh once a propagation recomputes it, even when its bytes
/// do not change (no delta is logged for it), and stays fresh after a
/// restart.
#[test]
fn a_recompute_that_changes_nothing_still_refreshes_across_a_restart() -> mmsb::Result<()> {
    let dir = tempfile::tempdir().map_err(mmsb::Error::from)?;
    let cfg = || Config::at(dir.path()).with_propagation(mmsb::PropagationMode::Deferred);
    let keep = |_: &[&[u8]], _: &mut [u8]| {};
    let h = {
        let s = Mmsb::start(cfg())?;
        s.register_function("keep", 1, keep)?;
        let [p, q, h] = pages(&s)?;
        s.declare_derived(h, "keep", &[q])?;
        s.add_edge(p, h, EdgeKind::Control)?;
        s.update_page(p, Payload::Full(vec![1; 4]))?;
        assert!(s.is_stale(h)?);
        s.propagate()?;
        assert!(!s.is_stale(h)?, "recomputed, to the same bytes");
        s.stop()?;
        h
    };
    let s = Mmsb::start(cfg())?;
    s.register_function("keep", 1, keep)?;
    assert!(!s.is_stale(h)?);
    assert!(s.recovery_report().due.stale.is_empty());
    Ok(())
}

#[test]
fn removed_edges_and_deleted_pages_stay_removed() -> mmsb::Result<()> {
    let dir = tempfile::tempdir().map_err(mmsb::Error::from)?;
    let ([a, _b, c, d], hash) = {
        let s = Mmsb::start(Config::at(dir.path()))?;
        let ids = build(&s)?;
        s.remove_edge(ids[0], ids[3])?;
        s.checkpoint()?;
        s.delete_page(ids[1])?;
        let h = s.state_hash()?;
        s.stop()?;
        (ids, h)
    };
    let s = Mmsb::start(Config::at(dir.path()))?;
    assert_eq!(s.state_hash()?, hash);
    assert_eq!(s.children(a)?, vec![(c, EdgeKind::Data)]);
    assert!(s.children(d).unwrap_or_default().is_empty());
    let der = s.derivation(c)?.expect("still derived");
    assert_eq!(der.parents, vec![a], "the deleted parent left the parent list");
    let live = s.snapshot()?.graph;
    let offline =
        mmsb::history::replay::replay_to_lsn(&mmsb::vfs::StdVfs, dir.path(), None, &Default::default())?
            .graph;
    assert_eq!(live, offline, "offline replay rebuilds the same graph");
    Ok(())
}

/// A derived page whose data parent was deleted is recomputed from the
/// parent it keeps: at once in immediate mode, and after a restart still
/// owed (stale, queued) in deferred mode when the stop came first.
#[test]
fn a_deleted_parent_leaves_its_child_recomputed_or_owed_across_a_restart() -> mmsb::Result<()> {
    for mode in [mmsb::PropagationMode::Immediate, mmsb::PropagationMode::Deferred] {
        let dir = tempfile::tempdir().map_err(mmsb::Error::from)?;
        let cfg = || Config::at(dir.path()).with_propagation(mode);
        let (b, c) = {
            let s = Mmsb::start(cfg())?;
            s.register_function("sum", 1, sum)?;
            let a = s.create_page(PageSpec::new(4))?;
            let b = s.create_page(PageSpec::new(4))?;
            let c = s.create_page(PageSpec::new(4))?;
            s.declare_derived(c, "sum", &[a, b])?;
            s.update_page(a, Payload::Full(vec![1, 2, 3, 4]))?;
            s.update_page(b, Payload::Full(vec![10, 20, 30, 40]))?;
            s.propagate()?;
            s.delete_page(a)?;
            s.stop()?;
            (b, c)
        };
        let s = Mmsb::start(cfg())?;
        s.register_function("sum", 1, sum)?;
        if mode == mmsb::PropagationMode::Deferred {
            assert!(s.is_stale(c)?, "the recompute is still owed");
            assert!(s.recovery_report().due.forced.contains(&c));
            s.propagate()?;
        }
        assert_eq!(s.query_page(c)?, s.query_page(b)?, "{mode:?}");
        assert!(!s.is_stale(c)?);
        assert_eq!(s.verify_recompute()?, 1, "{mode:?}: c checked");
    }
    Ok(())
}

/// In deferred mode: a, b, c = sum(a, b) computed, then a written and its
/// propagation left queued.
fn queued_write(s: &Mmsb) -> mmsb::Result<(PageId, PageId)> {
    s.register_function("sum", 1, sum)?;
    let a = s.create_page(PageSpec::new(4))?;
    let b = s.create_page(PageSpec::new(4))?;
    let c = s.create_page(PageSpec::new(4))?;
    s.declare_derived(c, "sum", &[a, b])?;
    s.propagate()?;
    s.update_page(a, Payload::Full(vec![1, 2, 3, 4]))?;
    Ok((a, c))
}

#[test]
fn deferred_work_left_at_a_stop_is_done_after_reopen() -> mmsb::Result<()> {
    let dir = tempfile::tempdir().map_err(mmsb::Error::from)?;
    let cfg = || Config::at(dir.path()).with_propagation(mmsb::PropagationMode::Deferred);
    let (a, c) = {
        let s = Mmsb::start(cfg())?;
        let (a, c) = queued_write(&s)?;
        s.stop()?;
        (a, c)
    };
    let s = Mmsb::start(cfg())?;
    // A written page owes its children's recompute (and nothing is forced):
    // work is due.
    let due = &s.recovery_report().due;
    assert_eq!((due.written.len(), due.forced.len()), (1, 0), "{}", s.recovery_report());
    assert!(!due.is_empty(), "{}", s.recovery_report());
    s.register_function("sum", 1, sum)?;
    s.propagate()?;
    assert_eq!(s.query_page(a)?, vec![1, 2, 3, 4]);
    assert_eq!(s.query_page(c)?, vec![1, 2, 3, 4], "the write queued before the stop is propagated");
    Ok(())
}

#[test]
fn deferred_work_queued_at_a_checkpoint_is_done_after_reopen() -> mmsb::Result<()> {
    let dir = tempfile::tempdir().map_err(mmsb::Error::from)?;
    let cfg = || Config::at(dir.path()).with_propagation(mmsb::PropagationMode::Deferred);
    let (a, c, d) = {
        let s = Mmsb::start(cfg())?;
        let (a, c) = queued_write(&s)?;
        // Declared, never computed: queued too.
        let d = s.create_page(PageSpec::new(4))?;
        s.declare_derived(d, "sum", &[a, a])?;
        s.checkpoint()?;
        s.stop()?;
        (a, c, d)
    };
    let s = Mmsb::start(cfg())?;
    let due = &s.recovery_report().due;
    assert_eq!((due.written.len(), due.forced.len()), (1, 1), "{}", s.recovery_report());
    // Owed work is not empty, and the report says how much is queued.
    assert!(!due.is_empty());
    let text = s.recovery_report().to_string();
    assert!(text.contains("queued propagation: children of 1 written pages, 1 derived pages"), "{text}");
    s.register_function("sum", 1, sum)?;
    s.propagate()?;
    assert_eq!(s.query_page(a)?, vec![1, 2, 3, 4]);
    assert_eq!(s.query_page(c)?, vec![1, 2, 3, 4]);
    assert_eq!(s.query_page(d)?, vec![2, 4, 6, 8]);
    // Done now: a checkpoint and a reopen owe nothing.
    s.checkpoint()?;
    s.stop()?;
    let s = Mmsb::start(cfg())?;
    assert!(s.recovery_report().due.is_empty(), "{}", s.recovery_report());
    assert!(!s.recovery_report().to_string().contains("queued propagation"), "{}", s.recovery_report());
    Ok(())
}

#[test]
fn immediate_mode_runs_recovered_work_once_its_functions_are_registered() -> mmsb::Result<()> {
    let dir = tempfile::tempdir().map_err(mmsb::Error::from)?;
    let (a, c) = {
        let s = Mmsb::start(Config::at(dir.path()).with_propagation(mmsb::PropagationMode::Deferred))?;
        s.register_function("sum", 1, sum)?;
        s.register_function("other", 1, sum)?;
        let a = s.create_page(PageSpec::new(4))?;
        let c = s.create_page(PageSpec::new(4))?;
        let e = s.create_page(PageSpec::new(4))?;
        s.declare_derived(c, "sum", &[a])?;
        s.declare_derived(e, "other", &[a])?;
        s.propagate()?;
        s.update_page(a, Payload::Full(vec![5, 6, 7, 8]))?;
        s.stop()?;
        (a, c)
    };
    // Reopened in immediate mode: registering one of the two functions
    // runs nothing (the other is needed too), the second runs the work.
    let s = Mmsb::start(Config::at(dir.path()))?;
    s.register_function("sum", 1, sum)?;
    assert_eq!(s.query_page(c)?, vec![0, 0, 0, 0]);
    s.register_function("other", 1, sum)?;
    assert_eq!(s.query_page(c)?, s.query_page(a)?);
    s.verify()
}

#[test]
fn a_propagation_that_changes_nothing_leaves_nothing_due() -> mmsb::Result<()> {
    for mode in [mmsb::PropagationMode::Immediate, mmsb::PropagationMode::Deferred] {
        let dir = tempfile::tempdir().map_err(mmsb::Error::from)?;
        let cfg = || Config::at(dir.path()).with_propagation(mode);
        {
            let s = Mmsb::start(cfg())?;
            // A function whose output never changes: every recompute is cut off.
            s.register_function("zero", 1, |_: &[&[u8]], _: &mut [u8]| {})?;
            let a = s.create_page(PageSpec::new(4))?;
            let c = s.create_page(PageSpec::new(4))?;
            s.declare_derived(c, "zero", &[a])?;
            s.propagate()?;
            s.update_page(a, Payload::Full(vec![1, 2, 3, 4]))?;
            let stats = s.propagate()?;
            if mode == mmsb::PropagationMode::Deferred {
                assert_eq!((stats.recomputed, stats.cut_off), (1, 1));
            }
            s.stop()?;
        }
        let s = Mmsb::start(cfg())?;
        assert!(s.recovery_report().due.is_empty(), "{mode:?}: {}", s.recovery_report());
        let rep = mmsb::history::tools::inspect(dir.path())?;
        assert!(rep.by_type.contains_key("settled"), "{mode:?}: {rep}");
    }
    Ok(())
}

/// Before its functions are registered again, a recovered state refuses a
/// deletion whose recompute could not run in immediate mode (nothing
/// changes), and queues it in deferred mode.
#[test]
fn deleting_a_parent_before_the_function_is_registered() -> mmsb::Result<()> {
    for mode in [mmsb::PropagationMode::Immediate, mmsb::PropagationMode::Deferred] {
        let dir = tempfile::tempdir().map_err(mmsb::Error::from)?;
        let cfg = || Config::at(dir.path()).with_propagation(mode);
        let (a, b, c) = {
            let s = Mmsb::start(cfg())?;
            s.register_function("sum", 1, sum)?;
            let [a, b, c] = pages(&s)?;
            s.declare_derived(c, "sum", &[a, b])?;
            s.update_page(a, Payload::Full(vec![1; 4]))?;
            s.update_page(b, Payload::Full(vec![2; 4]))?;
            s.propagate()?;
            s.stop()?;
            (a, b, c)
        };
        let s = Mmsb::start(cfg())?;
        let (hash, time) = (s.state_hash()?, s.timestamp());
        match (mode, s.delete_page(a)) {
            (mmsb::PropagationMode::Immediate, Err(mmsb::Error::Function { name, .. })) => {
                assert_eq!(name, "sum");
                assert_eq!((s.state_hash()?, s.timestamp()), (hash, time), "nothing changed");
                assert!(s.page_ids().contains(&a));
            }
            (mmsb::PropagationMode::Deferred, Ok(())) => {
                assert!(s.is_stale(c)?);
                s.register_function("sum", 1, sum)?;
                s.propagate()?;
                assert_eq!(s.query_page(c)?, s.query_page(b)?);
            }
            (mode, other) => panic!("{mode:?}: {other:?}"),
        }
    }
    Ok(())
}

#[test]
fn a_page_deleted_after_its_write_is_not_owed_work_after_reopen() -> mmsb::Result<()> {
    let dir = tempfile::tempdir().map_err(mmsb::Error::from)?;
    let cfg = || Config::at(dir.path()).with_propagation(mmsb::PropagationMode::Deferred);
    let (a, c, e) = {
        let s = Mmsb::start(cfg())?;
        let (a, c) = queued_write(&s)?;
        // A derivation declared and not computed yet, then deleted.
        let e = s.create_page(PageSpec::new(4))?;
        s.declare_derived(e, "sum", &[c])?;
        // The written page goes before its write is propagated.
        s.delete_page(a)?;
        s.delete_page(e)?;
        s.stop()?;
        (a, c, e)
    };
    let s = Mmsb::start(cfg())?;
    let due = &s.recovery_report().due;
    assert!(!due.written.contains(&a), "a deleted page owes nothing: {}", s.recovery_report());
    assert!(!due.forced.contains(&e), "a deleted derived page owes nothing: {}", s.recovery_report());
    s.register_function("sum", 1, sum)?;
    s.propagate()?;
    assert!(s.query_page(a).is_err(), "a is gone");
    assert_eq!(s.query_page(c)?.len(), 4);
    Ok(())
}

#[test]
fn writes_to_a_state_without_derived_pages_owe_nothing_after_reopen() -> mmsb::Result<()> {
    let dir = tempfile::tempdir().map_err(mmsb::Error::from)?;
    for mode in [mmsb::PropagationMode::Immediate, mmsb::PropagationMode::Deferred] {
        let cfg = || Config::at(dir.path()).with_propagation(mode);
        {
            let s = Mmsb::start(cfg())?;
            let a = s.create_page(PageSpec::new(4))?;
            s.update_page(a, Payload::Full(vec![1, 2, 3, 4]))?;
            s.stop()?;
        }
        let s = Mmsb::start(cfg())?;
        assert!(s.recovery_report().due.written.is_empty(), "{mode:?}: {}", s.recovery_report());
        assert!(s.recovery_report().due.is_empty(), "{mode:?}: {}", s.recovery_report());
        s.stop()?;
    }
    Ok(())
}

//! Dependency graph and propagation: diamonds, cycles, cutoff, modes,
//! function versions, events and error cases.

use mmsb::events::{events_from_changes, Event};
use mmsb::{
    Change, Config, Delta, DeltaId, EdgeKind, Error, Mmsb, PageId, PageSpec, Payload, PropagationMode,
    Source, SourceKind, Update,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

type Result<T = ()> = mmsb::Result<T>;

fn page(state: &Mmsb, len: u64) -> Result<PageId> {
    state.create_page(PageSpec::new(len))
}

fn add(ins: &[&[u8]], out: &mut [u8]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = ins.iter().fold(0u8, |a, p| a.wrapping_add(p[i]));
    }
}

/// Recomputes of one propagation: page → changed.
fn recomputes(events: &[Event]) -> BTreeMap<PageId, bool> {
    let mut out = BTreeMap::new();
    for e in events {
        if let Event::Recomputed { page, changed } = e {
            assert!(out.insert(*page, *changed).is_none(), "page {page} recomputed twice");
        }
    }
    out
}

#[test]
fn diamond_is_glitch_free_and_recomputes_the_join_once() -> Result {
    let state = Mmsb::start(Config::temporary())?;
    // The join records every input pair it sees: a glitch would show a
    // pair that mixes an old and a new value.
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let log = seen.clone();
    state.register_function("copy", 1, |ins, out| out.copy_from_slice(ins[0]))?;
    state.register_function("inc", 1, |ins, out| out[0] = ins[0][0].wrapping_add(1))?;
    state.register_function("join", 1, move |ins, out| {
        log.lock().push((ins[0][0], ins[1][0]));
        out[0] = ins[0][0].wrapping_sub(ins[1][0]);
    })?;
    let a = page(&state, 1)?;
    let (b, c, d) = (page(&state, 1)?, page(&state, 1)?, page(&state, 1)?);
    state.declare_derived(b, "copy", &[a])?;
    state.declare_derived(c, "inc", &[a])?;
    state.declare_derived(d, "join", &[b, c])?;
    seen.lock().clear();
    let events = state.subscribe();
    for v in [5u8, 9, 200] {
        state.update_page(a, Payload::Full(vec![v]))?;
        assert_eq!(*seen.lock(), vec![(v, v.wrapping_add(1))], "join saw exactly one consistent pair");
        seen.lock().clear();
        let ev = events.drain();
        // b and c change, d does not: d = a - (a + 1) is constant.
        assert_eq!(recomputes(&ev), BTreeMap::from([(b, true), (c, true), (d, false)]));
        assert_eq!(state.query_page(d)?, [255]);
    }
    Ok(())
}

#[test]
fn early_cutoff_stops_below_an_unchanged_page() -> Result {
    let state = Mmsb::start(Config::temporary())?;
    let calls = Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    state.register_function("high_bit", 1, |ins, out| out[0] = ins[0][0] >> 7)?;
    state.register_function("count", 1, move |ins, out| {
        counter.fetch_add(1, Ordering::SeqCst);
        out[0] = ins[0][0] + 1;
    })?;
    let a = page(&state, 1)?;
    let (b, c) = (page(&state, 1)?, page(&state, 1)?);
    state.declare_derived(b, "high_bit", &[a])?;
    state.declare_derived(c, "count", &[b])?;
    let base = calls.load(Ordering::SeqCst);
    let events = state.subscribe();
    state.update_page(a, Payload::Full(vec![3]))?; // high bit still 0
    let ev = events.drain();
    assert_eq!(recomputes(&ev), BTreeMap::from([(b, false)]));
    assert_eq!(calls.load(Ordering::SeqCst), base, "nothing below the cutoff ran");
    assert!(!ev.iter().any(|e| matches!(e, Event::DeltaApplied { source: SourceKind::Propagation, .. })));
    state.update_page(a, Payload::Full(vec![0x80]))?;
    assert_eq!(recomputes(&events.drain()), BTreeMap::from([(b, true), (c, true)]));
    assert_eq!(state.query_page(c)?, [2]);
    Ok(())
}

#[test]
fn derived_deltas_carry_provenance_and_are_smallest() -> Result {
    let state = Mmsb::start(Config::temporary())?;
    state.register_function("copy", 3, |ins, out| out.copy_from_slice(ins[0]))?;
    let (a, b) = (page(&state, 4096)?, page(&state, 4096)?);
    state.declare_derived(b, "copy", &[a])?;
    let events = state.subscribe();
    let e = state.update_page(a, Payload::Sparse(mmsb::SparseDelta::from_pairs([(100, &[1u8, 2][..])])?))?;
    let ev = events.drain();
    let applied: Vec<&Event> = ev.iter().filter(|e| matches!(e, Event::DeltaApplied { .. })).collect();
    assert_eq!(
        applied,
        [
            &Event::DeltaApplied { page: a, epoch: e, source: SourceKind::User, bytes: 2 },
            &Event::DeltaApplied {
                page: b,
                epoch: mmsb::Epoch(1),
                source: SourceKind::Propagation,
                bytes: 2
            },
        ]
    );
    assert_eq!(
        state.derivation(b)?,
        Some(mmsb::Derivation { function: "copy".into(), version: 3, parents: vec![a] })
    );
    Ok(())
}

#[test]
fn cycles_are_refused_and_named_in_order() -> Result {
    let state = Mmsb::start(Config::temporary())?;
    let p: Vec<PageId> = (0..4).map(|_| page(&state, 1)).collect::<Result<_>>()?;
    // Self-loop.
    match state.add_edge(p[0], p[0], EdgeKind::Control) {
        Err(Error::GraphCycle { cycle }) => assert_eq!(cycle, vec![p[0], p[0]]),
        other => panic!("expected a cycle, got {other:?}"),
    }
    state.add_edge(p[0], p[1], EdgeKind::Control)?;
    state.add_edge(p[1], p[2], EdgeKind::Control)?;
    state.add_edge(p[2], p[3], EdgeKind::Control)?;
    match state.add_edge(p[3], p[0], EdgeKind::Control) {
        Err(Error::GraphCycle { cycle }) => assert_eq!(cycle, vec![p[3], p[0], p[1], p[2], p[3]]),
        other => panic!("expected a cycle, got {other:?}"),
    }
    match state.add_edge(p[1], p[0], EdgeKind::Control) {
        Err(Error::GraphCycle { cycle }) => assert_eq!(cycle, vec![p[1], p[0], p[1]]),
        other => panic!("expected a cycle, got {other:?}"),
    }
    // A derivation from itself or from a descendant is a cycle too.
    state.register_function("copy", 1, |ins, out| out.copy_from_slice(ins[0]))?;
    assert!(matches!(state.declare_derived(p[0], "copy", &[p[0]]), Err(Error::GraphCycle { .. })));
    match state.declare_derived(p[0], "copy", &[p[2]]) {
        Err(Error::GraphCycle { cycle }) => assert_eq!(cycle, vec![p[2], p[0], p[1], p[2]]),
        other => panic!("expected a cycle, got {other:?}"),
    }
    // Nothing changed: the graph still has exactly the chain.
    assert_eq!(state.children(p[3])?, vec![]);
    assert_eq!(state.children(p[0])?, vec![(p[1], EdgeKind::Control)]);
    assert_eq!(state.derivation(p[0])?, None);
    state.verify()?;
    // Removing an edge makes the reverse edge legal.
    state.remove_edge(p[0], p[1])?;
    state.add_edge(p[3], p[0], EdgeKind::Control)?;
    state.verify()
}

#[test]
fn control_edges_mark_stale_without_recomputing() -> Result {
    let state = Mmsb::start(Config::temporary())?;
    let (a, b) = (page(&state, 2)?, page(&state, 2)?);
    state.add_edge(a, b, EdgeKind::Control)?;
    assert!(!state.is_stale(b)?);
    let events = state.subscribe();
    state.update_page(a, Payload::Full(vec![1, 2]))?;
    assert!(state.is_stale(b)?);
    assert_eq!(state.query_page(b)?, [0, 0]);
    assert!(recomputes(&events.drain()).is_empty());
    state.update_page(b, Payload::Full(vec![7, 7]))?;
    assert!(!state.is_stale(b)?, "a write refreshes the page");
    Ok(())
}

#[test]
fn derived_writes_refresh_pages_made_stale_in_the_same_commit() -> Result {
    let state = Mmsb::start(Config::temporary())?;
    state.register_function("add", 1, add)?;
    state.register_function("keep", 1, |_: &[&[u8]], _: &mut [u8]| {})?;
    let (a, b) = (page(&state, 2)?, page(&state, 2)?);
    // d is recomputed from a, and made stale by b (a control parent).
    let d = page(&state, 2)?;
    state.declare_derived(d, "add", &[a])?;
    state.add_edge(b, d, EdgeKind::Control)?;
    // e and f are recomputed from a; e makes f stale; g is made stale by e
    // and never rewritten (its recompute reproduces its bytes).
    let (e, f, g) = (page(&state, 2)?, page(&state, 2)?, page(&state, 2)?);
    state.declare_derived(e, "add", &[a])?;
    state.declare_derived(f, "add", &[a])?;
    state.declare_derived(g, "keep", &[a])?;
    state.add_edge(e, f, EdgeKind::Control)?;
    state.add_edge(e, g, EdgeKind::Control)?;
    state.update_batch(vec![
        Update::new(a, Payload::Full(vec![1, 2])),
        Update::new(b, Payload::Full(vec![3, 4])),
    ])?;
    assert_eq!(state.query_page(d)?, [1, 2]);
    assert!(!state.is_stale(d)?, "the derived write comes after b's");
    assert!(!state.is_stale(e)?);
    assert!(!state.is_stale(f)?, "f is written after e");
    assert!(state.is_stale(g)?, "g is not written");
    // b alone: d only becomes stale.
    state.update_page(b, Payload::Full(vec![5, 6]))?;
    assert!(state.is_stale(d)?);
    Ok(())
}

#[test]
fn deferred_mode_waits_for_propagate() -> Result {
    let state = Mmsb::start(Config::temporary().with_propagation(PropagationMode::Deferred))?;
    state.register_function("add", 1, add)?;
    let (a, b, c) = (page(&state, 2)?, page(&state, 2)?, page(&state, 2)?);
    state.declare_derived(c, "add", &[a, b])?;
    state.update_page(a, Payload::Full(vec![1, 2]))?;
    state.update_page(b, Payload::Full(vec![10, 20]))?;
    state.update_page(a, Payload::Full(vec![2, 3]))?;
    assert_eq!(state.query_page(c)?, [0, 0]);
    assert!(state.is_stale(c)?);
    let stats = state.propagate()?;
    assert_eq!((stats.recomputed, stats.written, stats.cut_off), (1, 1, 0), "three writes, one recompute");
    assert_eq!(state.query_page(c)?, [12, 23]);
    assert!(!state.is_stale(c)?);
    // Nothing queued: a no-op.
    assert_eq!(state.propagate()?.recomputed, 0);
    assert_eq!(state.verify_recompute()?, 1);
    Ok(())
}

#[test]
fn a_new_function_version_recomputes_what_it_derived() -> Result {
    let state = Mmsb::start(Config::temporary())?;
    state.register_function("scale", 1, |ins, out| out[0] = ins[0][0].wrapping_mul(2))?;
    let (a, b, c) = (page(&state, 1)?, page(&state, 1)?, page(&state, 1)?);
    state.declare_derived(b, "scale", &[a])?;
    state.declare_derived(c, "scale", &[b])?;
    state.update_page(a, Payload::Full(vec![3]))?;
    assert_eq!(state.query_page(c)?, [12]);
    assert!(matches!(state.register_function("scale", 1, |_, _| {}), Err(Error::Function { .. })));
    let events = state.subscribe();
    let redone = state.register_function("scale", 2, |ins, out| out[0] = ins[0][0].wrapping_mul(3))?;
    assert_eq!(redone, vec![b, c]);
    assert_eq!(state.query_page(b)?, [9]);
    assert_eq!(state.query_page(c)?, [27]);
    let ev = events.drain();
    assert_eq!(recomputes(&ev), BTreeMap::from([(b, true), (c, true)]));
    assert!(ev.iter().any(|e| matches!(e, Event::DerivedDeclared { page, version: 2, .. } if *page == c)));
    assert_eq!(state.derivation(c)?.map(|d| d.version), Some(2));
    assert_eq!(state.verify_recompute()?, 2);
    Ok(())
}

#[test]
fn a_panicking_function_applies_nothing() -> Result {
    let state = Mmsb::start(Config::temporary())?;
    state.register_function("picky", 1, |ins, out| {
        assert!(ins[0][0] != 13, "unlucky input");
        out[0] = ins[0][0];
    })?;
    state.register_function("copy", 1, |ins, out| out.copy_from_slice(ins[0]))?;
    let (a, b, c) = (page(&state, 1)?, page(&state, 1)?, page(&state, 1)?);
    state.declare_derived(b, "copy", &[a])?;
    state.declare_derived(c, "picky", &[b])?;
    state.update_page(a, Payload::Full(vec![5]))?;
    let ts = state.timestamp();
    let info = state.page_info(a)?;
    match state.update_page(a, Payload::Full(vec![13])) {
        Err(Error::Recompute { page, function, reason }) => {
            assert_eq!((page, function.as_str()), (c, "picky"));
            assert!(reason.contains("unlucky input"), "{reason}");
        }
        other => panic!("expected a recompute error, got {other:?}"),
    }
    // Nothing of the batch was applied: not the user write, not b.
    assert_eq!(state.timestamp(), ts);
    assert_eq!(state.page_info(a)?, info);
    assert_eq!(state.query_page(a)?, [5]);
    assert_eq!(state.query_page(b)?, [5]);
    // The state still works.
    state.update_page(a, Payload::Full(vec![6]))?;
    assert_eq!(state.query_page(c)?, [6]);
    // Declaring with a function that panics on the current bytes is refused.
    let d = page(&state, 1)?;
    state.update_page(a, Payload::Full(vec![13])).expect_err("still refused");
    state.register_function("boom", 1, |_, _| panic!("boom"))?;
    assert!(matches!(state.declare_derived(d, "boom", &[a]), Err(Error::Recompute { .. })));
    assert_eq!(state.derivation(d)?, None);
    state.verify()
}

#[test]
fn bad_input_is_a_typed_error() -> Result {
    let state = Mmsb::start(Config::temporary())?;
    let a = page(&state, 1)?;
    let ghost = PageId(999);
    assert!(matches!(state.add_edge(a, ghost, EdgeKind::Control), Err(Error::PageNotFound(p)) if p == ghost));
    assert!(matches!(state.add_edge(ghost, a, EdgeKind::Control), Err(Error::PageNotFound(_))));
    assert!(matches!(state.declare_derived(a, "nope", &[]), Err(Error::Function { .. })));
    state.register_function("copy", 1, |ins, out| out.copy_from_slice(ins[0]))?;
    assert!(matches!(state.declare_derived(a, "copy", &[ghost]), Err(Error::PageNotFound(_))));
    assert!(matches!(state.declare_derived(ghost, "copy", &[a]), Err(Error::PageNotFound(_))));
    let b = page(&state, 1)?;
    assert!(
        matches!(state.add_edge(a, b, EdgeKind::Data), Err(Error::InvalidEdge { .. })),
        "b is not derived"
    );
    assert!(matches!(state.remove_edge(a, b), Err(Error::InvalidEdge { .. })));
    state.add_edge(a, b, EdgeKind::Control)?;
    assert!(matches!(state.add_edge(a, b, EdgeKind::Control), Err(Error::InvalidEdge { .. })));
    assert!(matches!(state.register_function("", 1, |_, _| {}), Err(Error::Function { .. })));
    assert!(matches!(state.is_stale(ghost), Err(Error::PageNotFound(_))));
    state.verify()
}

#[test]
fn deleting_a_page_removes_its_edges() -> Result {
    let state = Mmsb::start(Config::temporary())?;
    state.register_function("add", 1, add)?;
    let (a, b, c, d) = (page(&state, 1)?, page(&state, 1)?, page(&state, 1)?, page(&state, 1)?);
    state.declare_derived(c, "add", &[a, b])?;
    state.add_edge(c, d, EdgeKind::Control)?;
    state.update_page(a, Payload::Full(vec![1]))?;
    state.update_page(b, Payload::Full(vec![2]))?;
    assert_eq!(state.query_page(c)?, [3]);
    state.delete_page(a)?;
    assert_eq!(state.query_page(c)?, [2], "recomputed from the parent it keeps");
    assert!(!state.is_stale(c)?);
    assert_eq!(state.derivation(c)?.map(|d| d.parents), Some(vec![b]));
    state.delete_page(c)?;
    assert_eq!(state.children(b)?, vec![]);
    state.verify()?;
    // The freed graph slots are reused safely.
    let (e, f) = (page(&state, 1)?, page(&state, 1)?);
    state.declare_derived(f, "add", &[b, e])?;
    state.update_page(e, Payload::Full(vec![4]))?;
    assert_eq!(state.query_page(f)?, [6]);
    state.verify()
}

fn first(ins: &[&[u8]], out: &mut [u8]) {
    out.copy_from_slice(ins[0]);
}

#[test]
fn deleting_a_data_parent_in_deferred_mode_leaves_the_child_stale_until_propagate() -> Result {
    let state = Mmsb::start(Config::temporary().with_propagation(PropagationMode::Deferred))?;
    state.register_function("add", 1, add)?;
    let (a, b, c) = (page(&state, 1)?, page(&state, 1)?, page(&state, 1)?);
    state.declare_derived(c, "add", &[a, b])?;
    state.update_page(a, Payload::Full(vec![1]))?;
    state.update_page(b, Payload::Full(vec![2]))?;
    state.propagate()?;
    assert_eq!(state.query_page(c)?, [3]);
    state.delete_page(a)?;
    assert!(state.is_stale(c)?);
    assert_eq!(state.query_page(c)?, [3], "not recomputed before propagate");
    let st = state.propagate()?;
    assert_eq!((st.recomputed, st.written), (1, 1));
    assert_eq!(state.query_page(c)?, [2]);
    assert!(!state.is_stale(c)?);
    assert_eq!(state.verify_recompute()?, 1, "c checked");
    state.verify()
}

#[test]
fn a_deletion_or_edge_removal_whose_recompute_would_panic_is_refused_whole() -> Result {
    for mode in [PropagationMode::Immediate, PropagationMode::Deferred] {
        let state = Mmsb::start(Config::temporary().with_propagation(mode))?;
        state.register_function("first", 1, first)?;
        let (a, c) = (page(&state, 1)?, page(&state, 1)?);
        state.declare_derived(c, "first", &[a])?;
        state.update_page(a, Payload::Full(vec![5]))?;
        state.propagate()?;
        let (hash, time) = (state.state_hash()?, state.timestamp());
        // With no parent left, `first` indexes an empty input list.
        assert!(matches!(state.delete_page(a), Err(Error::Recompute { page, .. }) if page == c), "{mode:?}");
        assert!(
            matches!(state.remove_edge(a, c), Err(Error::Recompute { page, .. }) if page == c),
            "{mode:?}"
        );
        assert_eq!((state.state_hash()?, state.timestamp()), (hash, time), "{mode:?}: nothing changed");
        assert_eq!(state.derivation(c)?.map(|d| d.parents), Some(vec![a]));
        assert!(!state.is_stale(c)?);
        state.update_page(a, Payload::Full(vec![6]))?;
        state.propagate()?;
        assert_eq!(state.query_page(c)?, [6], "{mode:?}: the graph still works");
    }
    Ok(())
}

#[test]
fn in_deferred_mode_every_page_below_a_write_is_stale_until_propagate() -> Result {
    let state = Mmsb::start(Config::temporary().with_propagation(PropagationMode::Deferred))?;
    state.register_function("first", 1, first)?;
    let (a, b, c, other) = (page(&state, 1)?, page(&state, 1)?, page(&state, 1)?, page(&state, 1)?);
    state.declare_derived(b, "first", &[a])?;
    state.declare_derived(c, "first", &[b])?;
    state.propagate()?;
    assert!(!state.is_stale(b)? && !state.is_stale(c)?);
    state.update_page(a, Payload::Full(vec![4]))?;
    assert!(!state.is_stale(a)?, "the written page itself is current");
    assert!(state.is_stale(b)?, "its child");
    assert!(state.is_stale(c)?, "and its grandchild");
    assert!(!state.is_stale(other)?);
    state.propagate()?;
    assert!(!state.is_stale(b)? && !state.is_stale(c)?);
    assert_eq!(state.query_page(c)?, [4]);
    Ok(())
}

#[test]
fn events_rebuilt_from_changes_match_the_live_stream() -> Result {
    let state = Mmsb::start(Config::temporary())?;
    let events = state.subscribe();
    state.register_function("add", 1, add)?;
    let (a, b) = (page(&state, 2)?, page(&state, 2)?);
    state.declare_derived(b, "add", &[a])?;
    let e1 = state.update_page(a, Payload::Full(vec![1, 1]))?;
    state.delete_page(b)?;
    let live: Vec<Event> = events
        .drain()
        .into_iter()
        .filter(|e| {
            !matches!(
                e,
                Event::Recomputed { .. }
                    | Event::PropagationStarted { .. }
                    | Event::PropagationFinished { .. }
            )
        })
        .collect();
    // The same history as changes, as a log would hold it.
    let delta = |id, page, payload, source| Delta {
        id: DeltaId(id),
        page,
        base_epoch: None,
        payload,
        source,
        tag: None,
        timestamp: 0,
    };
    let prov = mmsb::Provenance { function: "add".into(), version: 1, parents: vec![(a, e1)] };
    let changes = [
        Change::CreatePage { id: a, len: 2, location: mmsb::Location::Cpu, meta: Default::default() },
        Change::CreatePage { id: b, len: 2, location: mmsb::Location::Cpu, meta: Default::default() },
        Change::DeclareDerived { page: b, function: "add".into(), version: 1, parents: vec![a] },
        Change::Apply(delta(1, a, Payload::Full(vec![1, 1]), Source::User)),
        Change::Apply(delta(2, b, Payload::Full(vec![1, 1]), Source::Propagation(prov))),
        Change::DeletePage { id: b },
    ];
    assert_eq!(events_from_changes(&changes), live);
    Ok(())
}

#[test]
fn batches_mix_sources_and_derived_pages() -> Result {
    let state = Mmsb::start(Config::temporary())?;
    state.register_function("add", 1, add)?;
    let (a, b, c, d) = (page(&state, 1)?, page(&state, 1)?, page(&state, 1)?, page(&state, 1)?);
    state.declare_derived(c, "add", &[a, b, a])?; // a parent may repeat
    state.declare_derived(d, "add", &[c])?;
    state.update_batch(vec![
        Update::new(a, Payload::Full(vec![1])),
        Update::new(b, Payload::Full(vec![2])),
        Update::new(a, Payload::Full(vec![3])),
    ])?;
    assert_eq!(state.query_page(c)?, [8]);
    assert_eq!(state.query_page(d)?, [8]);
    // A user write to a derived page in the same batch as its parent: the
    // recompute wins, and it reads the batch's final parent bytes.
    state.update_batch(vec![
        Update::new(c, Payload::Full(vec![100])),
        Update::new(b, Payload::Full(vec![1])),
    ])?;
    assert_eq!(state.query_page(c)?, [7]);
    assert_eq!(state.query_page(d)?, [7]);
    // Data edges extend the argument list.
    let e = page(&state, 1)?;
    state.update_page(e, Payload::Full(vec![10]))?;
    state.add_edge(e, c, EdgeKind::Data)?;
    assert_eq!(state.query_page(d)?, [17]);
    state.remove_edge(e, c)?;
    assert_eq!(state.query_page(d)?, [7]);
    assert_eq!(state.verify_recompute()?, 2);
    state.verify()
}

#[test]
fn mmsb_macro_declares_derived_pages() -> Result {
    let state = Mmsb::start(Config::temporary())?;
    mmsb::mmsb! { state;
        page x(2);
        derived y(2) = neg@3(x) |ins, out| {
            for (o, i) in out.iter_mut().zip(ins[0]) { *o = i.wrapping_neg(); }
        };
        derived z(2) = neg(y);
    }
    state.update_page(x, Payload::Full(vec![1, 2]))?;
    assert_eq!(state.query_page(y)?, [255, 254]);
    assert_eq!(state.query_page(z)?, [1, 2]);
    assert!(state.has_function("neg", 3));
    Ok(())
}

/// A reader of two pages (compare, diff) and a propagation that writes them
/// in the opposite order of their ids never wait on each other for good:
/// the page with the smaller id is derived from the one with the larger.
#[test]
fn two_page_readers_and_propagation_do_not_deadlock() -> Result {
    let state = Arc::new(Mmsb::start(Config::temporary())?);
    state.register_function("add", 1, add)?;
    let low = page(&state, 4096)?; // smaller id, level 2
    let high = page(&state, 4096)?; // larger id, level 1
    let src = page(&state, 4096)?;
    state.declare_derived(high, "add", &[src])?;
    state.declare_derived(low, "add", &[high])?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let readers: Vec<_> = (0..2)
        .map(|k| {
            let (state, stop, done) = (Arc::clone(&state), Arc::clone(&stop), done_tx.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let r =
                        if k == 0 { state.compare_pages(low, high) } else { state.compare_pages(high, low) };
                    r.expect("compare");
                    n += 1;
                }
                let _ = done.send(n);
            })
        })
        .collect();
    let writer = {
        let (state, done) = (Arc::clone(&state), done_tx.clone());
        std::thread::spawn(move || {
            for i in 0..3000u64 {
                state.update_page(src, Payload::Full(vec![i as u8; 4096])).expect("update");
            }
            let _ = done.send(u64::MAX);
        })
    };
    // The writer finishes, then the readers stop; a deadlock shows as a
    // thread that never reports.
    let wait = std::time::Duration::from_secs(60);
    assert_eq!(done_rx.recv_timeout(wait), Ok(u64::MAX), "the writer did not finish: deadlock");
    stop.store(true, Ordering::Relaxed);
    for _ in 0..2 {
        assert!(done_rx.recv_timeout(wait).is_ok(), "a reader did not finish: deadlock");
    }
    writer.join().expect("writer");
    for r in readers {
        r.join().expect("reader");
    }
    assert_eq!(state.query_page(low)?, vec![2999u64 as u8; 4096]);
    Ok(())
}

#[test]
fn a_held_page_ref_does_not_block_a_recompute_that_changes_nothing() -> Result {
    // One thread reads a derived page through a `PageRef` and, holding it,
    // writes the page's source: the derived page's function reproduces its
    // bytes, so the propagation must not wait for the reader (which would
    // never let go).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let run = || -> Result<(u64, Vec<u8>)> {
            let state = Mmsb::start(Config::temporary())?;
            state.register_function("zero", 1, |_: &[&[u8]], _: &mut [u8]| {})?;
            let src = page(&state, 64)?;
            let derived = page(&state, 64)?;
            state.declare_derived(derived, "zero", &[src])?;
            let held = state.read_page(derived)?;
            state.update_page(src, Payload::Full(vec![7; 64]))?;
            let seen = held.bytes().to_vec();
            drop(held);
            Ok((state.page_info(derived)?.epoch.0, seen))
        };
        let _ = tx.send(run());
    });
    let (epoch, seen) = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the update waited for the reader of an unchanged page: deadlock")?;
    assert_eq!(seen, vec![0u8; 64]);
    assert_eq!(epoch, 0, "an unchanged derived page is not written");
    Ok(())
}

/// A subscriber that joins while a propagation is under way gets none of
/// its events: the first propagation event it sees starts a propagation.
#[test]
fn a_subscriber_joining_mid_propagation_gets_whole_propagations_only() -> Result {
    let state = Mmsb::start(Config::temporary())?;
    state.register_function("add", 1, add)?;
    let src = page(&state, 8)?;
    for _ in 0..100 {
        let d = page(&state, 8)?;
        state.declare_derived(d, "add", &[src])?;
    }
    // Someone listens throughout, so that every propagation sends events.
    let _early = state.subscribe();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (mut checked, mut partial) = (0u32, Vec::new());
    std::thread::scope(|scope| -> Result {
        let writer = scope.spawn(|| -> Result {
            for i in 0..3_000u64 {
                state.update_page(src, Payload::Full(i.to_le_bytes().to_vec()))?;
            }
            done.store(true, Ordering::Release);
            Ok(())
        });
        while !done.load(Ordering::Acquire) {
            let late = state.subscribe();
            std::thread::sleep(std::time::Duration::from_micros(200));
            let first = late.drain().into_iter().find(|e| {
                matches!(
                    e,
                    Event::PropagationStarted { .. }
                        | Event::Recomputed { .. }
                        | Event::PropagationFinished { .. }
                )
            });
            if late.dropped() == 0 {
                checked += 1;
                if let Some(e) = first.filter(|e| !matches!(e, Event::PropagationStarted { .. })) {
                    partial.push(e);
                }
            }
        }
        writer.join().map_err(|_| Error::Invariant("writer panicked".into()))?
    })?;
    assert!(
        partial.is_empty(),
        "{} of {checked} late subscribers began mid-propagation: {:?}",
        partial.len(),
        partial.first()
    );
    assert!(checked > 0);
    Ok(())
}

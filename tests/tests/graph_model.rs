//! Model-based test of propagation: random DAGs of derived pages, random
//! update batches, random propagation schedules, function upgrades and
//! restarts (queued work must come back exactly), against a plain
//! sequential reference that recomputes in index order.
//! Beyond the bytes, the event stream must show exactly the recomputes the
//! reference predicts: each dirty page once, nothing below an early cutoff.

use mmsb::{Config, Event, Mmsb, PageId, Payload, PropagationMode, SourceKind, SparseDelta, Update};
use proptest::prelude::*;
use std::collections::BTreeMap;

const LEN: usize = 8;

#[derive(Clone, Debug)]
enum Op {
    /// Writes `(source, offset, bytes)`, one batch.
    Update(Vec<(usize, usize, Vec<u8>)>),
    /// An explicit propagation.
    Propagate,
    /// Register the next version of "coarse" (a different shift).
    Bump,
    /// Stop, start again from the state directory and register the
    /// functions again: queued work must come back exactly.
    Reopen,
}

#[derive(Clone, Debug)]
struct Case {
    sources: usize,
    /// (function kind, parents) of each derived page; a parent index below
    /// `sources` is a source, else derived page `index - sources`.
    derived: Vec<(u8, Vec<usize>)>,
    ops: Vec<Op>,
    deferred: bool,
    parallel: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..4, 1usize..8)
        .prop_flat_map(|(sources, nd)| {
            let derived =
                (0..nd).map(|i| (0u8..3, prop::collection::vec(0..sources + i, 1..4))).collect::<Vec<_>>();
            let update = prop::collection::vec(
                (0..sources, 0..LEN, prop::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 1..4)),
                1..4,
            )
            .prop_map(Op::Update);
            let op =
                prop_oneof![6 => update, 2 => Just(Op::Propagate), 1 => Just(Op::Bump), 1 => Just(Op::Reopen)];
            (Just(sources), derived, prop::collection::vec(op, 1..10), any::<bool>(), any::<bool>())
        })
        .prop_map(|(sources, derived, ops, deferred, parallel)| Case {
            sources,
            derived,
            ops,
            deferred,
            parallel,
        })
}

fn sum(ins: &[&[u8]], out: &mut [u8]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = ins.iter().fold(0u8, |a, p| a.wrapping_add(p[i % p.len()]));
    }
}

fn max(ins: &[&[u8]], out: &mut [u8]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = ins.iter().map(|p| p[i % p.len()]).max().unwrap_or(0);
    }
}

/// Often reproduces its old output: exercises early cutoff.
fn coarse(version: u32, ins: &[&[u8]], out: &mut [u8]) {
    let shift = if version % 2 == 1 { 6 } else { 5 };
    for (i, o) in out.iter_mut().enumerate() {
        *o = ins[0][i % ins[0].len()] >> shift;
    }
}

fn register_coarse(state: &Mmsb, version: u32) -> mmsb::Result<Vec<PageId>> {
    state.register_function("coarse", version, move |ins, out| coarse(version, ins, out))
}

struct Model {
    values: Vec<Vec<u8>>,
    derived: Vec<(u8, Vec<usize>)>,
    sources: usize,
    coarse_version: u32,
    pending: Vec<bool>,
    forced: Vec<bool>,
}

impl Model {
    fn eval(&self, d: usize) -> Vec<u8> {
        let (kind, parents) = &self.derived[d];
        let ins: Vec<&[u8]> = parents.iter().map(|&p| &self.values[p][..]).collect();
        let mut out = vec![0u8; LEN];
        match kind {
            0 => sum(&ins, &mut out),
            1 => max(&ins, &mut out),
            _ => coarse(self.coarse_version, &ins, &mut out),
        }
        out
    }

    /// Propagate the queued work; returns `page index → changed` of every
    /// recompute.
    fn propagate(&mut self) -> BTreeMap<usize, bool> {
        let mut changed = std::mem::take(&mut self.pending);
        changed.resize(self.values.len(), false);
        let forced = std::mem::replace(&mut self.forced, vec![false; self.values.len()]);
        let mut fired = BTreeMap::new();
        for d in 0..self.derived.len() {
            let at = self.sources + d;
            if forced[at] || self.derived[d].1.iter().any(|&p| changed[p]) {
                let new = self.eval(d);
                let differs = new != self.values[at];
                fired.insert(at, differs);
                if differs {
                    self.values[at] = new;
                    changed[at] = true;
                }
            }
        }
        self.pending = vec![false; self.values.len()];
        fired
    }
}

/// Recomputes seen in the events: `page index → changed`, checking that no
/// page is recomputed twice in one propagation and that written pages got
/// exactly one propagation delta.
fn fired_from(events: &[Event], ids: &[PageId]) -> BTreeMap<usize, bool> {
    let index = |p: PageId| ids.iter().position(|&q| q == p).expect("known page");
    let mut fired = BTreeMap::new();
    let mut written = BTreeMap::new();
    for e in events {
        match e {
            Event::Recomputed { page, changed } => {
                assert!(fired.insert(index(*page), *changed).is_none(), "page {page} recomputed twice");
            }
            Event::DeltaApplied { page, source: SourceKind::Propagation, .. } => {
                assert!(written.insert(index(*page), true).is_none(), "page {page} written twice");
            }
            _ => {}
        }
    }
    let changed: BTreeMap<usize, bool> = fired.iter().filter(|(_, &c)| c).map(|(&k, &c)| (k, c)).collect();
    assert_eq!(changed, written, "derived deltas match the recomputes that changed bytes");
    fired
}

/// Register the functions, "coarse" at `coarse_version`.
fn register_all(state: &Mmsb, coarse_version: u32) -> mmsb::Result<()> {
    state.register_function("sum", 1, sum)?;
    state.register_function("max", 1, max)?;
    register_coarse(state, coarse_version)?;
    Ok(())
}

fn run(case: &Case) -> mmsb::Result<()> {
    let dir = tempfile::tempdir().map_err(mmsb::Error::from)?;
    let cfg =
        || {
            let mut cfg = Config::at(dir.path()).durability(mmsb::Durability::None).with_propagation(
                if case.deferred { PropagationMode::Deferred } else { PropagationMode::Immediate },
            );
            if case.parallel {
                cfg.propagation_threads = 2;
                cfg.parallel_min_bytes = 0;
            } else {
                cfg.propagation_threads = 1;
            }
            cfg
        };
    let mut state = Mmsb::start(cfg())?;
    register_all(&state, 1)?;
    let names = ["sum", "max", "coarse"];
    let total = case.sources + case.derived.len();
    let mut ids = Vec::new();
    for _ in 0..total {
        ids.push(state.create_page(mmsb::PageSpec::new(LEN as u64))?);
    }
    for (d, (kind, parents)) in case.derived.iter().enumerate() {
        let ps: Vec<PageId> = parents.iter().map(|&p| ids[p]).collect();
        state.declare_derived(ids[case.sources + d], names[*kind as usize], &ps)?;
    }
    state.propagate()?;
    let mut model = Model {
        values: vec![vec![0; LEN]; total],
        derived: case.derived.clone(),
        sources: case.sources,
        coarse_version: 1,
        pending: vec![false; total],
        forced: vec![false; total],
    };
    // All pages start zeroed and every function maps zeros to zeros.
    let mut events = state.subscribe();
    for op in &case.ops {
        let before: Vec<Vec<u8>> = ids.iter().map(|&p| state.query_page(p)).collect::<mmsb::Result<_>>()?;
        let mut propagated = None;
        match op {
            Op::Update(writes) => {
                let mut batch = Vec::new();
                for (src, off, bytes) in writes {
                    let n = bytes.len().min(LEN - off);
                    let delta = SparseDelta::from_pairs([(*off as u64, &bytes[..n])])?;
                    batch.push(Update::new(ids[*src], Payload::Sparse(delta)));
                    model.values[*src][*off..off + n].copy_from_slice(&bytes[..n]);
                    model.pending[*src] = true;
                }
                state.update_batch(batch)?;
                if !case.deferred {
                    propagated = Some(model.propagate());
                }
            }
            Op::Propagate => {
                state.propagate()?;
                propagated = Some(model.propagate());
            }
            Op::Bump => {
                model.coarse_version += 1;
                let redeclared = register_coarse(&state, model.coarse_version)?;
                let mut expect: Vec<PageId> = Vec::new();
                for (d, (kind, _)) in case.derived.iter().enumerate() {
                    if *kind == 2 {
                        model.forced[case.sources + d] = true;
                        expect.push(ids[case.sources + d]);
                    }
                }
                assert_eq!(redeclared, expect);
                if !case.deferred {
                    propagated = Some(model.propagate());
                }
            }
            Op::Reopen => {
                drop(events);
                state.stop()?;
                drop(state);
                state = Mmsb::start(cfg())?;
                // The recorded versions: nothing is re-declared, and in
                // immediate mode nothing was left queued to run.
                register_all(&state, model.coarse_version)?;
                events = state.subscribe();
            }
        }
        let seen = events.drain();
        assert_eq!(events.dropped(), 0);
        let fired = fired_from(&seen, &ids);
        match &propagated {
            Some(expected) => assert_eq!(&fired, expected, "recomputes after {op:?}"),
            None => {
                assert!(fired.is_empty(), "deferred mode recomputed during {op:?}");
                for d in case.sources..total {
                    assert_eq!(state.query_page(ids[d])?, before[d], "deferred page changed early");
                }
            }
        }
        if propagated.is_some() || case.deferred {
            for (i, &p) in ids.iter().enumerate() {
                if propagated.is_some() || i < case.sources {
                    assert_eq!(state.query_page(p)?, model.values[i], "page {i} after {op:?}");
                }
            }
        }
    }
    state.propagate()?;
    model.propagate();
    for (i, &p) in ids.iter().enumerate() {
        assert_eq!(state.query_page(p)?, model.values[i], "page {i} at the end");
    }
    state.verify()?;
    state.verify_recompute()?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn propagation_matches_a_sequential_reference(case in case()) {
        run(&case).map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
}

//! Incremental computation against salsa: the same derivations (a chain of
//! 10 copies, a fan-out of copies, a random DAG of sums with 1% of its
//! sources changed, and a revision that changes nothing), per node
//! recomputed and per no-op revision.
//!
//! MMSB's side is that of the propagation rows ([`crate::prop`]): pages of
//! 8 bytes, `copy` and a byte-wise `sum`, `Durability::None`, one
//! propagation thread; the chain and fan-out in Immediate mode (the update
//! propagates before it returns), the DAG in Deferred mode (a batch of
//! source updates, then `propagate`). salsa's side: one input per node
//! holding its parents and, for sources, a `u64`; one tracked function
//! computing a derived node (the first parent for one parent, the wrapping
//! sum otherwise). salsa computes on demand, so bringing the derived state
//! up to date after a change means asking for every derived node, which it
//! does in order (parents first). Both cut off a recompute that reproduces
//! the old value (salsa backdates it).

use super::{med, PeerBudget};
use crate::prop::{self, XorShift};
use crate::{time_per_iter, Peer, Row};
use mmsb::{Payload, PropagationMode, Result, Update};
use salsa::Setter;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// A node of the derivation graph: sources have no parents and a value.
#[salsa::input(debug)]
struct Node {
    #[returns(ref)]
    parents: Vec<Node>,
    #[returns(copy)]
    value: u64,
}

/// Derived nodes computed by salsa since the process started.
static RECOMPUTED: AtomicU64 = AtomicU64::new(0);

/// The value of `n`: its input for a source, else the tracked derivation.
fn value_of(db: &dyn salsa::Database, n: Node) -> u64 {
    if n.parents(db).is_empty() {
        n.value(db)
    } else {
        derived(db, n)
    }
}

/// A derived node: the wrapping sum of its parents (a copy for one).
#[salsa::tracked(returns(copy))]
fn derived(db: &dyn salsa::Database, n: Node) -> u64 {
    RECOMPUTED.fetch_add(1, Ordering::Relaxed);
    n.parents(db).iter().fold(0u64, |a, p| a.wrapping_add(value_of(db, *p)))
}

/// A salsa graph: the database, its sources and its derived nodes in
/// topological order.
struct Graph {
    db: salsa::DatabaseImpl,
    sources: Vec<Node>,
    derived: Vec<Node>,
}

impl Graph {
    /// `sources` sources, then derived nodes with the parents `shape`
    /// lists (indices into sources then derived nodes), computed once.
    fn new(sources: usize, shape: &[Vec<usize>]) -> Graph {
        let db = salsa::DatabaseImpl::new();
        let mut all: Vec<Node> = (0..sources).map(|k| Node::new(&db, Vec::new(), k as u64)).collect();
        for parents in shape {
            let ps = parents.iter().map(|&i| all[i]).collect();
            all.push(Node::new(&db, ps, 0));
        }
        let derived = all.split_off(sources);
        let g = Graph { db, sources: all, derived };
        g.bring_up_to_date();
        g
    }

    /// Ask for every derived node, parents first; the last one's value.
    fn bring_up_to_date(&self) -> u64 {
        let mut last = 0;
        for n in &self.derived {
            last = derived(&self.db, *n);
        }
        last
    }

    /// Set source `k` to `v`.
    fn set(&mut self, k: usize, v: u64) {
        self.sources[k].set_value(&mut self.db).to(v);
    }
}

/// Seconds per revision and derived nodes recomputed per revision of
/// `step` (which changes the graph and brings it up to date), over the
/// budget's samples.
fn salsa_per_revision(b: PeerBudget, g: &mut Graph, mut step: impl FnMut(&mut Graph)) -> (f64, f64) {
    let before = RECOMPUTED.load(Ordering::Relaxed);
    let mut revisions = 0u64;
    let secs = time_per_iter(b.time, || {
        step(g);
        revisions += 1;
    });
    let recomputed = (RECOMPUTED.load(Ordering::Relaxed) - before) as f64 / revisions.max(1) as f64;
    (secs, recomputed)
}

/// salsa's figures: (chain, fan-out, DAG, no-op) each as (seconds per
/// revision, derived nodes recomputed per revision).
type Figures = [(f64, f64); 4];

fn salsa_figures(b: PeerBudget) -> Figures {
    // The chain of 10 copies.
    let shape: Vec<Vec<usize>> = (0..10).map(|k| vec![k]).collect();
    let mut chain = Graph::new(1, &shape);
    let mut v = 0u64;
    let chain_fig = salsa_per_revision(b, &mut chain, |g| {
        v += 1;
        g.set(0, v);
        std::hint::black_box(g.bring_up_to_date());
    });
    // No-op revisions: the source set to the value it holds.
    let noop = salsa_per_revision(b, &mut chain, |g| {
        g.set(0, v);
        std::hint::black_box(g.bring_up_to_date());
    });
    // The fan-out of copies.
    let shape: Vec<Vec<usize>> = (0..b.fanout).map(|_| vec![0]).collect();
    let mut fan = Graph::new(1, &shape);
    let fan_fig = salsa_per_revision(b, &mut fan, |g| {
        v += 1;
        g.set(0, v);
        std::hint::black_box(g.bring_up_to_date());
    });
    drop(fan);
    // The DAG: 1% of the sources changed per revision.
    let (sources, n) = b.dag;
    let mut dag = Graph::new(sources, &prop::dag_shape(sources, n));
    let mut rng = XorShift(42);
    let (mut times, mut counts) = (Vec::new(), Vec::new());
    for _ in 0..dag_reps(b) {
        v += 1;
        let before = RECOMPUTED.load(Ordering::Relaxed);
        let t = Instant::now();
        for _ in 0..(sources / 100).max(1) {
            let k = (rng.next_u64() % sources as u64) as usize;
            dag.set(k, v);
        }
        std::hint::black_box(dag.bring_up_to_date());
        times.push(t.elapsed().as_secs_f64());
        counts.push((RECOMPUTED.load(Ordering::Relaxed) - before) as f64);
    }
    [chain_fig, fan_fig, (med(times), med(counts)), noop]
}

/// Revisions timed on the DAG (each side).
fn dag_reps(b: PeerBudget) -> usize {
    (b.time.samples * 2).max(3)
}

/// A state as [`prop::state`] makes it, its `copy` and `sum` counting
/// their calls in the returned counter (salsa's function counts its own).
fn counting_state(mode: PropagationMode) -> Result<(mmsb::Mmsb, Arc<AtomicU64>)> {
    let mut cfg = mmsb::Config::temporary().with_propagation(mode).durability(mmsb::Durability::None);
    cfg.propagation_threads = 1;
    let s = mmsb::Mmsb::start(cfg)?;
    let calls = Arc::new(AtomicU64::new(0));
    let c = Arc::clone(&calls);
    s.register_function("copy", 1, move |ins: &[&[u8]], out: &mut [u8]| {
        c.fetch_add(1, Ordering::Relaxed);
        prop::copy(ins, out);
    })?;
    let c = Arc::clone(&calls);
    s.register_function("sum", 1, move |ins: &[&[u8]], out: &mut [u8]| {
        c.fetch_add(1, Ordering::Relaxed);
        prop::sum(ins, out);
    })?;
    Ok((s, calls))
}

/// MMSB's figures, the same shapes and changes.
fn mmsb_figures(b: PeerBudget) -> Result<Figures> {
    let per_update =
        |s: &mmsb::Mmsb, calls: &AtomicU64, src: mmsb::PageId, same: bool| -> Result<(f64, f64)> {
            let mut v = 0u8;
            let mut failed = None;
            let before = calls.load(Ordering::Relaxed);
            let mut revisions = 0u64;
            let secs = time_per_iter(b.time, || {
                if !same {
                    v = v.wrapping_add(1);
                }
                if let Err(e) = s.update_page(src, Payload::Full(vec![v; 8])) {
                    failed.get_or_insert(e);
                }
                revisions += 1;
            });
            if let Some(e) = failed {
                return Err(e);
            }
            let recomputed = (calls.load(Ordering::Relaxed) - before) as f64 / revisions.max(1) as f64;
            Ok((secs, recomputed))
        };
    let (s, calls) = counting_state(PropagationMode::Immediate)?;
    let src = prop::chain(&s, 10, "copy")?;
    let chain = per_update(&s, &calls, src, false)?;
    let noop = per_update(&s, &calls, src, true)?;
    drop(s);
    let (s, calls) = counting_state(PropagationMode::Immediate)?;
    let src = prop::fan_out(&s, b.fanout, "copy")?;
    let fan = per_update(&s, &calls, src, false)?;
    drop(s);
    let (sources, n) = b.dag;
    let (s, _) = counting_state(PropagationMode::Deferred)?;
    let ids = prop::dag_in(&s, sources, n)?;
    let mut rng = XorShift(42);
    let (mut times, mut counts) = (Vec::new(), Vec::new());
    let mut v = 0u8;
    for _ in 0..dag_reps(b) {
        v = v.wrapping_add(1);
        let batch: Vec<Update> = (0..(sources / 100).max(1))
            .map(|_| Update::new(ids[(rng.next_u64() % sources as u64) as usize], Payload::Full(vec![v; 8])))
            .collect();
        let t = Instant::now();
        s.update_batch(batch)?;
        let st = s.propagate()?;
        times.push(t.elapsed().as_secs_f64());
        counts.push(st.recomputed as f64);
    }
    Ok([chain, fan, (med(times), med(counts)), noop])
}

/// The incremental rows: MMSB's time per node recomputed (per revision for
/// the no-op) against salsa's.
///
/// # Errors
/// MMSB's errors; a salsa thread that could not start or panicked.
pub fn rows(b: PeerBudget) -> Result<Vec<Row>> {
    let ours = mmsb_figures(b)?;
    // salsa recurses through a node's parents when it verifies a memo: a
    // large stack keeps deep graphs safe.
    let theirs = std::thread::Builder::new()
        .name("salsa".into())
        .stack_size(256 << 20)
        .spawn(move || salsa_figures(b))?
        .join()
        .map_err(|_| mmsb::Error::Invariant("the salsa run panicked".into()))?;
    let peer = Peer {
        name: "salsa".into(),
        version: super::version_of("salsa").into(),
        setting: "in memory, one input per node, one tracked function, every derived node asked for".into(),
        unsupported: None,
    };
    let (sources, n) = b.dag;
    let names = [
        "peers_incr_chain10_per_node".to_string(),
        format!("peers_incr_fanout{}_per_node", b.fanout),
        format!("peers_incr_dag{}_1pct_per_node", sources + n),
        "peers_incr_noop_revision_chain10".to_string(),
    ];
    let mut rows = Vec::new();
    for (k, name) in names.iter().enumerate() {
        let ((ot, on), (tt, tn)) = (ours[k], theirs[k]);
        let (value, limit, unit) = if k == 3 {
            (ot * 1e9, tt * 1e9, "ns/rev")
        } else {
            (ot / on.max(1.0) * 1e9, tt / tn.max(1.0) * 1e9, "ns/node")
        };
        let what = format!(
            "salsa {}: per revision {:.1} us, {tn:.0} nodes recomputed (MMSB {:.1} us, {on:.0})",
            peer.version,
            tt * 1e6,
            ot * 1e6
        );
        rows.push(
            Row::cost(&format!("{name}_salsa"), value, unit, &what, limit, Some(1.0)).against(peer.clone()),
        );
    }
    Ok(rows)
}

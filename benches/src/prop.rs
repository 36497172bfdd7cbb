//! Propagation rows: per fired node overhead (the user function's own time
//! taken out), a propagation with nothing dirty, a chain of 10 end to end,
//! a fan-out of 10,000 and a 100,000-node random DAG.
//!
//! States here log with [`Durability::None`]: the log's own cost is in the
//! disk rows; these rows measure the graph machinery (recompute, compare,
//! diff, derived delta, commit into the log buffer).

use crate::{time_per_iter, Budget, Row};
use mmsb::Durability;
use mmsb::{Config, Mmsb, PageId, PageSpec, Payload, PropagationMode, Result, Update};
use std::hint::black_box;
use std::time::Instant;

/// The trivial recompute: copy the first parent.
pub fn copy(ins: &[&[u8]], out: &mut [u8]) {
    out.copy_from_slice(ins[0]);
}

/// Byte-wise wrapping sum of the parents.
pub fn sum(ins: &[&[u8]], out: &mut [u8]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = ins.iter().fold(0u8, |a, p| a.wrapping_add(p[i]));
    }
}

/// A recompute that writes nothing (its output stays zero).
pub fn flat(_: &[&[u8]], _: &mut [u8]) {}

/// A state with `copy`, `sum` and `flat` registered, one propagation thread.
///
/// # Errors
/// As [`Mmsb::start`].
pub fn state(mode: PropagationMode) -> Result<Mmsb> {
    let mut cfg = Config::temporary().with_propagation(mode).durability(Durability::None);
    cfg.propagation_threads = 1;
    let s = Mmsb::start(cfg)?;
    s.register_function("copy", 1, copy)?;
    s.register_function("sum", 1, sum)?;
    s.register_function("flat", 1, flat)?;
    Ok(s)
}

/// A source page of 8 bytes and a chain of `n` pages derived by `func`.
///
/// # Errors
/// As [`Mmsb::declare_derived`].
pub fn chain(s: &Mmsb, n: usize, func: &str) -> Result<PageId> {
    let src = s.create_page(PageSpec::new(8))?;
    let mut prev = src;
    for _ in 0..n {
        let p = s.create_page(PageSpec::new(8))?;
        s.declare_derived(p, func, &[prev])?;
        prev = p;
    }
    Ok(src)
}

/// A source page of 8 bytes with `n` children derived from it by `func`.
///
/// # Errors
/// As [`Mmsb::declare_derived`].
pub fn fan_out(s: &Mmsb, n: usize, func: &str) -> Result<PageId> {
    let src = s.create_page(PageSpec::new(8))?;
    for _ in 0..n {
        let p = s.create_page(PageSpec::new(8))?;
        s.declare_derived(p, func, &[src])?;
    }
    Ok(src)
}

/// xorshift64: a tiny deterministic generator for graph shapes.
#[derive(Debug)]
pub struct XorShift(pub u64);
impl XorShift {
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The shape of a random DAG: `sources` source nodes (indices below
/// `sources`), then `derived` nodes, each with 1–3 parents among the 2,000
/// nodes before it (deep, sparse dependencies). Entry `k` lists the parents
/// of node `sources + k`; every parent comes before its child.
pub fn dag_shape(sources: usize, derived: usize) -> Vec<Vec<usize>> {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    (0..derived)
        .map(|k| {
            let len = sources + k;
            let n = 1 + (rng.next_u64() % 3) as usize;
            (0..n)
                .map(|_| {
                    let back = 1 + (rng.next_u64() % 2_000) as usize;
                    len.saturating_sub(back)
                })
                .collect()
        })
        .collect()
}

/// A random DAG of [`dag_shape`] in Deferred mode, pages of 8 bytes, the
/// derived ones by `sum`, propagated once. Returns the state and the
/// source ids.
///
/// # Errors
/// As [`Mmsb::declare_derived`].
pub fn dag(sources: usize, derived: usize) -> Result<(Mmsb, Vec<PageId>)> {
    let s = state(PropagationMode::Deferred)?;
    let ids = dag_in(&s, sources, derived)?;
    Ok((s, ids))
}

/// [`dag`] in the given state (whose `sum` is the function used); the
/// source ids.
///
/// # Errors
/// As [`Mmsb::declare_derived`].
pub fn dag_in(s: &Mmsb, sources: usize, derived: usize) -> Result<Vec<PageId>> {
    let mut ids: Vec<PageId> =
        (0..sources).map(|_| s.create_page(PageSpec::new(8))).collect::<Result<_>>()?;
    for parents in dag_shape(sources, derived) {
        let p = s.create_page(PageSpec::new(8))?;
        let parents: Vec<PageId> = parents.into_iter().map(|i| ids[i]).collect();
        s.declare_derived(p, "sum", &parents)?;
        ids.push(p);
    }
    s.propagate()?;
    ids.truncate(sources);
    Ok(ids)
}

/// A 100,000-node random DAG in Deferred mode: 10,000 sources and 90,000
/// pages derived by `sum` ([`dag`]). Returns the state and the source ids.
///
/// # Errors
/// As [`Mmsb::declare_derived`].
pub fn dag100k() -> Result<(Mmsb, Vec<PageId>)> {
    dag(10_000, 90_000)
}

/// Seconds per update of `src` to a new value.
fn update_time(budget: Budget, s: &Mmsb, src: PageId) -> f64 {
    let mut v = 0u8;
    time_per_iter(budget, || {
        v = v.wrapping_add(1);
        s.update_page(src, Payload::Full(vec![v; 8])).expect("update");
    })
}

/// Seconds per direct call of `f` on 8-byte pages with `parents` inputs.
fn call_time(budget: Budget, f: fn(&[&[u8]], &mut [u8]), parents: usize) -> f64 {
    let inputs = vec![[3u8; 8]; parents];
    let ins: Vec<&[u8]> = inputs.iter().map(|a| &a[..]).collect();
    let mut out = [0u8; 8];
    time_per_iter(budget, || {
        f(black_box(&ins), black_box(&mut out));
    })
}

/// Every propagation row.
///
/// # Errors
/// State errors.
pub fn rows(budget: Budget) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let ns = 1e9;
    // A user write with no dependents: the floor every update pays.
    let base = {
        let s = state(PropagationMode::Immediate)?;
        let src = s.create_page(PageSpec::new(8))?;
        update_time(budget, &s, src)
    };
    let copy_call = call_time(budget, copy, 1);
    let flat_call = call_time(budget, flat, 1);

    // Per fired node, writing: a chain of 1000 copies, each a derived delta.
    {
        let s = state(PropagationMode::Immediate)?;
        let src = chain(&s, 1000, "copy")?;
        let t = update_time(budget, &s, src);
        let per = ((t - base) / 1000.0 - copy_call).max(0.0);
        rows.push(Row::latency(
            "prop_per_node_write",
            per * ns,
            "ns",
            "the user function alone",
            copy_call * ns,
            Some(150.0),
        ));
    }
    // Per fired node, cut off: 1000 children that reproduce their bytes.
    {
        let s = state(PropagationMode::Immediate)?;
        let src = fan_out(&s, 1000, "flat")?;
        let t = update_time(budget, &s, src);
        let per = ((t - base) / 1000.0 - flat_call).max(0.0);
        rows.push(Row::latency(
            "prop_per_node_cutoff",
            per * ns,
            "ns",
            "the user function alone",
            flat_call * ns,
            Some(150.0),
        ));
    }
    // Nothing dirty: the fixed cost of propagate().
    {
        let s = state(PropagationMode::Deferred)?;
        let src = chain(&s, 10, "copy")?;
        s.update_page(src, Payload::Full(vec![1; 8]))?;
        s.propagate()?;
        let t = time_per_iter(budget, || {
            black_box(s.propagate().expect("propagate"));
        });
        let m = std::sync::Mutex::new(0u64);
        let lock = time_per_iter(budget, || {
            *black_box(&m).lock().unwrap_or_else(|e| e.into_inner()) += 1;
        });
        rows.push(Row::latency(
            "prop_nothing_dirty",
            t * ns,
            "ns",
            "one uncontended mutex lock+unlock",
            lock * ns,
            Some(100.0),
        ));
    }
    // A chain of 10 trivial recomputes, end to end through update_page.
    {
        let s = state(PropagationMode::Immediate)?;
        let src = chain(&s, 10, "copy")?;
        let t = update_time(budget, &s, src);
        rows.push(Row::latency(
            "prop_chain10_end_to_end",
            t * 1e6,
            "us",
            "update_page with no dependents",
            base * 1e6,
            Some(5.0),
        ));
    }
    // Fan-out: one source, 10,000 children derived by copy.
    {
        let s = state(PropagationMode::Immediate)?;
        let src = fan_out(&s, 10_000, "copy")?;
        let t = update_time(budget, &s, src);
        rows.push(Row::latency(
            "prop_fanout10000",
            t * 1e3,
            "ms",
            "10,000 direct calls of the function",
            10_000.0 * copy_call * 1e3,
            None,
        ));
    }
    // 100,000-node random DAG, 1% of the sources updated per batch.
    {
        let (s, sources) = dag100k()?;
        let mut rng = XorShift(42);
        let mut v = 0u8;
        let mut times = Vec::new();
        let mut recomputed = 0;
        let reps = (budget.samples * 2).max(3);
        for _ in 0..reps {
            v = v.wrapping_add(1);
            let batch: Vec<Update> = (0..100)
                .map(|_| Update::new(sources[(rng.next_u64() % 10_000) as usize], Payload::Full(vec![v; 8])))
                .collect();
            let t = Instant::now();
            s.update_batch(batch)?;
            let st = s.propagate()?;
            times.push(t.elapsed().as_secs_f64());
            recomputed = st.recomputed;
        }
        times.sort_by(f64::total_cmp);
        let t = times[times.len() / 2];
        let sum_call = call_time(budget, sum, 2);
        rows.push(Row::latency(
            "prop_dag100k_1pct_sources",
            t * 1e3,
            "ms",
            &format!("{recomputed} direct calls of the function (pages recomputed)"),
            recomputed as f64 * sum_call * 1e3,
            None,
        ));
    }
    Ok(rows)
}

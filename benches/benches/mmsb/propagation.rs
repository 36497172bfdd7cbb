//! Propagation costs: the fixed overhead of a propagation with nothing to
//! do, per recomputed node with a trivial function, a chain end to end, a
//! wide fan-out and a large random DAG.
//!
//! Every recompute here writes a one-byte change, so each fired node pays
//! for a diff, a derived delta and its commit; `*_cutoff` variants pay for
//! the recompute and comparison only.
//!
//! The states keep the default durability (`Flush`: one `write` system
//! call per commit), so each update here includes its log write; the
//! propagation rows of `mmsb bench` run with `Durability::None` and leave
//! the log's cost to the log rows.

use criterion::{BatchSize, Criterion, Throughput};
use mmsb::{Config, Mmsb, PageId, PageSpec, Payload, PropagationMode, Update};
use std::hint::black_box;
use std::time::Duration;

fn copy(ins: &[&[u8]], out: &mut [u8]) {
    out.copy_from_slice(ins[0]);
}

fn sum(ins: &[&[u8]], out: &mut [u8]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = ins.iter().fold(0u8, |a, p| a.wrapping_add(p[i]));
    }
}

fn state(mode: PropagationMode) -> Mmsb {
    let mut cfg = Config::temporary().with_propagation(mode);
    cfg.propagation_threads = 1;
    let s = Mmsb::start(cfg).expect("start");
    s.register_function("copy", 1, copy).expect("register");
    s.register_function("sum", 1, sum).expect("register");
    s.register_function("flat", 1, |_, _| {}).expect("register");
    s
}

fn page(s: &Mmsb, len: u64) -> PageId {
    s.create_page(PageSpec::new(len)).expect("page")
}

/// A source and a chain of `n` copies below it.
fn chain(s: &Mmsb, n: usize, func: &str) -> PageId {
    let src = page(s, 8);
    let mut prev = src;
    for _ in 0..n {
        let p = page(s, 8);
        s.declare_derived(p, func, &[prev]).expect("declare");
        prev = p;
    }
    src
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

pub fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("propagate");
    g.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));
    g.throughput(Throughput::Elements(1));

    // Baseline: a user write to a page with no dependents.
    {
        let s = state(PropagationMode::Immediate);
        let src = page(&s, 8);
        let mut v = 0u8;
        g.bench_function("update_no_dependents_8b", |b| {
            b.iter(|| {
                v = v.wrapping_add(1);
                s.update_page(src, Payload::Full(vec![v; 8])).expect("update")
            })
        });
    }

    // Nothing dirty: the fixed cost of `propagate()`.
    {
        let s = state(PropagationMode::Deferred);
        let src = chain(&s, 10, "copy");
        s.update_page(src, Payload::Full(vec![1; 8])).expect("update");
        s.propagate().expect("propagate");
        g.bench_function("propagate_nothing_dirty", |b| {
            b.iter(|| black_box(s.propagate().expect("propagate")))
        });
    }

    // A chain of 10 trivial recomputes, end to end, through update_page.
    {
        let s = state(PropagationMode::Immediate);
        let src = chain(&s, 10, "copy");
        let mut v = 0u8;
        g.bench_function("chain10_update_end_to_end", |b| {
            b.iter(|| {
                v = v.wrapping_add(1);
                s.update_page(src, Payload::Full(vec![v; 8])).expect("update")
            })
        });
    }

    // Per fired node: a chain of 1000 trivial recomputes, each writing.
    {
        let s = state(PropagationMode::Immediate);
        let src = chain(&s, 1000, "copy");
        let mut v = 0u8;
        g.throughput(Throughput::Elements(1000));
        g.bench_function("chain1000_per_node_write", |b| {
            b.iter(|| {
                v = v.wrapping_add(1);
                s.update_page(src, Payload::Full(vec![v; 8])).expect("update")
            })
        });
    }
    // Per fired node with early cutoff: 1000 children whose function
    // reproduces their bytes (recompute and compare, nothing written).
    {
        let s = state(PropagationMode::Immediate);
        let src = page(&s, 8);
        for _ in 0..1000 {
            let p = page(&s, 8);
            s.declare_derived(p, "flat", &[src]).expect("declare");
        }
        let mut v = 0u8;
        g.throughput(Throughput::Elements(1000));
        g.bench_function("fanout1000_per_node_cutoff", |b| {
            b.iter(|| {
                v = v.wrapping_add(1);
                s.update_page(src, Payload::Full(vec![v; 8])).expect("update")
            })
        });
    }
    g.throughput(Throughput::Elements(1));

    // Fan-out: one source, 10,000 derived children.
    for threads in [1usize, 2] {
        let mut cfg = Config::temporary();
        cfg.propagation_threads = threads;
        cfg.parallel_min_bytes = 0;
        let s = Mmsb::start(cfg).expect("start");
        s.register_function("copy", 1, copy).expect("register");
        let src = page(&s, 8);
        for _ in 0..10_000 {
            let p = page(&s, 8);
            s.declare_derived(p, "copy", &[src]).expect("declare");
        }
        let mut v = 0u8;
        g.sample_size(20).throughput(Throughput::Elements(10_000));
        g.bench_function(format!("fanout10000_threads{threads}"), |b| {
            b.iter(|| {
                v = v.wrapping_add(1);
                s.update_page(src, Payload::Full(vec![v; 8])).expect("update")
            })
        });
    }

    // 100,000-node random DAG: 10,000 sources, 90,000 derived pages with
    // 1–3 parents each; a batch updates 1% of the sources.
    {
        let s = state(PropagationMode::Deferred);
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut ids: Vec<PageId> = (0..10_000).map(|_| page(&s, 8)).collect();
        for _ in 0..90_000 {
            let p = page(&s, 8);
            let k = 1 + (rng.next() % 3) as usize;
            // Parents biased to recent pages: deep, sparse dependencies.
            let parents: Vec<PageId> = (0..k)
                .map(|_| {
                    let back = 1 + (rng.next() % 2_000) as usize;
                    ids[ids.len().saturating_sub(back)]
                })
                .collect();
            s.declare_derived(p, "sum", &parents).expect("declare");
            ids.push(p);
        }
        s.propagate().expect("propagate");
        let mut v = 0u8;
        g.sample_size(10).throughput(Throughput::Elements(1));
        g.bench_function("dag100k_update_1pct_sources", |b| {
            b.iter_batched(
                || {
                    v = v.wrapping_add(1);
                    (0..100)
                        .map(|_| Update::new(ids[(rng.next() % 10_000) as usize], Payload::Full(vec![v; 8])))
                        .collect::<Vec<_>>()
                },
                |batch| {
                    s.update_batch(batch).expect("update");
                    s.propagate().expect("propagate")
                },
                BatchSize::SmallInput,
            )
        });
        let stats = {
            let batch = (0..100).map(|i| Update::new(ids[i * 97], Payload::Full(vec![0xA5; 8]))).collect();
            s.update_batch(batch).expect("update");
            s.propagate().expect("propagate")
        };
        eprintln!("dag100k: one 1% batch recomputed {} pages ({} cut off)", stats.recomputed, stats.cut_off);
    }
    g.finish();
}

//! Crash consistency: every crash point of several workloads, under every
//! crash mode, and a model-based test of the whole store.

use mmsb::vfs::{CrashMode, SimVfs};
use mmsb::Durability;
use mmsb::{Config, Mmsb, PageId, PageSpec, Payload, Result, SparseDelta, Update};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Clone, Debug)]
enum Op {
    Create(u64),
    Update(usize, u64, Vec<u8>),
    Batch(Vec<(usize, u64, Vec<u8>)>),
    Delete(usize),
    Checkpoint,
}

fn cfg(vfs: &SimVfs) -> Config {
    Config::at("/state").vfs(Arc::new(vfs.clone())).durability(Durability::SYNC)
}

fn payload(len: u64, off: u64, bytes: &[u8]) -> Payload {
    let off = off % len;
    let n = (bytes.len() as u64).min(len - off).max(1) as usize;
    let b: Vec<u8> = bytes.iter().copied().chain(std::iter::repeat(0xAB)).take(n).collect();
    Payload::Sparse(SparseDelta::from_pairs([(off, &b[..])]).unwrap())
}

/// Run one op; `Ok(())` when the state accepted it.
fn run(s: &Mmsb, op: &Op) -> Result<()> {
    let ids = s.page_ids();
    let pick = |i: usize| ids.get(i % ids.len().max(1)).copied();
    match op {
        Op::Create(len) => s.create_page(PageSpec::new(*len)).map(|_| ()),
        Op::Update(i, off, b) => match pick(*i) {
            Some(p) => s.update_page(p, payload(s.page_info(p)?.len, *off, b)).map(|_| ()),
            None => Ok(()),
        },
        Op::Batch(us) => {
            let mut ups = Vec::new();
            for (i, off, b) in us {
                if let Some(p) = pick(*i) {
                    ups.push(Update::new(p, payload(s.page_info(p)?.len, *off, b)));
                }
            }
            s.update_batch(ups).map(|_| ())
        }
        Op::Delete(i) => match pick(*i) {
            Some(p) => s.delete_page(p),
            None => Ok(()),
        },
        Op::Checkpoint => s.checkpoint().map(|_| ()),
    }
}

fn workloads() -> Vec<Vec<Op>> {
    vec![
        vec![
            Op::Create(100),
            Op::Update(0, 5, vec![1, 2, 3]),
            Op::Create(300),
            Op::Batch(vec![(0, 0, vec![9; 50]), (1, 250, vec![8; 40]), (0, 90, vec![7; 10])]),
            Op::Checkpoint,
            Op::Update(1, 0, vec![4; 200]),
            Op::Delete(0),
            Op::Batch(vec![(0, 1, vec![1]), (0, 2, vec![2])]),
            Op::Create(64),
        ],
        vec![
            Op::Create(10),
            Op::Checkpoint,
            Op::Checkpoint,
            Op::Update(0, 0, vec![1; 10]),
            Op::Create(20),
            Op::Checkpoint,
            Op::Delete(1),
            Op::Update(0, 3, vec![5]),
        ],
    ]
}

/// Hash after each op on a reliable store.
fn expected(ops: &[Op]) -> Vec<u128> {
    let s = Mmsb::start(Config::temporary().durability(Durability::None)).unwrap();
    let mut h = vec![s.state_hash().unwrap()];
    for op in ops {
        run(&s, op).unwrap();
        h.push(s.state_hash().unwrap());
    }
    h
}

/// File-system operations of a full, crash-free run of `ops`.
fn full_run_ops<O>(
    cfg: impl Fn(&SimVfs) -> Config,
    start: impl Fn(Config) -> Result<Mmsb>,
    run: impl Fn(&Mmsb, &O) -> Result<()>,
    ops: &[O],
) -> Result<u64> {
    let v = SimVfs::new();
    let s = start(cfg(&v))?;
    for op in ops {
        run(&s, op)?;
    }
    drop(s);
    Ok(v.ops())
}

/// Run `ops` (`run` each, on a store from `start`) crashing at every file
/// operation of a full run, under every crash mode, and hand each store
/// recovered after the crash to `check`, with the number of ops
/// acknowledged before it and a name for the crash point. Returns the
/// number of crash points.
fn at_every_crash_point<O>(
    ops: &[O],
    start: impl Fn(Config) -> Result<Mmsb>,
    run: impl Fn(&Mmsb, &O) -> Result<()>,
    mut check: impl FnMut(&Mmsb, usize, &str) -> Result<()>,
) -> Result<u64> {
    let total = full_run_ops(cfg, &start, &run, ops)?;
    let mut points = 0;
    for k in 0..=total {
        for mode in
            [CrashMode::DropUnsynced, CrashMode::KeepAll, CrashMode::Torn(k), CrashMode::Torn(k + 1000)]
        {
            points += 1;
            let v = SimVfs::new();
            v.crash_after(k);
            let mut done = 0;
            if let Ok(s) = start(cfg(&v)) {
                for op in ops {
                    if run(&s, op).is_err() {
                        break;
                    }
                    done += 1;
                }
            }
            v.crash(mode);
            let at = format!("crash at op {k} ({mode:?}) after {done} acknowledged ops");
            let s = start(cfg(&v)).unwrap_or_else(|e| panic!("{at}: {e}"));
            check(&s, done, &at)?;
            // The recovered store accepts writes and reopens to the same state.
            let p = s.create_page(PageSpec::new(8))?;
            s.update_page(p, Payload::Full(vec![3; 8]))?;
            let h2 = s.state_hash()?;
            drop(s);
            v.crash(CrashMode::DropUnsynced);
            let s = start(cfg(&v))?;
            assert_eq!(s.state_hash()?, h2, "{at}: second recovery");
        }
    }
    Ok(points)
}

#[test]
fn every_crash_point_recovers_an_acknowledged_state() -> Result<()> {
    let mut points = 0u64;
    for ops in workloads() {
        let want = expected(&ops);
        points += at_every_crash_point(&ops, Mmsb::start, run, |s, done, at| {
            let h = s.state_hash()?;
            let ok = h == want[done] || (done < ops.len() && h == want[done + 1]);
            assert!(ok, "{at}: {}", s.recovery_report());
            Ok(())
        })?;
    }
    eprintln!("crash points checked: {points} (every file operation of every workload, 4 crash modes)");
    Ok(())
}

/// The source page of the propagating workloads (the first created).
fn src(s: &Mmsb) -> PageId {
    s.page_ids()[0]
}

/// Every page but the source is filled with the source's first byte.
fn derived_follow_the_source(s: &Mmsb, at: &str) -> Result<()> {
    if let Some((&src, derived)) = s.page_ids().split_first() {
        let b = s.query_page(src)?[0];
        for p in derived {
            assert!(s.query_page(*p)?.iter().all(|&x| x == b), "{at}: {}", s.recovery_report());
        }
    }
    Ok(())
}

/// A state whose writes propagate: a source page of 8 bytes and 40 pages
/// of 32 KiB derived from it (each filled with the source's first byte), so
/// that each write of the source commits 1.3 MB of derived deltas: two
/// derived records in one batch.
fn propagating_ops() -> Vec<fn(&Mmsb) -> Result<()>> {
    vec![
        |s| s.create_page(PageSpec::new(8)).map(drop),
        |s| {
            for _ in 0..40 {
                let p = s.create_page(PageSpec::new(32 << 10))?;
                s.declare_derived(p, "fill", &[src(s)])?;
            }
            Ok(())
        },
        |s| s.update_page(src(s), Payload::Full(vec![1; 8])).map(drop),
        |s| s.update_page(src(s), payload(8, 0, &[2])).map(drop),
        |s| s.checkpoint().map(drop),
        |s| s.update_page(src(s), payload(8, 0, &[3])).map(drop),
    ]
}

fn start_propagating(cfg: Config) -> Result<Mmsb> {
    let s = Mmsb::start(cfg)?;
    s.register_function("fill", 1, |ins: &[&[u8]], out: &mut [u8]| out.fill(ins[0][0]))?;
    Ok(s)
}

/// Every crash point of a workload of large propagations (derived records
/// spanning a batch) recovers an acknowledged state: a batch of derived
/// records torn anywhere is dropped whole.
#[test]
fn every_crash_point_of_a_propagating_workload_recovers_an_acknowledged_state() -> Result<()> {
    let ops = propagating_ops();
    let want = {
        let s = start_propagating(Config::temporary().durability(Durability::None))?;
        let mut h = vec![s.state_hash()?];
        for op in &ops {
            op(&s)?;
            h.push(s.state_hash()?);
        }
        h
    };
    let points = at_every_crash_point(
        &ops,
        start_propagating,
        |s, op| op(s),
        |s, done, at| {
            let h = s.state_hash()?;
            // Op 1 is many commits: any prefix of it is acknowledged.
            let ok = h == want[done] || (done < ops.len() && h == want[done + 1]) || done == 1;
            assert!(ok, "{at}: {}", s.recovery_report());
            // A write and its propagation are recovered together: every
            // derived page is filled with the source's first byte.
            derived_follow_the_source(s, at)
        },
    )?;
    eprintln!("crash points checked: {points}");
    Ok(())
}

/// Every crash point of a deferred-mode workload (writes whose propagation
/// waits for `propagate`, a checkpoint taken with work queued) recovers a
/// state that owes the same work: once `propagate` runs, every derived page
/// agrees with its source, whatever was or was not propagated before the
/// crash.
#[test]
fn every_crash_point_of_a_deferred_workload_keeps_the_queued_work() -> Result<()> {
    let ops: Vec<fn(&Mmsb) -> Result<()>> = vec![
        |s| s.create_page(PageSpec::new(8)).map(drop),
        |s| {
            for _ in 0..4 {
                let p = s.create_page(PageSpec::new(4096))?;
                s.declare_derived(p, "fill", &[src(s)])?;
            }
            Ok(())
        },
        |s| s.propagate().map(drop),
        |s| s.update_page(src(s), Payload::Full(vec![1; 8])).map(drop),
        |s| s.checkpoint().map(drop),
        |s| s.update_page(src(s), payload(8, 0, &[2])).map(drop),
        |s| s.propagate().map(drop),
        |s| s.update_page(src(s), payload(8, 0, &[3])).map(drop),
        |s| s.checkpoint().map(drop),
    ];
    let start = |c: Config| start_propagating(c.with_propagation(mmsb::PropagationMode::Deferred));
    let points = at_every_crash_point(
        &ops,
        start,
        |s, op| op(s),
        |s, _, at| {
            s.propagate()?;
            derived_follow_the_source(s, at)
        },
    )?;
    eprintln!("crash points checked: {points}");
    Ok(())
}

/// Without per-commit fsyncs a crash may lose acknowledged writes, but never
/// what a checkpoint acknowledged: the log moves on at a checkpoint without
/// syncing the segment it covers, and recovery must still start from the
/// checkpoint, with no corruption from that unsynced segment.
#[test]
fn a_checkpoint_is_durable_without_per_commit_fsyncs() -> Result<()> {
    for durability in [Durability::None, Durability::Flush] {
        let cfg = |v: &SimVfs| Config::at("/state").vfs(Arc::new(v.clone())).durability(durability);
        for ops in workloads() {
            let want = expected(&ops);
            let total = full_run_ops(cfg, Mmsb::start, run, &ops)?;
            for k in 0..=total {
                for mode in [CrashMode::DropUnsynced, CrashMode::KeepAll] {
                    let v = SimVfs::new();
                    v.crash_after(k);
                    // Ops acknowledged, and those up to the last acknowledged checkpoint.
                    let (mut done, mut durable) = (0, 0);
                    if let Ok(s) = Mmsb::start(cfg(&v)) {
                        for op in &ops {
                            if run(&s, op).is_err() {
                                break;
                            }
                            done += 1;
                            if matches!(op, Op::Checkpoint) {
                                durable = done;
                            }
                        }
                    }
                    v.crash(mode);
                    let s = Mmsb::start(cfg(&v))
                        .unwrap_or_else(|e| panic!("{durability:?}, crash at op {k} ({mode:?}): {e}"));
                    let h = s.state_hash().unwrap();
                    let last = (done + 1).min(ops.len());
                    assert!(
                        want[durable..=last].contains(&h),
                        "{durability:?}, crash at op {k} ({mode:?}): {done} ops acknowledged, \
                         {durable} checkpointed: {}",
                        s.recovery_report()
                    );
                }
            }
        }
    }
    Ok(())
}

#[derive(Clone, Debug)]
enum MOp {
    Op(Op),
    Crash(u8, u64),
    Reopen,
}

fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 1..40)
}

fn arb_mop() -> impl Strategy<Value = MOp> {
    prop_oneof![
        2 => (1u64..300).prop_map(|l| MOp::Op(Op::Create(l))),
        5 => (any::<usize>(), any::<u64>(), arb_bytes()).prop_map(|(i, o, b)| MOp::Op(Op::Update(i, o, b))),
        2 => proptest::collection::vec((any::<usize>(), any::<u64>(), arb_bytes()), 0..5).prop_map(|v| MOp::Op(Op::Batch(v))),
        1 => any::<usize>().prop_map(|i| MOp::Op(Op::Delete(i))),
        1 => Just(MOp::Op(Op::Checkpoint)),
        1 => (0u8..3, any::<u64>()).prop_map(|(m, s)| MOp::Crash(m, s)),
        1 => Just(MOp::Reopen),
    ]
}

/// The reference: pages as plain vectors with epochs.
#[derive(Default, Debug, PartialEq, Eq)]
struct Model {
    pages: BTreeMap<PageId, (Vec<u8>, u64)>,
    next: u64,
}

impl Model {
    fn apply(&mut self, op: &Op) {
        let ids: Vec<PageId> = self.pages.keys().copied().collect();
        let pick = |i: usize| ids.get(i % ids.len().max(1)).copied();
        let upd = |pages: &mut BTreeMap<PageId, (Vec<u8>, u64)>, p: PageId, off: u64, b: &[u8]| {
            let e = pages.get_mut(&p).unwrap();
            payload(e.0.len() as u64, off, b).apply_to(&mut e.0).unwrap();
            e.1 += 1;
        };
        match op {
            Op::Create(l) => {
                self.next += 1;
                self.pages.insert(PageId(self.next), (vec![0; *l as usize], 0));
            }
            Op::Update(i, off, b) => {
                if let Some(p) = pick(*i) {
                    upd(&mut self.pages, p, *off, b);
                }
            }
            Op::Batch(us) => {
                for (i, off, b) in us {
                    if let Some(p) = pick(*i) {
                        upd(&mut self.pages, p, *off, b);
                    }
                }
            }
            Op::Delete(i) => {
                if let Some(p) = pick(*i) {
                    self.pages.remove(&p);
                }
            }
            Op::Checkpoint => {}
        }
    }

    fn check(&self, s: &Mmsb) {
        assert_eq!(s.page_ids(), self.pages.keys().copied().collect::<Vec<_>>());
        for (id, (bytes, epoch)) in &self.pages {
            assert_eq!(&s.query_page(*id).unwrap(), bytes, "page {id}");
            assert_eq!(s.page_info(*id).unwrap().epoch.0, *epoch, "page {id}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn the_store_behaves_like_a_map_across_crashes(ops in proptest::collection::vec(arb_mop(), 1..25)) {
        let v = SimVfs::new();
        let mut s = Mmsb::start(cfg(&v)).unwrap();
        let mut model = Model::default();
        for op in &ops {
            match op {
                MOp::Op(op) => {
                    run(&s, op).unwrap();
                    model.apply(op);
                }
                MOp::Crash(m, seed) => {
                    drop(s);
                    v.crash(match m { 0 => CrashMode::DropUnsynced, 1 => CrashMode::KeepAll, _ => CrashMode::Torn(*seed) });
                    s = Mmsb::start(cfg(&v)).unwrap();
                }
                MOp::Reopen => {
                    s.stop().unwrap();
                    drop(s);
                    s = Mmsb::start(cfg(&v)).unwrap();
                    prop_assert!(s.recovery_report().is_clean());
                }
            }
            model.check(&s);
        }
    }
}

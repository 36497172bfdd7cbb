//! A small harness for profiling the hot paths under callgrind or a timer:
//! `cargo run --release -p mmsb --example perf_harness -- <case> [n]`.
//!
//! Cases: `append` (log append, 1000 small deltas per commit, Flush),
//! `update` (single-delta `update_page`), `batch` (`update_batch` of 1000),
//! `replay` (append then replay; only the replay is timed), `chain10`,
//! `chain1000` (propagation through a chain of copies), `dense`, `sparse`
//! (CPU apply on 1 MiB, with memcpy beside it), `alloc` (pooled 4 KiB),
//! `replay_small` (the disk bench's replay row: `n` sparse deltas of 1–8
//! bytes on 64 pages of 64 bytes, batches of 1000, replayed 11 times with
//! `replay_to_lsn` beside a plain read of the segment files).

use mmsb::internals::alloc::PageAllocator;
use mmsb::internals::log::{Durability, LogWriter};
use mmsb::vfs::StdVfs;
use mmsb::{
    Change, Config, Delta, DeltaId, DenseDelta, Mmsb, PageId, PageSpec, Payload, Result, Run, Source,
    SparseDelta, Update,
};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

fn small(next: u64) -> Result<Payload> {
    let off = (next * 8) % 4000;
    Ok(Payload::Sparse(SparseDelta::from_pairs([(off, &next.to_le_bytes()[..])])?))
}

fn append_log(dir: &std::path::Path, n: u64, measure: bool) -> Result<f64> {
    let log_dir = mmsb::internals::files::log_dir(dir);
    std::fs::create_dir_all(&log_dir)?;
    let mut w = LogWriter::open(Arc::new(StdVfs), &log_dir, 1, 1, 1, Durability::Flush, 1 << 30)?;
    w.append(&[Change::CreatePage {
        id: PageId(1),
        len: 4096,
        location: mmsb::Location::Cpu,
        meta: Default::default(),
    }])?;
    w.commit()?;
    let mut all = Vec::new();
    let mut next = 1u64;
    while next <= n {
        let mut changes = Vec::with_capacity(1000);
        for _ in 0..1000 {
            changes.push(Change::Apply(Delta {
                id: DeltaId(next),
                page: PageId(1),
                base_epoch: None,
                payload: small(next)?,
                source: Source::User,
                tag: None,
                timestamp: next + 1,
            }));
            next += 1;
        }
        all.push(changes);
    }
    let mut run = || {
        for c in &all {
            w.append(c)?;
            w.commit()?;
        }
        Ok(())
    };
    let dt = if measure { timed(run)?.1 } else { run().map(|()| 0.0)? };
    w.sync()?;
    Ok(dt)
}

fn chain(s: &Mmsb, n: usize) -> Result<PageId> {
    let src = s.create_page(PageSpec::new(8))?;
    let mut prev = src;
    for _ in 0..n {
        let p = s.create_page(PageSpec::new(8))?;
        s.declare_derived(p, "copy", &[prev])?;
        prev = p;
    }
    Ok(src)
}

/// The measured region (callgrind: `--toggle-collect='*timed*'`).
#[inline(never)]
fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let t = Instant::now();
    let v = f()?;
    Ok((v, t.elapsed().as_secs_f64()))
}

fn replay_small(n: u64) -> Result<()> {
    let dir = tempfile::tempdir()?;
    {
        let s = Mmsb::start(Config::at(dir.path()).durability(Durability::None))?;
        let ids = (0..64).map(|_| s.create_page(PageSpec::new(64))).collect::<Result<Vec<_>>>()?;
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for _ in 0..n.div_ceil(1000) {
            let mut b = Vec::with_capacity(1000);
            for k in 0..1000 {
                let len = 1 + rnd(8);
                let off = rnd(64 - len + 1);
                let data: Vec<u8> = (0..len).map(|_| rnd(256) as u8).collect();
                b.push(Update::new(
                    ids[k % 64],
                    Payload::Sparse(SparseDelta::from_pairs([(off, &data[..])])?),
                ));
            }
            s.update_batch(b)?;
        }
        s.stop()?;
    }
    let log = mmsb::internals::files::log_dir(dir.path());
    let mut segs: Vec<_> = std::fs::read_dir(&log)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segs.sort();
    let deltas = n.div_ceil(1000) * 1000;
    // Nanoseconds per delta of each replay and read; the minimum is the
    // figure least disturbed by other work on the machine.
    let (mut replays, mut reads) = (Vec::new(), Vec::new());
    for _ in 0..11 {
        let (img, dt) = timed(|| {
            mmsb::history::replay::replay_to_lsn(&StdVfs, dir.path(), None, &mmsb::Limits::default())
        })?;
        black_box(img.state_hash());
        let t = Instant::now();
        for p in &segs {
            black_box(std::fs::read(p)?);
        }
        reads.push(t.elapsed().as_secs_f64() * 1e9 / deltas as f64);
        replays.push(dt * 1e9 / deltas as f64);
    }
    replays.sort_by(f64::total_cmp);
    reads.sort_by(f64::total_cmp);
    println!(
        "replay_small: ns per delta: replay min {:.1} median {:.1}, read min {:.1} median {:.1}; \
         ratio of minima {:.3}, of medians {:.3}",
        replays[0],
        replays[5],
        reads[0],
        reads[5],
        reads[0] / replays[0],
        reads[5] / replays[5]
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let case = args.get(1).map_or("append", String::as_str);
    let n: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    match case {
        "append" => {
            let dir = tempfile::tempdir()?;
            let dt = append_log(dir.path(), n, true)?;
            println!("append: {:.2} M deltas/s", n as f64 / dt / 1e6);
        }
        "replay" => {
            let dir = tempfile::tempdir()?;
            append_log(dir.path(), n, false)?;
            let (r, dt) = timed(|| mmsb::history::tools::replay(dir.path(), None))?;
            println!("replay: {:.2} M deltas/s ({})", n as f64 / dt / 1e6, r.timestamp);
        }
        "replay_small" => replay_small(n)?,
        "update" | "batch" => {
            let s = Mmsb::start(Config::temporary())?;
            let p = s.create_page(PageSpec::new(4096))?;
            let dt = if case == "update" {
                let pays = (0..n).map(small).collect::<Result<Vec<_>>>()?;
                timed(|| {
                    for p2 in pays {
                        s.update_page(p, p2)?;
                    }
                    Ok(())
                })?
                .1
            } else {
                let mut batches = Vec::new();
                let mut i = 0;
                while i < n {
                    batches.push(
                        (i..i + 1000).map(|k| Ok(Update::new(p, small(k)?))).collect::<Result<Vec<_>>>()?,
                    );
                    i += 1000;
                }
                timed(|| {
                    for b in batches {
                        s.update_batch(b)?;
                    }
                    Ok(())
                })?
                .1
            };
            println!("{case}: {:.1} ns per delta", dt * 1e9 / n as f64);
        }
        "chain10" | "chain1000" => {
            let len = if case == "chain10" { 10 } else { 1000 };
            let s = Mmsb::start(Config { propagation_threads: 1, ..Config::temporary() })?;
            s.register_function("copy", 1, |ins: &[&[u8]], out: &mut [u8]| out.copy_from_slice(ins[0]))?;
            let src = chain(&s, len)?;
            let pays: Vec<Payload> = (0..n).map(|i| Payload::Full(vec![i as u8 + 1; 8])).collect();
            let ((), dt) = timed(|| {
                for p in pays {
                    s.update_page(src, p)?;
                }
                Ok(())
            })?;
            println!(
                "{case}: {:.0} ns per update, {:.0} ns per node",
                dt * 1e9 / n as f64,
                dt * 1e9 / (n * len as u64) as f64
            );
        }
        "dense" | "sparse" => {
            let len = 1usize << 20;
            let p = if case == "dense" {
                let opts: Vec<Option<u8>> = (0..len)
                    .map(|i| if (i * 2_654_435_761) % 7 < 4 { Some(i as u8) } else { None })
                    .collect();
                Payload::Dense(DenseDelta::from_options(&opts)?)
            } else {
                let runs: Vec<Run> =
                    (0..len / 128).map(|k| Run { offset: (k * 128) as u64, len: 64 }).collect();
                let data = vec![7u8; 64 * runs.len()];
                Payload::Sparse(SparseDelta::new(runs, data)?)
            };
            let touched = p.touched() as usize;
            let src = vec![1u8; len];
            let mut page = PageAllocator::default().alloc(len)?;
            let reps = n.max(1);
            let ((), apply) = timed(|| {
                for _ in 0..reps {
                    p.apply_to(black_box(&mut page))?;
                }
                Ok(())
            })?;
            let apply = apply / reps as f64;
            let mut dst = vec![0u8; touched];
            let t = Instant::now();
            for _ in 0..reps {
                dst.copy_from_slice(black_box(&src[..touched]));
                black_box(&mut dst);
            }
            let copy = t.elapsed().as_secs_f64() / reps as f64;
            println!(
                "{case}: apply {:.1} us, memcpy of touched {:.1} us, ratio {:.2}",
                apply * 1e6,
                copy * 1e6,
                copy / apply
            );
            if case == "dense" {
                let mut d2 = vec![0u8; len];
                let t = Instant::now();
                for _ in 0..reps {
                    d2.copy_from_slice(black_box(&src));
                    black_box(&mut d2);
                }
                let full = t.elapsed().as_secs_f64() / reps as f64;
                println!("dense: memcpy 1 MiB {:.1} us, ratio {:.2}", full * 1e6, full / apply);
            }
        }
        "alloc" => {
            let pool = PageAllocator::default();
            drop(pool.alloc(4096)?);
            let ((), dt) = timed(|| {
                for _ in 0..n {
                    black_box(pool.alloc(4096)?);
                }
                Ok(())
            })?;
            println!("alloc: {:.1} ns per 4 KiB page", dt * 1e9 / n as f64);
        }
        other => eprintln!("unknown case {other}"),
    }
    Ok(())
}

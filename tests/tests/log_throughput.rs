//! Throughput smoke checks of the append and replay paths. Ignored by
//! default (timing belongs to the benchmarks); run with
//! `cargo test --release -p mmsb-tests --test log_throughput -- --ignored --nocapture`.

use mmsb::internals::log::{Durability, LogWriter};
use mmsb::vfs::StdVfs;
use mmsb::{Change, Delta, DeltaId, PageId, Payload, Result, Source, SparseDelta};
use std::sync::Arc;
use std::time::Instant;

#[test]
#[ignore]
fn append_and_replay_small_deltas() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let log_dir = mmsb::internals::files::log_dir(dir.path());
    std::fs::create_dir_all(&log_dir)?;
    let n: u64 = 5_000_000;
    let batch = 1000u64;
    let mut w = LogWriter::open(Arc::new(StdVfs), &log_dir, 1, 1, 1, Durability::Flush, 1 << 30)?;
    w.append(&[Change::CreatePage {
        id: PageId(1),
        len: 4096,
        location: mmsb::Location::Cpu,
        meta: Default::default(),
    }])?;
    w.commit()?;
    // The deltas are built up front: this measures the log, not the allocator.
    let mut all: Vec<Vec<Change>> = Vec::new();
    let mut next = 1u64;
    while next <= n {
        let mut changes = Vec::with_capacity(batch as usize);
        for _ in 0..batch {
            let off = (next * 8) % 4000;
            changes.push(Change::Apply(Delta {
                id: DeltaId(next),
                page: PageId(1),
                base_epoch: None,
                payload: Payload::Sparse(SparseDelta::from_pairs([(off, &next.to_le_bytes()[..])])?),
                source: Source::User,
                tag: None,
                timestamp: next + 1,
            }));
            next += 1;
        }
        all.push(changes);
    }
    let t = Instant::now();
    for changes in &all {
        w.append(changes)?;
        w.commit()?;
    }
    let dt = t.elapsed().as_secs_f64();
    w.sync()?;
    let stats = w.stats();
    drop(w);
    println!(
        "append (Flush, 1000 per commit): {:.2} M deltas/s, {:.0} MB/s, {} writes",
        n as f64 / dt / 1e6,
        stats.bytes as f64 / dt / 1e6,
        stats.writes
    );
    drop(all);
    let t = Instant::now();
    let r = mmsb::history::tools::replay(dir.path(), None)?;
    let dt = t.elapsed().as_secs_f64();
    println!("replay (read + verify + apply): {:.2} M deltas/s ({r})", n as f64 / dt / 1e6);
    assert_eq!(r.timestamp, n + 1);
    Ok(())
}

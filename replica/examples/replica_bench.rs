//! Replicated commit throughput and latency against the local durable
//! commit, in the same run, and follower lag under sustained writes:
//!
//!     MMSB_NATS_SERVER=$(bash scripts/nats-server.sh) \
//!         cargo run --release -p mmsb-replica --example replica_bench
//!
//! Starts a three-node cluster on 127.0.0.1 (fsync on every message,
//! `sync_interval: always`), then times N single-page commits of 256
//! bytes three ways: the local log with fsync per commit, the replicated
//! log (R3 quorum, local log flushed), and the replicated log with the
//! local log fsynced too. A follower tails the stream during the last.

use mmsb::{Config, Durability, Mmsb, PageSpec, Payload};
use mmsb_replica::cluster::LocalCluster;
use mmsb_replica::{follow, Leader, Options};
use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn run(name: &str, s: &Mmsb, n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let page = s.create_page(PageSpec::new(256))?;
    let mut lat = Vec::with_capacity(n);
    let t0 = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        s.update_page(page, Payload::Full(vec![i as u8; 256]))?;
        lat.push(t.elapsed());
    }
    let total = t0.elapsed();
    lat.sort();
    println!(
        "{name:<34} {n:>5} commits  {:>8.0} commits/s  p50 {:>8.1} us  p99 {:>8.1} us",
        n as f64 / total.as_secs_f64(),
        percentile(&lat, 0.5).as_secs_f64() * 1e6,
        percentile(&lat, 0.99).as_secs_f64() * 1e6
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::var("MMSB_BENCH_COMMITS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let c = LocalCluster::start(3)?;
    let tmp = tempfile::tempdir()?;
    let local = Mmsb::start(Config::at(tmp.path().join("local")).durability(Durability::SYNC))?;
    run("local log, fsync each commit", &local, n)?;
    local.stop()?;

    let mut opts = Options::new(c.urls(), "bench", "w");
    opts.timeout = Duration::from_secs(10);
    let leader = Leader::acquire(&opts, &tmp.path().join("r1"), Duration::from_secs(10))?;
    run("replicated R3, local log flushed", leader.mmsb(), n)?;
    drop(leader);

    // The local log fsynced as well, with a follower tailing the stream.
    let mut opts = Options::new(c.urls(), "bench2", "w");
    opts.timeout = Duration::from_secs(10);
    opts.durability = Durability::SYNC;
    let leader = Leader::acquire(&opts, &tmp.path().join("r2"), Duration::from_secs(10))?;
    let fopts = opts.with_holder("f");
    let fdir = tmp.path().join("f");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let tail = std::thread::spawn(move || -> Result<(u64, u64, usize), String> {
        let mut f = follow(&fopts, &fdir).map_err(|e| e.to_string())?;
        let (mut max_lag, mut sum, mut samples) = (0u64, 0u64, 0usize);
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            if f.step().map_err(|e| e.to_string())?.is_none() {
                std::thread::sleep(Duration::from_millis(1));
            }
            if samples % 16 == 0 {
                let lag = f.lag().map_err(|e| e.to_string())?.messages();
                max_lag = max_lag.max(lag);
                sum += lag;
            }
            samples += 1;
        }
        f.catch_up().map_err(|e| e.to_string())?;
        Ok((max_lag, sum / (samples as u64 / 16).max(1), f.lsn().0 as usize))
    });
    run("replicated R3, local log fsynced", leader.mmsb(), n)?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (max_lag, mean_lag, lsn) = tail.join().map_err(|_| "follower panicked")??;
    println!("follower lag while writing: mean {mean_lag} messages, max {max_lag} messages; caught up to LSN {lsn}");
    assert_eq!(lsn as u64, leader.mmsb().lsn().0);
    Ok(())
}

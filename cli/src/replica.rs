//! `mmsb follow` and `mmsb lead`: a replicated state through NATS
//! JetStream (docs/DISTRIBUTED.md).

use clap::Args;
use mmsb::{PageSpec, Payload};
use mmsb_replica::{follow, Leader, Options};
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where the replicated state lives.
#[derive(Args, Debug)]
pub struct Cluster {
    /// NATS URLs of the cluster's nodes, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    nats: Vec<String>,
    /// The state's name (its stream is MMSB_<name>).
    #[arg(long)]
    state: String,
    /// This process's name in the leader lease.
    #[arg(long, default_value = "mmsb-cli")]
    holder: String,
    /// Replicas of the stream (3 for a cluster, 1 for a single server).
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Lease length in milliseconds.
    #[arg(long, default_value_t = 2000)]
    lease_ms: u64,
}

impl Cluster {
    fn options(&self) -> Options {
        let mut o = Options::new(self.nats.clone(), &self.state, &self.holder);
        o.replicas = self.replicas;
        o.lease_ttl = Duration::from_millis(self.lease_ms);
        o
    }
}

#[derive(Args, Debug)]
pub struct FollowArgs {
    #[command(flatten)]
    cluster: Cluster,
    /// The follower's state directory (created when missing).
    dir: PathBuf,
    /// Keep following for this many seconds, printing progress each
    /// second (0: catch up once and stop).
    #[arg(long, default_value_t = 0)]
    watch: u64,
}

/// Catch up with the stream (and keep following with `--watch`); the
/// last line is `lsn N hash H`.
pub fn follow_cmd(args: &FollowArgs) -> mmsb_replica::Result<()> {
    let mut f = follow(&args.cluster.options(), &args.dir)?;
    let t0 = Instant::now();
    f.catch_up()?;
    let mut shown = Instant::now();
    while t0.elapsed() < Duration::from_secs(args.watch) {
        if f.step()?.is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        if shown.elapsed() >= Duration::from_secs(1) {
            let lag = f.lag()?;
            outln!("lsn {} epoch {} lag {} messages", f.lsn().0, f.epoch(), lag.messages());
            shown = Instant::now();
        }
    }
    let lag = f.lag()?;
    outln!(
        "stream seq {} read {} lag {} messages; duplicates skipped {}",
        lag.stream_seq,
        lag.read_seq,
        lag.messages(),
        f.duplicates()
    );
    outln!("lsn {} hash {:032x}", f.lsn().0, f.state_hash());
    Ok(())
}

#[derive(Args, Debug)]
pub struct LeadArgs {
    #[command(flatten)]
    cluster: Cluster,
    /// The leader's state directory (created when missing).
    dir: PathBuf,
    /// Random page writes to make (each its own replicated commit).
    #[arg(long, default_value_t = 100)]
    writes: u64,
    /// Seed of the writes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How long to wait for the lease, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    wait_ms: u64,
}

/// Take the lease and make random writes, printing `acked EPOCH LSN HASH`
/// once each commit is acknowledged by the stream's quorum.
pub fn lead_cmd(args: &LeadArgs) -> mmsb_replica::Result<()> {
    let leader = Leader::acquire(&args.cluster.options(), &args.dir, Duration::from_millis(args.wait_ms))?;
    let s = leader.mmsb();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    let mut pages = s.page_ids();
    outln!("leader epoch {} at lsn {}", leader.epoch(), s.lsn().0);
    for _ in 0..args.writes {
        if pages.len() < 4 || rng.random_ratio(1, 10) {
            pages.push(s.create_page(PageSpec::new(rng.random_range(16..256)))?);
        } else {
            let p = pages[rng.random_range(0..pages.len())];
            let len = s.page_info(p)?.len;
            let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            s.update_page(p, Payload::Full(bytes))?;
        }
        outln!("acked {} {} {:032x}", leader.epoch(), s.lsn().0, s.state_hash()?);
    }
    s.sync()?;
    Ok(())
}

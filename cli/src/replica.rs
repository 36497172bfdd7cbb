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

/// A replicated state named on the command line of `inspect` and `verify`.
#[derive(Args, Debug)]
pub struct Replicated {
    /// NATS URLs of the cluster's nodes, comma-separated (with --state,
    /// instead of a state directory).
    #[arg(long, value_delimiter = ',', requires = "state", conflicts_with = "dir")]
    nats: Vec<String>,
    /// The replicated state's name (its stream is MMSB_<name>).
    #[arg(long, requires = "nats", conflicts_with = "dir")]
    state: Option<String>,
}

impl Replicated {
    fn options(&self) -> mmsb::Result<Options> {
        let state = self.state.as_deref().ok_or_else(|| mmsb::Error::Config("no --state given".into()))?;
        Ok(Options::new(self.nats.clone(), state, "mmsb-inspect"))
    }

    /// `mmsb inspect --nats URLS --state NAME`.
    pub fn inspect(&self) -> mmsb::Result<()> {
        let opts = self.options()?;
        let rep = mmsb_replica::audit::inspect(&opts).map_err(crate::into_mmsb)?;
        outln!("replicated state: {} at {}", opts.state, opts.urls.join(","));
        out!("{rep}");
        Ok(())
    }

    /// `mmsb verify --nats URLS --state NAME`: `Ok(false)` when it found a
    /// problem (printed to stderr).
    pub fn verify(&self) -> mmsb::Result<bool> {
        let opts = self.options()?;
        let rep = mmsb_replica::audit::verify(&opts).map_err(crate::into_mmsb)?;
        if rep.problem.is_some() {
            eprintln!("mmsb verify: {rep}");
            return Ok(false);
        }
        outln!("{rep}");
        Ok(true)
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
    /// After catching up (and, while watching, each time the LSN moved
    /// this many records further), write a full checkpoint, store it in the state's
    /// object store and trim the stream behind the kept ones (0: never).
    #[arg(long, default_value_t = 0)]
    checkpoint_every: u64,
    /// Checkpoints kept in the object store (the stream is trimmed behind
    /// the oldest of them).
    #[arg(long, default_value_t = 2)]
    keep: usize,
}

/// Catch up with the stream (and keep following with `--watch`); the
/// last line is `lsn N hash H`.
pub fn follow_cmd(args: &FollowArgs) -> mmsb_replica::Result<()> {
    let mut f = follow(&args.cluster.options(), &args.dir)?;
    for l in f.bootstraps() {
        outln!("started from the object store's checkpoint at lsn {}", l.0);
    }
    let t0 = Instant::now();
    f.catch_up()?;
    let checkpoint = |f: &mut mmsb_replica::Follower| -> mmsb_replica::Result<()> {
        let (c, t) = f.checkpoint(args.keep)?;
        outln!(
            "checkpoint at lsn {} ({} bytes) stored as {}; trimmed {} messages, {} checkpoints, {} large commits",
            c.lsn.0,
            c.bytes,
            c.name,
            t.messages,
            t.checkpoints,
            t.commits
        );
        Ok(())
    };
    let mut at = f.lsn();
    if args.checkpoint_every > 0 {
        checkpoint(&mut f)?;
    }
    let mut shown = Instant::now();
    while t0.elapsed() < Duration::from_secs(args.watch) {
        match f.step()? {
            None => std::thread::sleep(Duration::from_millis(20)),
            // Only commits move the LSN.
            Some(_)
                if args.checkpoint_every > 0 && f.lsn().0.saturating_sub(at.0) >= args.checkpoint_every =>
            {
                checkpoint(&mut f)?;
                at = f.lsn();
            }
            Some(_) => {}
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

//! Distributed MMSB: a state's log replicated through NATS JetStream.
//!
//! | piece | module |
//! |---|---|
//! | connection, the state's stream and lease bucket, headers | [`link`] |
//! | the writer: lease, catch-up, fence, publish before acknowledging | [`leader`] |
//! | read-only replicas applying the stream idempotently by LSN | [`follower`] |
//! | checkpoints and large commits in the state's object store; trimming | [`archive`] |
//! | `mmsb inspect` and `mmsb verify` of the stream and object store | [`audit`] |
//! | a real `nats-server` cluster on 127.0.0.1 for tests and benchmarks | [`cluster`] |
//!
//! The core library knows nothing of NATS: a leader's state is an
//! ordinary [`mmsb::Mmsb`] whose log hands each group commit's framed
//! records to a [`mmsb::CommitSink`] ([`leader::StreamSink`]) before the
//! commit is acknowledged. A follower appends the same bytes to its own
//! log and replays them with the library's reader, so at every LSN its
//! state hash equals the leader's. `Mmsb::follow` lives here as
//! [`follow`] (the core stays free of async code). See docs/DISTRIBUTED.md.
//!
//! ```no_run
//! use mmsb_replica::{follow, Leader, Options};
//! use std::time::Duration;
//! # fn main() -> mmsb_replica::Result<()> {
//! let opts = Options::new(vec!["nats://127.0.0.1:4222".into()], "orders", "writer-1");
//! let leader = Leader::acquire(&opts, "/var/lib/mmsb/orders".as_ref(), Duration::from_secs(10))?;
//! let page = leader.mmsb().create_page(mmsb::PageSpec::new(64))?; // acknowledged by the stream's quorum
//! let mut replica = follow(&opts.with_holder("reader-1"), "/var/lib/mmsb/orders-replica".as_ref())?;
//! replica.catch_up()?;
//! assert_eq!(replica.read_page(page)?.len(), 64);
//! # Ok(()) }
//! ```

pub mod archive;
pub mod audit;
pub mod cluster;
pub mod follower;
pub mod leader;
pub mod link;

pub use follower::{Applied, Body, Follower, Lag, Replicated};
pub use leader::{Leader, StreamSink};
use mmsb::{Durability, Lsn};
use std::path::Path;
use std::time::Duration;

/// Errors of replication.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is not valid.
    #[error("invalid replication setting: {0}")]
    Config(String),
    /// The cluster could not be reached.
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect {
        /// The URLs tried.
        url: String,
        /// Why.
        reason: String,
    },
    /// A JetStream request failed.
    #[error("JetStream {op} failed: {reason}")]
    JetStream {
        /// The request.
        op: &'static str,
        /// The server's or client's reason.
        reason: String,
    },
    /// A request got no answer in time.
    #[error("timed out {0}")]
    Timeout(String),
    /// Another holder keeps the lease.
    #[error("the lease is held by {holder} (epoch {epoch})")]
    LeaseHeld {
        /// Its holder.
        holder: String,
        /// Its revision.
        epoch: u64,
    },
    /// This leader may no longer write: another took the lease or wrote to
    /// the stream.
    #[error("leader of epoch {epoch} was deposed: {reason}")]
    Deposed {
        /// The deposed leader's epoch.
        epoch: u64,
        /// What showed it.
        reason: String,
    },
    /// A stream message does not read as a replicated commit.
    #[error("stream message {seq} is malformed: {reason}")]
    BadMessage {
        /// Its stream sequence.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// An object of the state's object store does not read as a
    /// checkpoint or commit of this state, or is missing.
    #[error("object {name} of the object store: {reason}")]
    BadObject {
        /// Its name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The stream no longer holds the message a follower needs next.
    #[error("the stream lacks message {seq} (first held: {first_seq}) that follows LSN {}", .lsn.0)]
    Gap {
        /// The follower's LSN.
        lsn: Lsn,
        /// The message needed.
        seq: u64,
        /// The stream's first sequence.
        first_seq: u64,
    },
    /// The local state refused something.
    #[error(transparent)]
    State(#[from] mmsb::Error),
    /// A `nats-server` process of [`cluster::LocalCluster`] failed.
    #[error("nats-server: {0}")]
    Server(String),
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where a replicated state lives and how it is written.
#[derive(Clone, Debug)]
pub struct Options {
    /// NATS URLs of the cluster's nodes.
    pub urls: Vec<String>,
    /// The state's name (stream `MMSB_<state>`).
    pub state: String,
    /// This process's name in the lease.
    pub holder: String,
    /// Replicas of the stream and the lease bucket (3 for a cluster).
    pub replicas: usize,
    /// How long a lease lasts without renewal.
    pub lease_ttl: Duration,
    /// Bound on each request to the cluster.
    pub timeout: Duration,
    /// Durability of the local log (the stream's is the servers'
    /// `sync_interval`).
    pub durability: Durability,
}

impl Options {
    /// Options for state `state` on the cluster at `urls`, as `holder`:
    /// three replicas, a 2 s lease, 5 s request bound, flushed local log.
    pub fn new(urls: Vec<String>, state: &str, holder: &str) -> Options {
        Options {
            urls,
            state: state.to_string(),
            holder: holder.to_string(),
            replicas: 3,
            lease_ttl: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
            durability: Durability::Flush,
        }
    }

    /// The same options under another holder name.
    pub fn with_holder(&self, holder: &str) -> Options {
        Options { holder: holder.to_string(), ..self.clone() }
    }
}

/// Open a read-only replica of `opts.state` in `dir` (what
/// `Mmsb::follow` would be; it lives here to keep async code out of the
/// core library). It applies what the stream holds on
/// [`Follower::catch_up`] and [`Follower::step`].
///
/// # Errors
/// As [`Follower::open`].
pub fn follow(opts: &Options, dir: &Path) -> Result<Follower> {
    Follower::open(opts, dir)
}

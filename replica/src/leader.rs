//! The leader: the one writer of a replicated state. It holds the lease
//! (a key in the state's key-value bucket whose revision at acquisition is
//! its epoch), caught up to the stream before it accepted a write, fenced
//! the stream against earlier leaders, and publishes every group commit
//! before acknowledging it.

use crate::follower::Follower;
use crate::link::{Link, HDR_EPOCH, HDR_FENCE, HDR_LSN, HDR_OBJECT, HEADER_ROOM, LEASE_KEY};
use crate::{Error, Options, Result};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv;
use async_nats::jetstream::message::PublishMessage;
use async_nats::HeaderMap;
use bytes::Bytes;
use mmsb::{CommitSink, Config, Lsn, Mmsb};
use parking_lot_free::Mutex;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod parking_lot_free {
    //! `std`'s mutex, poison treated as held data.
    pub(crate) struct Mutex<T>(std::sync::Mutex<T>);
    impl<T: std::fmt::Debug> std::fmt::Debug for Mutex<T> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            self.lock().fmt(f)
        }
    }
    impl<T> Mutex<T> {
        pub(crate) fn new(t: T) -> Self {
            Mutex(std::sync::Mutex::new(t))
        }
        pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A lease value: `holder expires_unix_ms`.
fn lease_value(holder: &str, ttl: Duration) -> Bytes {
    let until = now_ms().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
    Bytes::from(format!("{holder} {until}"))
}

/// The holder and expiry of a lease value.
fn parse_lease(v: &[u8]) -> Option<(String, u64)> {
    let s = std::str::from_utf8(v).ok()?;
    let (h, t) = s.rsplit_once(' ')?;
    Some((h.to_string(), t.parse().ok()?))
}

/// The state of a leader's publishing.
#[derive(Debug)]
struct SinkState {
    /// The stream sequence of the last message this leader knows.
    last_seq: u64,
    /// The lease key's revision this leader last wrote.
    lease_rev: u64,
    /// When the lease was last renewed.
    renewed: Instant,
    /// Why this leader may no longer publish, once it may not.
    deposed: Option<String>,
    /// Commits published.
    published: u64,
}

/// The [`CommitSink`] of a leader: publishes each commit to the stream
/// with the message id `<epoch>:<first LSN>` and the expected last
/// sequence, and returns once the stream's quorum stored it.
#[derive(Debug)]
pub struct StreamSink {
    link: Arc<Link>,
    epoch: u64,
    holder: String,
    ttl: Duration,
    state: Mutex<SinkState>,
}

impl StreamSink {
    fn renew_locked(&self, st: &mut SinkState) -> Result<()> {
        let rev = st.lease_rev;
        let value = lease_value(&self.holder, self.ttl);
        let r = self.link.run("renewing the lease", async {
            self.link.kv.update(LEASE_KEY, value, rev).await.map_err(|e| match e.kind() {
                kv::UpdateErrorKind::WrongLastRevision => {
                    Error::Deposed { epoch: self.epoch, reason: "the lease was taken".into() }
                }
                _ => Error::JetStream { op: "renew lease", reason: e.to_string() },
            })
        });
        match r {
            Ok(rev) => {
                st.lease_rev = rev;
                st.renewed = Instant::now();
                Ok(())
            }
            Err(e @ Error::Deposed { .. }) => {
                st.deposed = Some(e.to_string());
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    fn publish(&self, first: Lsn, last: Lsn, framed: &[u8]) -> Result<()> {
        let mut st = self.state.lock();
        if let Some(why) = &st.deposed {
            return Err(Error::Deposed { epoch: self.epoch, reason: why.clone() });
        }
        if st.renewed.elapsed() >= self.ttl / 3 {
            self.renew_locked(&mut st)?;
        }
        let mut h = HeaderMap::new();
        h.insert(HDR_EPOCH, self.epoch.to_string().as_str());
        h.insert(HDR_LSN, format!("{}-{}", first.0, last.0).as_str());
        // A commit over the message limit: its records become an object,
        // and the message (fenced like any other) points to it. An object
        // whose message is refused is never read; trimming removes it.
        let payload = if framed.len() + HEADER_ROOM > self.link.max_payload {
            let name = crate::archive::commit_object(self.epoch, first.0);
            self.link.put_object(
                &name,
                &[(crate::archive::META_LSN, format!("{}-{}", first.0, last.0))],
                framed,
            )?;
            h.insert(HDR_OBJECT, name.as_str());
            Bytes::new()
        } else {
            Bytes::copy_from_slice(framed)
        };
        let msg = PublishMessage::build()
            .payload(payload)
            .headers(h)
            .message_id(format!("{}:{}", self.epoch, first.0))
            .expected_last_sequence(st.last_seq);
        let seq = publish(&self.link, msg, self.epoch)?;
        st.last_seq = seq;
        st.published += 1;
        Ok(())
    }
}

/// Publish `msg` and wait for the stream's acknowledgement.
fn publish(link: &Link, msg: PublishMessage, epoch: u64) -> Result<u64> {
    let subject = link.names.subject.clone();
    link.run("publishing a commit", async {
        let fut = link
            .js
            .send_publish(subject, msg)
            .await
            .map_err(|e| Error::JetStream { op: "publish", reason: e.to_string() })?;
        match fut.await {
            Ok(ack) => Ok(ack.sequence),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Err(Error::Deposed {
                epoch,
                reason: "the stream holds messages this leader has not read (another leader wrote)".into(),
            }),
            Err(e) => Err(Error::JetStream { op: "publish acknowledgement", reason: e.to_string() }),
        }
    })
}

impl CommitSink for StreamSink {
    fn commit(&self, first: Lsn, last: Lsn, framed: &[u8]) -> mmsb::Result<()> {
        self.publish(first, last, framed).map_err(|e| mmsb::Error::Replication(e.to_string()))
    }
}

/// The writer of a replicated state.
#[derive(Debug)]
pub struct Leader {
    mmsb: Mmsb,
    sink: Arc<StreamSink>,
    opts: Options,
    dir: PathBuf,
}

impl Leader {
    /// Become the leader of `opts.state` with local state directory `dir`
    /// (a follower's, or empty): take the lease once it is free or expired
    /// (waiting up to `wait`), catch up to the stream's last message,
    /// fence the stream against earlier leaders, then open the state.
    ///
    /// # Errors
    /// [`Error::LeaseHeld`] when another holder keeps the lease for
    /// longer than `wait`; as [`Follower::catch_up`] and [`Mmsb::start`].
    pub fn acquire(opts: &Options, dir: &Path, wait: Duration) -> Result<Leader> {
        let link = Arc::new(Link::connect(opts)?);
        let (epoch, lease_rev) = take_lease(&link, opts, wait)?;
        let mut follower = Follower::with_link(Some(link.clone()), opts, dir)?;
        // Catch up, then fence: a fence refused on the expected sequence
        // means a message arrived after the catch-up (an earlier leader's
        // last publish): read it and try again.
        let mut tries = 0;
        let last_seq = loop {
            follower.catch_up()?;
            if follower.lsn().0 > follower.seen_lsn() {
                return Err(Error::Config(format!(
                    "{} holds LSNs up to {}, the stream only up to {}: it is not a replica of this stream",
                    dir.display(),
                    follower.lsn().0,
                    follower.seen_lsn()
                )));
            }
            let mut h = HeaderMap::new();
            h.insert(HDR_EPOCH, epoch.to_string().as_str());
            h.insert(HDR_FENCE, follower.lsn().0.to_string().as_str());
            let msg = PublishMessage::build()
                .payload(Bytes::new())
                .headers(h)
                .message_id(format!("{epoch}:fence"))
                .expected_last_sequence(follower.read_seq());
            match publish(&link, msg, epoch) {
                Ok(seq) => break seq,
                Err(Error::Deposed { .. }) if tries < 20 => tries += 1,
                Err(e) => return Err(e),
            }
        };
        let (lsn, _) = follower.close()?;
        let sink = Arc::new(StreamSink {
            link,
            epoch,
            holder: opts.holder.clone(),
            ttl: opts.lease_ttl,
            state: Mutex::new(SinkState {
                last_seq,
                lease_rev,
                renewed: Instant::now(),
                deposed: None,
                published: 0,
            }),
        });
        let config = Config::at(dir).durability(opts.durability).commit_sink(sink.clone());
        let mmsb = Mmsb::start(config)?;
        if mmsb.lsn() != lsn {
            return Err(Error::State(mmsb::Error::Invariant(format!(
                "the state directory opened at LSN {}, its replica read the stream to LSN {}",
                mmsb.lsn().0,
                lsn.0
            ))));
        }
        Ok(Leader { mmsb, sink, opts: opts.clone(), dir: dir.to_path_buf() })
    }

    /// The state: write through it as through any [`Mmsb`]; each commit
    /// returns once the stream's quorum stored it. A commit refused
    /// because this leader was deposed returns
    /// [`mmsb::Error::Replication`], after which the state takes no more
    /// writes: call [`Leader::step_down`].
    pub fn mmsb(&self) -> &Mmsb {
        &self.mmsb
    }

    /// This leader's epoch (the lease revision it won).
    pub fn epoch(&self) -> u64 {
        self.sink.epoch
    }

    /// Whether this leader learned that it was deposed.
    pub fn is_deposed(&self) -> bool {
        self.sink.state.lock().deposed.is_some()
    }

    /// The stream sequence of the last message this leader published.
    pub fn last_seq(&self) -> u64 {
        self.sink.state.lock().last_seq
    }

    /// Renew the lease now (commits renew it when a third of its time
    /// has passed; an idle leader calls this to keep it).
    ///
    /// # Errors
    /// [`Error::Deposed`] when another holder took it.
    pub fn renew(&self) -> Result<()> {
        let mut st = self.sink.state.lock();
        self.sink.renew_locked(&mut st)
    }

    /// Stop writing and become a follower of the same directory, caught
    /// up to the stream (which holds every acknowledged commit, and maybe
    /// one this leader could not confirm).
    ///
    /// # Errors
    /// As [`Follower::catch_up`].
    pub fn step_down(self) -> Result<Follower> {
        let Leader { mmsb, sink, opts, dir } = self;
        // A deposed leader's log is poisoned and its stop fails: the
        // directory holds what the log wrote before the refused commit.
        let _ = mmsb.stop();
        drop(mmsb);
        let mut f = Follower::with_link(Some(sink.link.clone()), &opts, &dir)?;
        f.catch_up()?;
        Ok(f)
    }
}

/// Take the lease: create the key, or replace an expired value (or our
/// own) by compare-and-set on its revision. Returns (epoch, revision).
fn take_lease(link: &Link, opts: &Options, wait: Duration) -> Result<(u64, u64)> {
    let t0 = Instant::now();
    loop {
        let value = lease_value(&opts.holder, opts.lease_ttl);
        // A cluster that has just started (or lost its meta leader)
        // answers "no responders" for a while: the read is retried.
        let entry = link.run("reading the lease", async {
            crate::link::retry(opts.timeout, || link.kv.entry(LEASE_KEY))
                .await
                .map_err(|reason| Error::JetStream { op: "read lease", reason })
        })?;
        let live = entry.as_ref().filter(|e| e.operation == kv::Operation::Put);
        let held = match live {
            None => None,
            Some(e) => match parse_lease(&e.value) {
                Some((h, until)) if h != opts.holder && until > now_ms() => Some((h, e.revision)),
                _ => None,
            },
        };
        if let Some((holder, epoch)) = held {
            if t0.elapsed() >= wait {
                return Err(Error::LeaseHeld { holder, epoch });
            }
            std::thread::sleep(Duration::from_millis(100).min(opts.lease_ttl / 4));
            continue;
        }
        let r = link.run("taking the lease", async {
            match &entry {
                None => link.kv.create(LEASE_KEY, value).await.map_err(|e| e.to_string()),
                Some(e) => link.kv.update(LEASE_KEY, value, e.revision).await.map_err(|e| e.to_string()),
            }
            .map_err(|reason| Error::JetStream { op: "take lease", reason })
        });
        match r {
            Ok(rev) => return Ok((rev, rev)),
            // Another standby won the race: look again.
            Err(_) if t0.elapsed() < wait => continue,
            Err(e) => return Err(e),
        }
    }
}

//! Shared pieces of the cluster tests: starting the cluster (or saying
//! why not), a small deterministic random source, a writer recording
//! what was acknowledged, and the history checker.

#![allow(dead_code)]

use mmsb::{Mmsb, PageId, PageSpec, Payload, Update};
use mmsb_replica::cluster::{server_binary, LocalCluster};
use mmsb_replica::link::Link;
use mmsb_replica::{Body, Options, Replicated};
use std::collections::BTreeMap;
use std::time::Duration;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A cluster for one test at a time. The tests of a binary run on
/// several threads, and a few three-node clusters at once on a 2-core
/// machine miss their leases: the clusters take turns instead. The
/// cluster is stopped before the next test's starts.
pub struct Serial {
    // Field order is drop order: the cluster stops, then the turn passes.
    cluster: LocalCluster,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl std::ops::Deref for Serial {
    type Target = LocalCluster;
    fn deref(&self) -> &LocalCluster {
        &self.cluster
    }
}

impl std::ops::DerefMut for Serial {
    fn deref_mut(&mut self) -> &mut LocalCluster {
        &mut self.cluster
    }
}

/// A three-node cluster, or `None` (with a line saying so) when no
/// server binary is installed and `MMSB_REQUIRE_NATS` is not `1`.
pub fn cluster(n: usize) -> Option<Serial> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if server_binary().is_none() {
        if std::env::var("MMSB_REQUIRE_NATS").as_deref() == Ok("1") {
            panic!(
                "MMSB_REQUIRE_NATS=1 but no nats-server: run scripts/nats-server.sh or set MMSB_NATS_SERVER"
            );
        }
        eprintln!("skipped: no nats-server (set MMSB_NATS_SERVER or run scripts/nats-server.sh)");
        return None;
    }
    // A test that failed while holding the turn leaves it poisoned: the
    // next one still runs.
    let turn = TURN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    match LocalCluster::start(n) {
        Ok(cluster) => Some(Serial { cluster, _turn: turn }),
        Err(e) => panic!("the cluster did not start: {e}"),
    }
}

/// Options for state `state` on `c` with short timeouts.
pub fn options(c: &LocalCluster, state: &str, holder: &str) -> Options {
    let mut o = Options::new(c.urls(), state, holder);
    o.replicas = c.len().min(3);
    o.lease_ttl = Duration::from_millis(800);
    o.timeout = Duration::from_secs(10);
    o
}

/// xorshift64*: the tests' random source, seeded.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One acknowledged commit: the LSN the state reached and its hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Acked {
    pub epoch: u64,
    pub lsn: u64,
    pub hash: u128,
}

/// Record the commit `s` is at, if it moved past the last one recorded.
pub fn record(acked: &mut Vec<Acked>, epoch: u64, s: &Mmsb) -> mmsb::Result<()> {
    let lsn = s.lsn().0;
    if acked.last().is_none_or(|a| a.lsn < lsn) {
        acked.push(Acked { epoch, lsn, hash: s.state_hash()? });
    }
    Ok(())
}

/// A random write on `s` over `pages`; returns whether it was
/// acknowledged (`Ok`) or refused (the error).
pub fn random_write(s: &Mmsb, pages: &mut Vec<PageId>, rng: &mut Rng) -> mmsb::Result<()> {
    match rng.below(10) {
        0 | 1 if pages.len() < 12 => {
            let len = 16 + rng.below(200);
            pages.push(s.create_page(PageSpec::new(len))?);
        }
        2 if pages.len() > 2 => {
            let i = rng.below(pages.len() as u64) as usize;
            // Derived pages' parents stay.
            if s.derivation(pages[i])?.is_none() && s.children(pages[i])?.is_empty() {
                s.delete_page(pages.remove(i))?;
            } else {
                write_one(s, pages, rng)?;
            }
        }
        3 if pages.len() > 1 => {
            let ups = (0..2 + rng.below(3))
                .map(|_| {
                    let p = pages[rng.below(pages.len() as u64) as usize];
                    let len = s.page_info(p).map(|i| i.len).unwrap_or(1);
                    Update::new(p, full(len, rng))
                })
                .collect::<Vec<_>>();
            let ups =
                ups.into_iter().filter(|u| s.derivation(u.page).ok().flatten().is_none()).collect::<Vec<_>>();
            if !ups.is_empty() {
                s.update_batch(ups)?;
            }
        }
        _ if !pages.is_empty() => write_one(s, pages, rng)?,
        _ => pages.push(s.create_page(PageSpec::new(64))?),
    }
    Ok(())
}

fn full(len: u64, rng: &mut Rng) -> Payload {
    let b = rng.next() as u8;
    Payload::Full((0..len).map(|i| b.wrapping_add(i as u8)).collect())
}

fn write_one(s: &Mmsb, pages: &[PageId], rng: &mut Rng) -> mmsb::Result<()> {
    let p = pages[rng.below(pages.len() as u64) as usize];
    if s.derivation(p)?.is_some() {
        return Ok(());
    }
    let len = s.page_info(p)?.len;
    s.update_page(p, full(len, rng)).map(drop)
}

/// Every message of the stream, in order.
pub fn read_stream(opts: &Options) -> Result<Vec<Replicated>, mmsb_replica::Error> {
    let link = Link::connect(opts)?;
    let (first, last) = link.bounds()?;
    let mut out = Vec::new();
    for seq in first.max(1)..=last {
        if let Some(m) = link.get(seq)? {
            out.push(Replicated::from_message(&m)?);
        }
    }
    Ok(out)
}

/// The history checker of the single-writer log. The stream is the
/// linearization: it must (1) hold LSNs 1..=n once each, in order, with
/// no gap and no overlap; (2) never hold a commit of an epoch below a
/// fence that precedes it (a deposed leader never appended after a
/// newer leader fenced); (3) hold every acknowledged commit, in the
/// order it was acknowledged, under the epoch that acknowledged it.
/// Returns the LSN the stream ends at.
pub fn check_history(stream: &[Replicated], acked: &[Acked]) -> Result<u64, String> {
    check_history_after(stream, acked, 0)
}

/// [`check_history`] of a stream trimmed behind a checkpoint at LSN
/// `after`: it starts with LSN `after + 1` (under the epoch of its first
/// message, whose fence may be gone), and the acknowledged commits up to
/// `after` are the checkpoint's.
pub fn check_history_after(stream: &[Replicated], acked: &[Acked], after: u64) -> Result<u64, String> {
    let mut lsn = after;
    let mut fence = match stream.first() {
        Some(m) if after > 0 && !matches!(m.body, Body::Fence { .. }) => m.epoch,
        _ => 0,
    };
    let acked: Vec<Acked> = acked.iter().copied().filter(|a| a.lsn > after).collect();
    // LSN -> epoch of the message ending there.
    let mut ends = BTreeMap::new();
    for m in stream {
        match &m.body {
            Body::Fence { after } => {
                if m.epoch <= fence {
                    return Err(format!(
                        "fence of epoch {} at seq {} after one of epoch {fence}",
                        m.epoch, m.seq
                    ));
                }
                if *after != lsn {
                    return Err(format!("fence at seq {} says LSN {after}, the stream is at {lsn}", m.seq));
                }
                fence = m.epoch;
            }
            Body::Commit { first, last, .. } | Body::Stored { first, last, .. } => {
                if m.epoch != fence {
                    return Err(format!(
                        "commit {first}-{last} at seq {} of epoch {} after the fence of epoch {fence}",
                        m.seq, m.epoch
                    ));
                }
                if *first != lsn + 1 {
                    return Err(format!(
                        "commit at seq {} starts at LSN {first}, expected {}",
                        m.seq,
                        lsn + 1
                    ));
                }
                lsn = *last;
                ends.insert(*last, m.epoch);
            }
        }
    }
    let mut prev = after;
    for a in &acked {
        if a.lsn <= prev {
            return Err(format!("acknowledged LSN {} not after {prev}", a.lsn));
        }
        prev = a.lsn;
        match ends.get(&a.lsn) {
            Some(&e) if e == a.epoch => {}
            Some(&e) => {
                return Err(format!(
                    "acknowledged LSN {} of epoch {} is in the stream under epoch {e}",
                    a.lsn, a.epoch
                ))
            }
            None => {
                return Err(format!("acknowledged LSN {} (epoch {}) is not in the stream", a.lsn, a.epoch))
            }
        }
    }
    Ok(lsn)
}

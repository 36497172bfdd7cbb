//! Replication against a real three-node `nats-server` cluster on
//! 127.0.0.1, started and killed by process id (`LocalCluster`). Each
//! test checks the stream with the history checker and every follower
//! against the leader's state hash.

mod common;

use common::{
    check_history, check_history_after, cluster, options, random_write, read_stream, record, Acked, Rng,
    TestResult,
};
use mmsb::{PageId, PageSpec};
use mmsb_replica::{follow, Body, Error, Follower, Leader, Options};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Write `n` random commits through a leader of `opts` in `dir`,
/// recording each acknowledged one. A refused or unconfirmed commit
/// makes the writer step down and take the lease again (it is still the
/// only writer), as an application would, and so does a lease that cannot
/// be taken while the cluster elects; the test's deadline bounds it.
fn write_through(
    leader: &mut Option<Leader>,
    opts: &Options,
    dir: &Path,
    n: usize,
    rng: &mut Rng,
    acked: &mut Vec<Acked>,
    deadline: Instant,
) -> TestResult {
    let mut done = 0;
    let mut pages: Vec<PageId> = leader.as_ref().map(|l| l.mmsb().page_ids()).unwrap_or_default();
    while done < n {
        assert!(Instant::now() < deadline, "the writes did not finish in time ({done} of {n})");
        let l = match leader {
            Some(l) => l,
            None => match Leader::acquire(opts, dir, Duration::from_secs(15)) {
                Ok(l) => {
                    pages = l.mmsb().page_ids();
                    leader.insert(l)
                }
                // A cluster that lost a node answers nothing while it
                // elects new leaders, which can outlast the link's timeout
                // on a loaded machine: try again, as an application would.
                Err(e @ (Error::JetStream { .. } | Error::Timeout(_))) => {
                    eprintln!("taking the lease: {e}; trying again");
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
                Err(e) => return Err(e.into()),
            },
        };
        match random_write(l.mmsb(), &mut pages, rng) {
            Ok(()) => {
                record(acked, l.epoch(), l.mmsb())?;
                done += 1;
            }
            Err(mmsb::Error::Replication(why)) => {
                eprintln!("commit not acknowledged ({why}); stepping down and taking the lease again");
                if let Some(l) = leader.take() {
                    // Stepping down reads the stream; a follower it gives
                    // back is dropped: the same directory leads again.
                    match l.step_down() {
                        Ok(f) => drop(f),
                        Err(e) => eprintln!("step down: {e}"),
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A follower in `dir`, caught up, must match `acked`'s last hash.
fn converge(opts: &Options, dir: &Path, acked: &[Acked]) -> Result<Follower, Box<dyn std::error::Error>> {
    // Right after a node of the cluster was killed or paused, its reads
    // can time out while it elects leaders, longer than the link's
    // timeout on a loaded machine: start again (the follower recovers its
    // directory), as an application would, for at most 60 s.
    let until = Instant::now() + Duration::from_secs(60);
    let f = loop {
        match follow(opts, dir).and_then(|mut f| f.catch_up().map(|_| f)) {
            Ok(f) => break f,
            Err(e @ (Error::JetStream { .. } | Error::Timeout(_))) if Instant::now() < until => {
                eprintln!("following: {e}; trying again");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e.into()),
        }
    };
    let last = acked.last().ok_or("nothing acknowledged")?;
    assert!(f.lsn().0 >= last.lsn, "follower at {} behind the last acknowledged LSN {}", f.lsn().0, last.lsn);
    Ok(f)
}

/// The end of a fault test: a new follower in `tmp/f` converges to the
/// leader's LSN and state hash, and the stream's history checks out
/// against `acked`.
fn leader_and_follower_agree(
    opts: &Options,
    tmp: &Path,
    leader: &Leader,
    acked: &[Acked],
) -> Result<(), Box<dyn std::error::Error>> {
    let f = converge(&opts.with_holder("r"), &tmp.join("f"), acked)?;
    assert_eq!((f.lsn(), f.state_hash()), (leader.mmsb().lsn(), leader.mmsb().state_hash()?));
    assert_eq!(check_history(&read_stream(opts)?, acked)?, leader.mmsb().lsn().0);
    Ok(())
}

#[test]
fn model_followers_match_the_leader_at_every_lsn() -> TestResult {
    let Some(c) = cluster(3) else { return Ok(()) };
    let t0 = Instant::now();
    let opts = options(&c, "model", "writer");
    let tmp = tempfile::tempdir()?;
    let leader = Leader::acquire(&opts, &tmp.path().join("leader"), Duration::from_secs(15))?;
    let s = leader.mmsb();
    let leader_events = s.subscribe();
    // A derived page: its deltas are in the log, followers recompute nothing.
    s.register_function("sum", 1, |ins: &[&[u8]], out: &mut [u8]| {
        let v = ins.iter().flat_map(|b| b.iter()).fold(0u8, |a, x| a.wrapping_add(*x));
        out.fill(v);
    })?;
    let a = s.create_page(PageSpec::new(32))?;
    let d = s.create_page(PageSpec::new(8))?;
    s.declare_derived(d, "sum", &[a])?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut pages = vec![a, d];
    let mut hashes = BTreeMap::new();
    let mut acked = Vec::new();
    // A follower tails the stream while the leader writes.
    let live_dir = tmp.path().join("live");
    let live_opts = opts.with_holder("live");
    let tail = std::thread::spawn(move || -> Result<(u64, u64), String> {
        let mut f = follow(&live_opts, &live_dir).map_err(|e| e.to_string())?;
        let mut max_lag = 0;
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(60) {
            match f.step().map_err(|e| e.to_string())? {
                Some(_) => {}
                None => std::thread::sleep(Duration::from_millis(5)),
            }
            max_lag = max_lag.max(f.lag().map_err(|e| e.to_string())?.messages());
            if f.lsn().0 >= 150 {
                break;
            }
        }
        Ok((f.lsn().0, max_lag))
    });
    for _ in 0..150 {
        random_write(s, &mut pages, &mut rng)?;
        hashes.insert(s.lsn().0, s.state_hash()?);
        record(&mut acked, leader.epoch(), s)?;
    }
    s.propagate()?;
    let end = (s.lsn().0, s.state_hash()?);
    hashes.insert(end.0, end.1);

    // A follower applying message by message equals the leader at every
    // LSN the leader acknowledged.
    let fdir = tmp.path().join("f1");
    let mut f = follow(&opts.with_holder("f1"), &fdir)?;
    let events = f.subscribe();
    let page_events = f.events();
    let mut checked = 0;
    while let Some(m) = f.step()? {
        if let Body::Commit { last, .. } = m.body {
            assert_eq!(f.lsn().0, last);
            if let Some(h) = hashes.get(&last) {
                assert_eq!(f.state_hash(), *h, "follower differs from the leader at LSN {last}");
                checked += 1;
            }
        }
    }
    assert!(checked >= acked.len(), "checked {checked} LSNs of {} acknowledged", acked.len());
    assert_eq!((f.lsn().0, f.state_hash()), end);
    assert_eq!(f.read_page(d)?, &leader.mmsb().query_page(d)?[..]);
    let seen: Vec<_> = events.try_iter().collect();
    assert_eq!(seen.last().map(|e| e.last.0), Some(end.0));
    // The follower's page-level events are the leader's state-change
    // events, in order (the leader's live-only propagation events aside).
    let live_only = |e: &mmsb::Event| {
        matches!(
            e,
            mmsb::Event::PropagationStarted { .. }
                | mmsb::Event::Recomputed { .. }
                | mmsb::Event::PropagationFinished { .. }
                | mmsb::Event::CheckpointWritten { .. }
        )
    };
    let from_leader: Vec<mmsb::Event> = leader_events.drain().into_iter().filter(|e| !live_only(e)).collect();
    let from_follower: Vec<mmsb::Event> = page_events.try_iter().collect();
    assert_eq!(leader_events.dropped(), 0);
    assert!(from_leader.len() > 150, "{} events", from_leader.len());
    assert!(from_leader
        .iter()
        .any(|e| matches!(e, mmsb::Event::DeltaApplied { source: mmsb::SourceKind::Propagation, .. })));
    assert_eq!(from_follower, from_leader);
    assert_eq!(f.lag()?.messages(), 0);
    // Reopened, the follower recovers its directory and skips what it has.
    drop(f);
    let mut f = follow(&opts.with_holder("f1"), &fdir)?;
    assert_eq!((f.lsn().0, f.state_hash()), end);
    f.catch_up()?;
    assert_eq!((f.lsn().0, f.state_hash()), end);
    assert!(f.duplicates() > 0);

    let (live_lsn, max_lag) = tail.join().map_err(|_| "the tailing follower panicked")??;
    assert!(live_lsn >= 150);
    eprintln!("tailing follower: largest lag {max_lag} messages");
    let stream = read_stream(&opts)?;
    assert_eq!(check_history(&stream, &acked)?, end.0);
    eprintln!("model test: {:?}", t0.elapsed());
    Ok(())
}

#[test]
fn duplicate_and_reordered_delivery_converges() -> TestResult {
    let Some(c) = cluster(3) else { return Ok(()) };
    let opts = options(&c, "dups", "writer");
    let tmp = tempfile::tempdir()?;
    let leader = Leader::acquire(&opts, &tmp.path().join("leader"), Duration::from_secs(15))?;
    let (mut rng, mut pages) = (Rng(7), Vec::new());
    for _ in 0..60 {
        random_write(leader.mmsb(), &mut pages, &mut rng)?;
    }
    let end = (leader.mmsb().lsn().0, leader.mmsb().state_hash()?);
    let stream = read_stream(&opts)?;
    // Each message one to three times, shuffled within windows of eight.
    let mut delivery = Vec::new();
    for m in &stream {
        for _ in 0..1 + rng.below(3) {
            delivery.push(m.clone());
        }
    }
    for w in delivery.chunks_mut(8) {
        for i in (1..w.len()).rev() {
            w.swap(i, rng.below(i as u64 + 1) as usize);
        }
    }
    let mut f = Follower::open_local(&opts, &tmp.path().join("f"))?;
    for m in delivery {
        f.offer(m)?;
    }
    assert_eq!((f.lsn().0, f.state_hash()), end);
    assert!(f.duplicates() > 0);
    // A message that overlaps the follower's LSN without following it is refused.
    if let Some(Body::Commit { first, last, framed }) = stream
        .iter()
        .map(|m| m.body.clone())
        .find(|b| matches!(b, Body::Commit { first, last, .. } if last > first))
    {
        let mut g = Follower::open_local(&opts, &tmp.path().join("g"))?;
        let bad = mmsb_replica::Replicated {
            seq: 1,
            epoch: 1,
            body: Body::Commit { first: first + 1, last, framed },
        };
        for m in
            stream.iter().take_while(|m| !matches!(m.body, Body::Commit { first: f0, .. } if f0 == first))
        {
            g.offer(m.clone())?;
        }
        g.offer(
            stream
                .iter()
                .find(|m| matches!(m.body, Body::Commit { first: f0, .. } if f0 == first))
                .cloned()
                .ok_or("gone")?,
        )?;
        assert!(matches!(g.offer(bad), Err(Error::BadMessage { .. }) | Ok(false)));
    }
    Ok(())
}

#[test]
fn a_deposed_leader_cannot_append_and_steps_down() -> TestResult {
    let Some(c) = cluster(3) else { return Ok(()) };
    let opts_a = options(&c, "failover", "a");
    let opts_b = opts_a.with_holder("b");
    let tmp = tempfile::tempdir()?;
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let a = Leader::acquire(&opts_a, &dir_a, Duration::from_secs(15))?;
    let (mut rng, mut pages, mut acked) = (Rng(11), Vec::new(), Vec::new());
    for _ in 0..20 {
        random_write(a.mmsb(), &mut pages, &mut rng)?;
        record(&mut acked, a.epoch(), a.mmsb())?;
    }
    // While A holds the lease, B cannot take it.
    assert!(matches!(
        Leader::acquire(&opts_b, &dir_b, Duration::from_millis(200)),
        Err(Error::LeaseHeld { .. })
    ));
    // A goes silent past its lease; B wins it, catches up, fences.
    std::thread::sleep(opts_a.lease_ttl + Duration::from_millis(200));
    let b = Leader::acquire(&opts_b, &dir_b, Duration::from_secs(15))?;
    assert!(b.epoch() > a.epoch());
    assert_eq!(b.mmsb().state_hash()?, acked.last().ok_or("none")?.hash);
    let mut pages_b = b.mmsb().page_ids();
    for _ in 0..10 {
        random_write(b.mmsb(), &mut pages_b, &mut rng)?;
        record(&mut acked, b.epoch(), b.mmsb())?;
    }
    // A wakes and writes: refused, nothing applied, and it stays refused.
    let before = a.mmsb().state_hash()?;
    let lsn_a = a.mmsb().lsn();
    let r = a.mmsb().create_page(PageSpec::new(8));
    assert!(matches!(r, Err(mmsb::Error::Replication(_))), "a deposed leader's commit was accepted: {r:?}");
    assert!(a.is_deposed());
    assert!(a.mmsb().create_page(PageSpec::new(8)).is_err());
    assert_eq!(a.mmsb().lsn(), lsn_a);
    assert_eq!(a.mmsb().state_hash()?, before);
    // It steps down and follows B.
    let mut fa = a.step_down()?;
    for _ in 0..10 {
        random_write(b.mmsb(), &mut pages_b, &mut rng)?;
        record(&mut acked, b.epoch(), b.mmsb())?;
    }
    fa.catch_up()?;
    assert_eq!((fa.lsn(), fa.state_hash()), (b.mmsb().lsn(), b.mmsb().state_hash()?));
    assert_eq!(fa.epoch(), b.epoch());
    let stream = read_stream(&opts_a)?;
    assert_eq!(check_history(&stream, &acked)?, b.mmsb().lsn().0);
    Ok(())
}

#[test]
fn killing_and_restarting_a_nats_node_loses_nothing() -> TestResult {
    let Some(mut c) = cluster(3) else { return Ok(()) };
    let deadline = Instant::now() + Duration::from_secs(90);
    let opts = options(&c, "killnode", "w");
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("leader");
    let (mut rng, mut acked, mut leader) = (Rng(3), Vec::new(), None);
    write_through(&mut leader, &opts, &dir, 30, &mut rng, &mut acked, deadline)?;
    c.kill(0);
    write_through(&mut leader, &opts, &dir, 30, &mut rng, &mut acked, deadline)?;
    c.restart(0)?;
    c.kill(1);
    write_through(&mut leader, &opts, &dir, 30, &mut rng, &mut acked, deadline)?;
    c.restart(1)?;
    write_through(&mut leader, &opts, &dir, 10, &mut rng, &mut acked, deadline)?;
    let l = leader.ok_or("no leader")?;
    leader_and_follower_agree(&opts, tmp.path(), &l, &acked)?;
    Ok(())
}

#[test]
fn a_paused_node_past_the_lease_loses_nothing() -> TestResult {
    let Some(c) = cluster(3) else { return Ok(()) };
    let deadline = Instant::now() + Duration::from_secs(90);
    let opts = options(&c, "pause", "w");
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("leader");
    let (mut rng, mut acked, mut leader) = (Rng(5), Vec::new(), None);
    write_through(&mut leader, &opts, &dir, 20, &mut rng, &mut acked, deadline)?;
    // Node 2 stops answering for three lease lengths while writes go on.
    c.pause(2)?;
    let paused = Instant::now();
    write_through(&mut leader, &opts, &dir, 20, &mut rng, &mut acked, deadline)?;
    let wait = (opts.lease_ttl * 3).saturating_sub(paused.elapsed());
    std::thread::sleep(wait);
    c.resume(2)?;
    write_through(&mut leader, &opts, &dir, 20, &mut rng, &mut acked, deadline)?;
    let l = leader.ok_or("no leader")?;
    leader_and_follower_agree(&opts, tmp.path(), &l, &acked)?;
    Ok(())
}

#[test]
fn a_commit_over_the_message_limit_goes_through_the_object_store() -> TestResult {
    let Some(c) = cluster(3) else { return Ok(()) };
    let opts = options(&c, "large", "w");
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("leader");
    let leader = Leader::acquire(&opts, &dir, Duration::from_secs(15))?;
    let mut acked = Vec::new();
    let page = leader.mmsb().create_page(PageSpec::new(3 << 20))?;
    record(&mut acked, leader.epoch(), leader.mmsb())?;
    // 3 MiB of framed records: over the server's 1 MB max_payload.
    let big: Vec<u8> = (0..3u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    leader.mmsb().update_page(page, mmsb::Payload::Full(big.clone()))?;
    record(&mut acked, leader.epoch(), leader.mmsb())?;
    leader
        .mmsb()
        .update_page(page, mmsb::Payload::Sparse(mmsb::SparseDelta::from_pairs([(0u64, &[1u8; 64][..])])?))?;
    record(&mut acked, leader.epoch(), leader.mmsb())?;
    let stream = read_stream(&opts)?;
    let stored: Vec<_> = stream.iter().filter(|m| matches!(m.body, Body::Stored { .. })).collect();
    assert!(!stored.is_empty(), "no commit went to the object store");
    leader_and_follower_agree(&opts, tmp.path(), &leader, &acked)?;
    let f = follow(&opts.with_holder("r2"), &tmp.path().join("f2"))?;
    drop(f);
    let mut f = follow(&opts.with_holder("r2"), &tmp.path().join("f2"))?;
    f.catch_up()?;
    let mut expect = big;
    expect[..64].fill(1);
    assert!(f.read_page(page)? == &expect[..], "the follower's page differs from the leader's");
    // A checkpoint covers the large commits: trimming removes their objects.
    let (ckpt, trimmed) = f.checkpoint(1)?;
    assert_eq!(ckpt.lsn, leader.mmsb().lsn());
    assert_eq!(trimmed.commits, stored.len());
    let link = mmsb_replica::link::Link::connect(&opts)?;
    let names: Vec<String> = link.list_objects()?.into_iter().map(|i| i.name).collect();
    assert_eq!(names, vec![ckpt.name.clone()]);
    Ok(())
}

/// Keep writing and checkpointing: each round `writes` commits, then a
/// checkpoint by `archiver` keeping `keep`.
fn rounds(
    leader: &Leader,
    archiver: &mut Follower,
    rounds: usize,
    writes: usize,
    keep: usize,
    rng: &mut Rng,
    acked: &mut Vec<Acked>,
) -> TestResult {
    let mut pages = leader.mmsb().page_ids();
    for _ in 0..rounds {
        for _ in 0..writes {
            random_write(leader.mmsb(), &mut pages, rng)?;
            record(acked, leader.epoch(), leader.mmsb())?;
        }
        archiver.catch_up()?;
        let (c, _) = archiver.checkpoint(keep)?;
        assert_eq!((c.lsn, c.state_hash), (leader.mmsb().lsn(), leader.mmsb().state_hash()?));
    }
    Ok(())
}

#[test]
fn followers_start_from_the_newest_checkpoint_and_the_stream_is_trimmed_behind_the_kept_ones() -> TestResult {
    let Some(c) = cluster(3) else { return Ok(()) };
    let opts = options(&c, "ckpt", "w");
    let tmp = tempfile::tempdir()?;
    let leader = Leader::acquire(&opts, &tmp.path().join("leader"), Duration::from_secs(15))?;
    let mut archiver = follow(&opts.with_holder("a"), &tmp.path().join("a"))?;
    let (mut rng, mut acked) = (Rng(0x5151_2727_8383_4949), Vec::new());
    rounds(&leader, &mut archiver, 4, 25, 2, &mut rng, &mut acked)?;
    let kept = archiver.stored_checkpoints()?;
    assert_eq!(kept.len(), 2, "{kept:?}");
    // The stream holds exactly the messages after the oldest kept one.
    let link = mmsb_replica::link::Link::connect(&opts)?;
    let (first, last) = link.bounds()?;
    assert_eq!(first, kept[0].seq + 1);
    let stream = read_stream(&opts)?;
    assert_eq!(check_history_after(&stream, &acked, kept[0].lsn.0)?, kept[1].lsn.0);
    // A new follower starts from the newest checkpoint and reads only
    // what follows it.
    for _ in 0..10 {
        random_write(leader.mmsb(), &mut leader.mmsb().page_ids(), &mut rng)?;
        record(&mut acked, leader.epoch(), leader.mmsb())?;
    }
    let mut f = follow(&opts.with_holder("new"), &tmp.path().join("new"))?;
    assert_eq!(f.bootstraps(), &[kept[1].lsn]);
    assert_eq!(f.read_seq(), kept[1].seq);
    let mut read = 0;
    while f.step()?.is_some() {
        read += 1;
    }
    assert_eq!(read, link.bounds()?.1 - kept[1].seq);
    assert!(read < last, "read {read} messages; the stream held {last}");
    assert_eq!((f.lsn(), f.state_hash()), (leader.mmsb().lsn(), leader.mmsb().state_hash()?));
    // Reopened, it recovers its directory (the installed checkpoint and
    // the log after it) without starting from the object store again.
    drop(f);
    let f = follow(&opts.with_holder("new"), &tmp.path().join("new"))?;
    assert!(f.bootstraps().is_empty());
    assert_eq!((f.lsn(), f.state_hash()), (leader.mmsb().lsn(), leader.mmsb().state_hash()?));
    // A standby with an empty directory leads from the checkpoint.
    drop(f);
    let old = leader.step_down()?;
    drop(old);
    let mut o2 = opts.with_holder("w2");
    o2.lease_ttl = Duration::from_millis(800);
    let l2 = Leader::acquire(&o2, &tmp.path().join("standby"), Duration::from_secs(15))?;
    assert_eq!(l2.mmsb().lsn(), acked.last().map(|a| mmsb::Lsn(a.lsn)).ok_or("nothing acknowledged")?);
    let mut pages = l2.mmsb().page_ids();
    random_write(l2.mmsb(), &mut pages, &mut rng)?;
    record(&mut acked, l2.epoch(), l2.mmsb())?;
    let mut f = follow(&opts.with_holder("new"), &tmp.path().join("new"))?;
    f.catch_up()?;
    assert_eq!((f.lsn(), f.state_hash()), (l2.mmsb().lsn(), l2.mmsb().state_hash()?));
    Ok(())
}

#[test]
fn a_slow_follower_behind_the_trimmed_stream_starts_again_from_a_checkpoint() -> TestResult {
    let Some(c) = cluster(3) else { return Ok(()) };
    let opts = options(&c, "slow", "w");
    let tmp = tempfile::tempdir()?;
    let leader = Leader::acquire(&opts, &tmp.path().join("leader"), Duration::from_secs(15))?;
    let mut archiver = follow(&opts.with_holder("a"), &tmp.path().join("a"))?;
    let mut slow = follow(&opts.with_holder("slow"), &tmp.path().join("slow"))?;
    let (mut rng, mut acked) = (Rng(0x0BAD_5EED_1234_5678), Vec::new());
    let mut pages = Vec::new();
    for _ in 0..20 {
        random_write(leader.mmsb(), &mut pages, &mut rng)?;
        record(&mut acked, leader.epoch(), leader.mmsb())?;
    }
    // The slow follower reads a few messages, then falls behind while the
    // stream is trimmed past it, three times.
    for _ in 0..5 {
        slow.step()?;
    }
    let behind = slow.lsn();
    assert!(behind.0 > 0 && slow.bootstraps().is_empty());
    rounds(&leader, &mut archiver, 3, 20, 1, &mut rng, &mut acked)?;
    let (first, _) = mmsb_replica::link::Link::connect(&opts)?.bounds()?;
    assert!(slow.read_seq() + 1 < first, "the stream was not trimmed past the slow follower");
    // Its next step starts it again from the newest checkpoint.
    let newest = archiver.stored_checkpoints()?.pop().ok_or("no checkpoint")?;
    slow.step()?;
    assert_eq!(slow.bootstraps(), &[newest.lsn]);
    assert!(slow.lsn() > behind);
    slow.catch_up()?;
    assert_eq!((slow.lsn(), slow.state_hash()), (leader.mmsb().lsn(), leader.mmsb().state_hash()?));
    // Its directory now starts at the checkpoint: reopened, it is the
    // same state and follows on.
    drop(slow);
    let mut slow = follow(&opts.with_holder("slow"), &tmp.path().join("slow"))?;
    assert_eq!((slow.lsn(), slow.state_hash()), (leader.mmsb().lsn(), leader.mmsb().state_hash()?));
    let mut pages = leader.mmsb().page_ids();
    random_write(leader.mmsb(), &mut pages, &mut rng)?;
    slow.catch_up()?;
    assert_eq!((slow.lsn(), slow.state_hash()), (leader.mmsb().lsn(), leader.mmsb().state_hash()?));
    // A follower without a connection cannot start again: it reports the
    // gap rather than skipping records.
    let o = opts.with_holder("offline");
    let mut off = Follower::open_local(&o, &tmp.path().join("offline"))?;
    let m = read_stream(&opts)?
        .into_iter()
        .find(|m| !matches!(m.body, Body::Fence { .. }))
        .ok_or("empty stream")?;
    assert!(!off.offer(m)?, "a commit after a gap was applied");
    assert_eq!(off.lsn().0, 0);
    Ok(())
}

//! `mmsb lead` killed (SIGKILL) in the middle of its commits on a real
//! three-node NATS cluster: another `mmsb lead` takes the lease over, and
//! every commit the killed one acknowledged is in the stream once, in
//! order, with the state hash it printed; `mmsb follow` converges.

use mmsb_replica::cluster::{server_binary, LocalCluster};
use mmsb_replica::link::Link;
use mmsb_replica::{Body, Follower, Options, Replicated};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A child process killed when dropped (also when the test fails).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn lead(c: &LocalCluster, holder: &str, dir: &std::path::Path, writes: u64, seed: u64) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mmsb"));
    cmd.args([
        "lead",
        "--nats",
        &c.urls().join(","),
        "--state",
        "kill",
        "--holder",
        holder,
        "--lease-ms",
        "800",
    ])
    .args(["--writes", &writes.to_string(), "--seed", &seed.to_string(), "--wait-ms", "20000"])
    .arg(dir)
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    cmd
}

/// `(epoch, lsn, hash)` of an `acked` line.
fn acked(line: &str) -> Option<(u64, u64, String)> {
    let mut w = line.strip_prefix("acked ")?.split(' ');
    Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?, w.next()?.to_string()))
}

#[test]
fn killing_the_leader_mid_commit_loses_no_acknowledged_commit() -> TestResult {
    if server_binary().is_none() {
        assert_ne!(
            std::env::var("MMSB_REQUIRE_NATS").as_deref(),
            Ok("1"),
            "MMSB_REQUIRE_NATS=1 but no nats-server"
        );
        eprintln!("skipped: no nats-server (set MMSB_NATS_SERVER or run scripts/nats-server.sh)");
        return Ok(());
    }
    let c = LocalCluster::start(3)?;
    let tmp = tempfile::tempdir()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    // The first leader: killed once it has acknowledged 40 commits, in
    // the middle of its next ones.
    let mut a = Killed(lead(&c, "a", &tmp.path().join("a"), 1_000_000, 1).spawn()?);
    let out = a.0.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(out).lines();
    let mut got = Vec::new();
    while got.len() < 40 {
        assert!(Instant::now() < deadline, "the first leader acknowledged too little in time");
        let line = lines.next().ok_or("the first leader stopped")??;
        got.extend(acked(&line));
    }
    let pid = libc::pid_t::try_from(a.0.id())?;
    // SAFETY: kill(2) on our own unreaped child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let _ = a.0.wait();
    // Whatever it printed before dying was acknowledged too.
    for line in lines {
        got.extend(acked(&line?));
    }
    // The second leader takes over once the lease expires.
    let b = lead(&c, "b", &tmp.path().join("b"), 30, 2).output()?;
    assert!(b.status.success(), "the second leader failed");
    let b_lines: Vec<_> = String::from_utf8(b.stdout)?.lines().filter_map(acked).collect();
    assert_eq!(b_lines.len(), 30);
    got.extend(b_lines);

    // The history: the stream holds LSNs 1..=n once each, each fence
    // after the last commit of the epoch before it, and every printed
    // commit at its LSN under its epoch.
    let mut opts = Options::new(c.urls(), "kill", "checker");
    opts.timeout = Duration::from_secs(10);
    let link = Link::connect(&opts)?;
    let (first, last) = link.bounds()?;
    let mut stream = Vec::new();
    for seq in first..=last {
        stream.push(Replicated::from_message(&link.get(seq)?.ok_or("a message is missing")?)?);
    }
    let (mut lsn, mut fence, mut ends) = (0, 0, std::collections::BTreeMap::new());
    for m in &stream {
        match &m.body {
            Body::Fence { after } => {
                assert!(m.epoch > fence && *after == lsn, "bad fence at seq {}", m.seq);
                fence = m.epoch;
            }
            Body::Commit { first, last, .. } | Body::Stored { first, last, .. } => {
                assert_eq!((m.epoch, *first), (fence, lsn + 1), "commit at seq {} out of order", m.seq);
                lsn = *last;
                ends.insert(*last, m.epoch);
            }
        }
    }
    for (epoch, l, _) in &got {
        assert_eq!(ends.get(l), Some(epoch), "acknowledged LSN {l} of epoch {epoch} is not in the stream");
    }
    // A follower equals each leader at every LSN it printed.
    let hashes: std::collections::BTreeMap<u64, String> =
        got.iter().map(|(_, l, h)| (*l, h.clone())).collect();
    let mut f = Follower::open(&opts, &tmp.path().join("f"))?;
    let mut checked = 0;
    while let Some(m) = f.step()? {
        if !matches!(m.body, Body::Commit { .. }) {
            continue;
        }
        if let Some(h) = hashes.get(&f.lsn().0) {
            assert_eq!(&format!("{:032x}", f.state_hash()), h, "follower differs at LSN {}", f.lsn().0);
            checked += 1;
        }
    }
    assert_eq!(checked, hashes.len());
    // `mmsb follow` reaches the same state.
    let fol = Command::new(env!("CARGO_BIN_EXE_mmsb"))
        .args(["follow", "--nats", &c.urls().join(","), "--state", "kill", "--holder", "cli"])
        .arg(tmp.path().join("g"))
        .output()?;
    assert!(fol.status.success());
    let text = String::from_utf8(fol.stdout)?;
    let last_line = text.lines().last().ok_or("no output")?;
    let end = format!("lsn {} hash {:032x}", f.lsn().0, f.state_hash());
    assert_eq!(last_line, end);

    // `mmsb follow --checkpoint-every` stores a checkpoint and trims the
    // stream behind it; a new `mmsb follow` starts from it; `mmsb inspect`
    // and `mmsb verify` read the stream and the object store.
    let mmsb = |args: &[&str]| -> std::io::Result<std::process::Output> {
        Command::new(env!("CARGO_BIN_EXE_mmsb")).args(args).output()
    };
    let urls = c.urls().join(",");
    let cp = mmsb(&[
        "follow",
        "--nats",
        &urls,
        "--state",
        "kill",
        "--checkpoint-every",
        "1",
        "--keep",
        "1",
        &tmp.path().join("g").display().to_string(),
    ])?;
    let text = String::from_utf8(cp.stdout)?;
    assert!(cp.status.success(), "{text}");
    assert!(text.contains(&format!("checkpoint at lsn {} (", f.lsn().0)), "{text}");
    assert!(link.bounds()?.0 > last, "the stream was not trimmed: {:?}", link.bounds()?);
    let fresh =
        mmsb(&["follow", "--nats", &urls, "--state", "kill", &tmp.path().join("h").display().to_string()])?;
    let text = String::from_utf8(fresh.stdout)?;
    assert!(fresh.status.success(), "{text}");
    assert!(
        text.contains(&format!("started from the object store's checkpoint at lsn {}", f.lsn().0)),
        "{text}"
    );
    assert_eq!(text.lines().last(), Some(end.as_str()));
    let ins = mmsb(&["inspect", "--nats", &urls, "--state", "kill"])?;
    let text = String::from_utf8(ins.stdout)?;
    assert!(ins.status.success(), "{text}");
    assert!(text.contains("1 checkpoints"), "{text}");
    assert!(text.contains(&format!("checkpoint at lsn {} (stream seq {last})", f.lsn().0)), "{text}");
    let ver = mmsb(&["verify", "--nats", &urls, "--state", "kill"])?;
    let text = String::from_utf8(ver.stdout)?;
    assert!(ver.status.success(), "{text}{}", String::from_utf8_lossy(&ver.stderr));
    assert!(text.starts_with("OK: 1 checkpoints decode, 1 of them"), "{text}");
    assert!(text.contains(&format!("state hash {:032x}", f.state_hash())), "{text}");
    // A state the cluster does not hold is refused, and not created.
    let none = mmsb(&["verify", "--nats", &urls, "--state", "nosuch"])?;
    assert!(!none.status.success());
    assert!(String::from_utf8(none.stderr)?.contains("no replicated state \"nosuch\""));
    assert!(mmsb_replica::link::Link::open(&Options::new(c.urls(), "nosuch", "x")).is_err());
    // A checkpoint object that is not what its metadata say is found.
    let stored = mmsb_replica::archive::checkpoints(&link)?;
    let newest = stored.last().ok_or("no checkpoint")?;
    let mut bytes = link.get_object(&newest.name)?.ok_or("no object")?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    mmsb_replica::archive::put_checkpoint(&link, newest.lsn, newest.seq, newest.state_hash, &bytes)?;
    let bad = mmsb(&["verify", "--nats", &urls, "--state", "kill"])?;
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8(bad.stderr)?;
    assert!(err.contains(&format!("DAMAGED: checkpoint {}", newest.name)), "{err}");
    Ok(())
}

//! Kill loop: SIGKILL a writer at random moments and check that every
//! commit it acknowledged survived.
//!
//! ```text
//! kill_loop [--kills N] [--seed S] [--dir PATH]      parent (default 200 kills)
//! kill_loop child DIR SEED                            the writer (spawned by the parent)
//! ```
//! `MMSB_KILLS` and `MMSB_KILL_SEED` override the defaults.
//!
//! The child opens the state directory with `Durability::SYNC` (fsync every
//! commit), prints `open <state hash>`, then loops: it prints `try <op>`,
//! commits the op, prints `ack`. The parent keeps a model (an in-memory
//! `Mmsb` with the same ops applied), kills the child after a random number
//! of acknowledgements plus a random delay, restarts it, and requires the
//! recovered state hash to equal the model after every acknowledged commit,
//! or after those plus the one in flight (it may have become durable before
//! the kill). Every restart must open the directory (strict recovery); the
//! last one is followed by `tools::verify`.

use mmsb::Durability;
use mmsb::{Config, Mmsb, PageId, PageSpec, Payload, SparseDelta, Update};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// SplitMix64.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One logged change, as sent over the pipe.
#[derive(Clone, Debug)]
enum Op {
    Create(u64),
    Update(Vec<(u64, u64, Vec<u8>)>),
    Delete(u64),
    Checkpoint,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}

impl Op {
    fn encode(&self) -> String {
        match self {
            Op::Create(len) => format!("C {len}"),
            Op::Update(us) => {
                let parts: Vec<String> = us.iter().map(|(p, o, b)| format!("{p}:{o}:{}", hex(b))).collect();
                format!("U {}", parts.join(" "))
            }
            Op::Delete(p) => format!("D {p}"),
            Op::Checkpoint => "K".into(),
        }
    }

    /// The op of a `try` line; `None` for a malformed (e.g. torn) line.
    fn decode(s: &str) -> Option<Op> {
        let mut it = s.split(' ');
        match it.next()? {
            "C" => Some(Op::Create(it.next()?.parse().ok()?)),
            "D" => Some(Op::Delete(it.next()?.parse().ok()?)),
            "K" => Some(Op::Checkpoint),
            "U" => {
                let mut us = Vec::new();
                for u in it {
                    let mut f = u.split(':');
                    let p = f.next()?.parse().ok()?;
                    let o = f.next()?.parse().ok()?;
                    us.push((p, o, unhex(f.next()?)?));
                }
                (!us.is_empty()).then_some(Op::Update(us))
            }
            _ => None,
        }
    }

    fn apply(&self, s: &Mmsb) -> mmsb::Result<()> {
        let sparse = |o: u64, b: &[u8]| SparseDelta::from_pairs([(o, b)]).map(Payload::Sparse);
        match self {
            Op::Create(len) => s.create_page(PageSpec::new(*len)).map(drop),
            Op::Delete(p) => s.delete_page(PageId(*p)),
            Op::Checkpoint => s.checkpoint().map(drop),
            Op::Update(us) if us.len() == 1 => {
                s.update_page(PageId(us[0].0), sparse(us[0].1, &us[0].2)?).map(drop)
            }
            Op::Update(us) => {
                let ups = us
                    .iter()
                    .map(|(p, o, b)| Ok(Update::new(PageId(*p), sparse(*o, b)?)))
                    .collect::<mmsb::Result<Vec<_>>>()?;
                s.update_batch(ups).map(drop)
            }
        }
    }
}

fn child(dir: &str, seed: u64) -> mmsb::Result<()> {
    let s = Mmsb::start(Config::at(dir).durability(Durability::SYNC))?;
    let mut out = std::io::stdout().lock();
    let torn = u8::from(s.recovery_report().torn_tail.is_some());
    writeln!(out, "open {:032x} {torn}", s.state_hash()?).and_then(|()| out.flush()).expect("pipe");
    let mut rng = Rng(seed);
    loop {
        let ids = s.page_ids();
        let pick = |rng: &mut Rng| ids[rng.below(ids.len() as u64) as usize];
        let op = match rng.below(100) {
            _ if ids.len() < 2 => Op::Create(1 + rng.below(5000)),
            0..=4 if ids.len() < 12 => Op::Create(1 + rng.below(5000)),
            5..=6 if ids.len() > 4 => Op::Delete(pick(&mut rng).0),
            7 => Op::Checkpoint,
            r => {
                let n = if r < 70 { 1 } else { 2 + rng.below(3) as usize };
                let mut pages: Vec<PageId> = (0..n).map(|_| pick(&mut rng)).collect();
                pages.sort();
                pages.dedup();
                let us = pages
                    .into_iter()
                    .map(|p| {
                        let len = s.page_info(p).map(|i| i.len).unwrap_or(1);
                        let off = rng.below(len);
                        let n = 1 + rng.below((len - off).min(300));
                        let b: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                        (p.0, off, b)
                    })
                    .collect();
                Op::Update(us)
            }
        };
        // One write per line, so a kill cannot split a line between writes.
        out.write_all(format!("try {}\n", op.encode()).as_bytes()).and_then(|()| out.flush()).expect("pipe");
        op.apply(&s)?;
        writeln!(out, "ack").and_then(|()| out.flush()).expect("pipe");
    }
}

#[derive(Default)]
struct Figures {
    kills: u64,
    acked: u64,
    in_flight_survived: u64,
    in_flight_lost: u64,
    torn_tails: u64,
    checkpoints: u64,
    open_ms_max: u128,
}

fn parent(kills: u64, seed: u64, dir: Option<String>) -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = dir.unwrap_or_else(|| tmp.path().join("state").to_string_lossy().into_owned());
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let model = Mmsb::start(Config::temporary().durability(Durability::None)).map_err(|e| e.to_string())?;
    let mut rng = Rng(seed);
    let mut fig = Figures::default();
    let started = Instant::now();
    println!("kill loop: {kills} kills, seed {seed:#x}, dir {dir}");
    let mut in_flight: Option<Op> = None;
    for round in 0..=kills {
        let child_seed = rng.next();
        let t0 = Instant::now();
        let mut ch = Command::new(&exe)
            .args(["child", &dir, &child_seed.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut lines = BufReader::new(ch.stdout.take().expect("piped")).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let mut f = first.split(' ');
        if f.next() != Some("open") {
            let _ = ch.kill();
            let st = ch.wait().map_err(|e| e.to_string())?;
            return Err(format!("round {round}: the directory did not open ({st}); see the child's stderr"));
        }
        fig.open_ms_max = fig.open_ms_max.max(t0.elapsed().as_millis());
        let got = u128::from_str_radix(f.next().unwrap_or(""), 16).map_err(|e| e.to_string())?;
        fig.torn_tails += u64::from(f.next() == Some("1"));
        // The commit in flight at the last kill may or may not have become
        // durable: the recovered state is the acknowledged one, or that
        // plus the in-flight op. Nothing else is acceptable.
        let mut want = model.state_hash().map_err(|e| e.to_string())?;
        if let Some(op) = in_flight.take() {
            if got == want {
                fig.in_flight_lost += u64::from(!matches!(op, Op::Checkpoint));
            } else if op.apply(&model).is_ok() {
                fig.in_flight_survived += 1;
                want = model.state_hash().map_err(|e| e.to_string())?;
            }
        }
        if got != want {
            return Err(format!(
                "round {round}: recovered state {got:032x} is not the state after the acknowledged commits \
                 ({want:032x}), with or without the one in flight"
            ));
        }
        if round == kills {
            let _ = ch.kill();
            let _ = ch.wait();
            break;
        }
        let acks = rng.below(40);
        let mut pending: Option<Op> = None;
        let mut n = 0;
        if acks == 0 {
            // Kill during or right after recovery.
            std::thread::sleep(Duration::from_micros(rng.below(3000)));
        }
        // With acks == 0 nothing is read here: the kill comes right away.
        for line in lines.by_ref().take(if acks == 0 { 0 } else { usize::MAX }) {
            let line = line.map_err(|e| e.to_string())?;
            if let Some(op) = line.strip_prefix("try ") {
                pending = Some(Op::decode(op).ok_or_else(|| format!("bad op line {op:?}"))?);
            } else if line == "ack" {
                let op = pending.take().ok_or("ack without try")?;
                op.apply(&model).map_err(|e| format!("model rejected {op:?}: {e}"))?;
                fig.acked += 1;
                fig.checkpoints += u64::from(matches!(op, Op::Checkpoint));
                n += 1;
                if n >= acks {
                    // Let the child run on for up to 3 ms, then kill it
                    // wherever it is (mid-write, mid-fsync, mid-checkpoint).
                    std::thread::sleep(Duration::from_micros(rng.below(3000)));
                    break;
                }
            } else {
                return Err(format!("unexpected line {line:?}"));
            }
        }
        ch.kill().map_err(|e| e.to_string())?;
        // Read what the child managed to print before it died: acks that
        // were printed are acknowledged commits. The last line may be torn
        // by the kill; a torn `try` is never followed by its `ack`.
        for line in lines.map_while(Result::ok) {
            if let Some(op) = line.strip_prefix("try ") {
                pending = Op::decode(op);
            } else if line == "ack" {
                let op = pending.take().ok_or("ack without try")?;
                op.apply(&model).map_err(|e| format!("model rejected {op:?}: {e}"))?;
                fig.acked += 1;
            }
        }
        ch.wait().map_err(|e| e.to_string())?;
        fig.kills += 1;
        in_flight = pending.take();
    }
    let v = mmsb::history::tools::verify(std::path::Path::new(&dir));
    let el = started.elapsed();
    println!(
        "kill loop: {} kills, {} acknowledged commits ({} checkpoints), in-flight commit survived {} / lost {}, \
         torn tails cut {}, slowest open {} ms, {:.1} s; final verify: {}",
        fig.kills,
        fig.acked,
        fig.checkpoints,
        fig.in_flight_survived,
        fig.in_flight_lost,
        fig.torn_tails,
        fig.open_ms_max,
        el.as_secs_f64(),
        if v.is_ok() { "ok".to_string() } else { v.to_string() }
    );
    if v.problem.as_ref().is_some_and(|p| !p.reason.contains("torn tail")) {
        return Err(format!("verify failed: {v}"));
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        let seed = args.get(3).and_then(|s| s.parse().ok()).expect("child DIR SEED");
        if let Err(e) = child(&args[2], seed) {
            eprintln!("kill_loop child: {e}");
            std::process::exit(1);
        }
        return;
    }
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let mut kills = env("MMSB_KILLS").unwrap_or(200);
    let mut seed = env("MMSB_KILL_SEED").unwrap_or(0x4D4D_5342);
    let mut dir = None;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--kills" => kills = v.parse().expect("--kills N"),
            "--seed" => seed = v.parse().expect("--seed S"),
            "--dir" => dir = Some(v.clone()),
            _ => panic!("unknown argument {a}"),
        }
    }
    if let Err(e) = parent(kills, seed, dir) {
        eprintln!("kill loop FAILED (seed {seed}): {e}");
        std::process::exit(1);
    }
}

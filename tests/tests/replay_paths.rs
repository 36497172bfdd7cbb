//! Replay to an LSN or a timestamp (which take batches of delta records
//! straight from their frames) against the general record-by-record replay
//! of `replay_with`, on random logs and on corrupted copies of them: the
//! same states, or the same errors.

use mmsb::history::replay::{self, StateImage};
use mmsb::internals::log::reader::read_frame;
use mmsb::internals::log::{Durability, LogWriter, SEGMENT_HEAD_LEN};
use mmsb::vfs::{SimVfs, Vfs};
use mmsb::Limits;
use mmsb::{
    Change, Config, Delta, DeltaId, DenseDelta, EdgeKind, Epoch, Lsn, Mmsb, PageId, PageSpec, Payload,
    Provenance, Result, Source, SparseDelta, Update,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const STATE: &str = "/s";

fn log_dir() -> PathBuf {
    mmsb::internals::files::log_dir(Path::new(STATE))
}

fn payload(rng: &mut Rng, len: u64) -> Payload {
    match rng.below(8) {
        0 => Payload::Full((0..len).map(|_| rng.next() as u8).collect()),
        1 => {
            let o: Vec<Option<u8>> =
                (0..len).map(|_| if rng.chance(30) { Some(rng.next() as u8) } else { None }).collect();
            Payload::Dense(DenseDelta::from_options(&o).unwrap())
        }
        k => {
            // One to three sorted runs of 1..=8 bytes.
            let mut pairs: Vec<(u64, Vec<u8>)> = Vec::new();
            let mut at = 0u64;
            for _ in 0..1 + k % 3 {
                let n = 1 + rng.below(8);
                if at + n > len {
                    break;
                }
                let off = at + rng.below(len - at - n + 1);
                pairs.push((off, (0..n).map(|_| rng.next() as u8).collect()));
                at = off + n;
            }
            Payload::Sparse(SparseDelta::from_pairs(pairs.iter().map(|(o, d)| (*o, &d[..]))).unwrap())
        }
    }
}

/// A random log written record by record: page creation and deletion,
/// graph changes, single deltas and batches of deltas (sparse, dense and
/// full payloads, provenance, tags, base epochs), over small segments; now
/// and then a delta that cannot be replayed (a missing page, a stale base
/// epoch, an id or timestamp out of order, a payload too long).
fn random_log(seed: u64) -> SimVfs {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let vfs = SimVfs::new();
    let dir = log_dir();
    vfs.create_dir_all(&dir).unwrap();
    let limit = 600 + rng.below(6000);
    let mut w = LogWriter::open(Arc::new(vfs.clone()), &dir, 1, 1, 1, Durability::None, limit).unwrap();
    // Pages: (id, length, epoch).
    let mut pages: Vec<(u64, u64, u64)> = Vec::new();
    let (mut next_page, mut next_delta, mut ts) = (1u64, 1u64, 0u64);
    let bad = rng.chance(30);
    for _ in 0..4 + rng.below(40) {
        let mut changes = Vec::new();
        let roll = rng.below(100);
        if pages.len() < 2 || roll < 12 {
            let max = if rng.chance(50) { 64 } else { 300 };
            let len = 1 + rng.below(max);
            changes.push(Change::CreatePage {
                id: PageId(next_page),
                len,
                location: mmsb::Location::Cpu,
                meta: Default::default(),
            });
            pages.push((next_page, len, 0));
            next_page += 1;
        } else if roll < 16 {
            let (id, ..) = pages.remove(rng.below(pages.len() as u64) as usize);
            changes.push(Change::DeletePage { id: PageId(id) });
        } else if roll < 20 {
            let a = pages[rng.below(pages.len() as u64) as usize].0;
            let b = pages[rng.below(pages.len() as u64) as usize].0;
            if a != b {
                changes.push(Change::AddEdge { from: PageId(a), to: PageId(b), kind: EdgeKind::Control });
            }
        } else {
            let n = if rng.chance(15) { 1 } else { 2 + rng.below(40) };
            for _ in 0..n {
                let i = rng.below(pages.len() as u64) as usize;
                let (id, len, epoch) = pages[i];
                let mut d = Delta {
                    id: DeltaId(next_delta),
                    page: PageId(id),
                    base_epoch: rng.chance(20).then_some(Epoch(epoch)),
                    payload: payload(&mut rng, len),
                    source: Source::User,
                    tag: None,
                    timestamp: ts + changes.len() as u64 + 1,
                };
                if rng.chance(5) {
                    d.source = Source::Propagation(Provenance {
                        function: "f".into(),
                        version: 1,
                        parents: vec![(PageId(pages[0].0), Epoch(pages[0].2))],
                    });
                }
                if rng.chance(5) {
                    d.tag = Some("t".into());
                }
                if bad && rng.chance(3) {
                    match rng.below(5) {
                        0 => d.page = PageId(next_page + 5),
                        1 => d.base_epoch = Some(Epoch(epoch + 1)),
                        2 => d.id = DeltaId(next_delta.saturating_sub(2)),
                        3 => d.timestamp += 1,
                        _ => d.payload = Payload::Full(vec![1; len as usize + 1]),
                    }
                }
                pages[i].2 += 1;
                next_delta += 1;
                changes.push(Change::Apply(d));
            }
        }
        if changes.is_empty() {
            continue;
        }
        ts += changes.len() as u64;
        w.append(&changes).unwrap();
        w.commit().unwrap();
    }
    w.sync().unwrap();
    vfs
}

/// A random log made through the API: batches of small updates, a derived
/// page (deltas with provenance), a checkpoint, deletions.
fn api_log(seed: u64) -> SimVfs {
    let mut rng = Rng(seed.wrapping_mul(0xD1B5_4A32_D192_ED03) | 1);
    let vfs = SimVfs::new();
    let mut cfg = Config::at(STATE).vfs(Arc::new(vfs.clone())).durability(Durability::None);
    cfg.segment_bytes = 2000 + rng.below(20_000);
    let s = Mmsb::start(cfg).unwrap();
    s.register_function("copy", 1, |ins: &[&[u8]], out: &mut [u8]| out.copy_from_slice(ins[0])).unwrap();
    let mut ids: Vec<PageId> = (0..4).map(|_| s.create_page(PageSpec::new(48)).unwrap()).collect();
    let derived = s.create_page(PageSpec::new(48)).unwrap();
    s.declare_derived(derived, "copy", &[ids[0]]).unwrap();
    for round in 0..3 + rng.below(12) {
        let n = 1 + rng.below(30) as usize;
        let batch: Vec<Update> =
            (0..n).map(|k| Update::new(ids[k % ids.len()], payload(&mut rng, 48))).collect();
        s.update_batch(batch).unwrap();
        if round == 2 && rng.chance(50) {
            s.checkpoint().unwrap();
        }
        if rng.chance(10) && ids.len() > 2 {
            let p = ids.pop().unwrap();
            s.delete_page(p).unwrap();
        }
        if rng.chance(10) {
            ids.push(s.create_page(PageSpec::new(48)).unwrap());
        }
    }
    s.stop().unwrap();
    vfs
}

fn segments(vfs: &SimVfs) -> Vec<PathBuf> {
    let dir = log_dir();
    let mut v: Vec<PathBuf> =
        vfs.list(&dir).unwrap().into_iter().filter(|n| n.starts_with("wal-")).map(|n| dir.join(n)).collect();
    v.sort();
    v
}

/// The general path: every commit decoded and handed to `apply_commit`.
fn general_to_lsn(vfs: &SimVfs, to: Option<u64>) -> Result<StateImage> {
    let target = to.unwrap_or(u64::MAX);
    replay::replay_observed(
        vfs,
        Path::new(STATE),
        Some(target),
        &Limits::default(),
        &mut |_, c| c.end_lsn() > target,
        &mut |_, _| {},
    )
}

fn general_to_timestamp(vfs: &SimVfs, t: u64) -> Result<StateImage> {
    let dir = log_dir();
    let mut best: Option<u64> = None;
    for (lsn, path) in mmsb::internals::checkpoint::list(vfs, &dir)? {
        if let Ok(img) = mmsb::internals::checkpoint::read(vfs, &path, &Limits::default()) {
            if img.timestamp <= t {
                best = Some(lsn);
                break;
            }
        }
    }
    replay::replay_observed(
        vfs,
        Path::new(STATE),
        Some(best.unwrap_or(0)),
        &Limits::default(),
        &mut |img, c| img.timestamp + c.len() as u64 > t,
        &mut |_, _| {},
    )
}

fn same(what: &str, fast: &Result<StateImage>, general: &Result<StateImage>) -> (u64, u64) {
    match (fast, general) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "{what}: states differ");
            assert_eq!(a.state_hash(), b.state_hash(), "{what}");
            (1, 0)
        }
        (Err(a), Err(b)) => {
            assert_eq!(a.to_string(), b.to_string(), "{what}: errors differ");
            (0, 1)
        }
        _ => panic!("{what}: fast {fast:?} vs general {general:?}"),
    }
}

/// Both ways at the end, at a random LSN and at a random timestamp:
/// (states, errors) seen.
fn compare(vfs: &SimVfs, rng: &mut Rng, what: &str) -> (u64, u64) {
    let mut seen = (0, 0);
    let mut add = |(a, b): (u64, u64)| {
        seen.0 += a;
        seen.1 += b;
    };
    let end = replay::replay_to_lsn(vfs, Path::new(STATE), None, &Limits::default());
    add(same(&format!("{what}, end"), &end, &general_to_lsn(vfs, None)));
    let top = end.as_ref().map_or(400, |i| i.lsn.max(1) + 2);
    let lsn = rng.below(top);
    let fast = replay::replay_to_lsn(vfs, Path::new(STATE), Some(Lsn(lsn)), &Limits::default());
    add(same(&format!("{what}, lsn {lsn}"), &fast, &general_to_lsn(vfs, Some(lsn))));
    let t = rng.below(end.as_ref().map_or(400, |i| i.timestamp + 2));
    let fast = replay::replay_to_timestamp(vfs, Path::new(STATE), t, &Limits::default());
    add(same(&format!("{what}, time {t}"), &fast, &general_to_timestamp(vfs, t)));
    seen
}

/// Frames of a segment: (offset, framed length).
fn frames(seg: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut pos = SEGMENT_HEAD_LEN;
    while pos + 20 <= seg.len() {
        let mut l = [0u8; 8];
        l.copy_from_slice(&seg[pos + 8..pos + 16]);
        match read_frame(seg, pos, u64::from_le_bytes(l), &Limits::default()) {
            Ok(r) => {
                out.push((pos, r.framed));
                pos += r.framed;
            }
            Err(_) => break,
        }
    }
    out
}

/// Corrupted copies of `vfs`: a flipped byte anywhere, a flipped body byte
/// with its frame's CRC made valid again, a truncated segment.
fn mutations(vfs: &SimVfs, rng: &mut Rng, what: &str) -> (u64, u64) {
    let mut seen = (0, 0);
    let segs = segments(vfs);
    for m in 0..12 {
        let v = vfs.snapshot();
        let seg = &segs[rng.below(segs.len() as u64) as usize];
        let bytes = v.read(seg).unwrap();
        if bytes.is_empty() {
            continue;
        }
        let (x, pick) = (1 + rng.below(255) as u8, rng.next());
        v.corrupt(seg, |b| match m % 3 {
            0 => b[pick as usize % bytes.len()] ^= x,
            1 => {
                let fs = frames(&bytes);
                if let Some(&(at, framed)) = fs.get(pick as usize % fs.len().max(1)) {
                    let i = at + 16 + (pick >> 32) as usize % (framed - 20).max(1);
                    b[i.min(at + framed - 5)] ^= x;
                    let c = mmsb::internals::codec::crc(&b[at..at + framed - 4]);
                    b[at + framed - 4..at + framed].copy_from_slice(&c.to_le_bytes());
                }
            }
            _ => b.truncate(pick as usize % bytes.len()),
        })
        .unwrap();
        let (a, e) = compare(&v, rng, &format!("{what}, mutation {m}"));
        seen.0 += a;
        seen.1 += e;
    }
    seen
}

#[test]
fn fast_replay_matches_the_general_path_on_random_logs() {
    let (mut states, mut errors) = (0, 0);
    for seed in 0..120 {
        let mut rng = Rng(seed + 77);
        let vfs = random_log(seed);
        let (a, e) = compare(&vfs, &mut rng, &format!("seed {seed}"));
        let (a2, e2) = mutations(&vfs, &mut rng, &format!("seed {seed}"));
        states += a + a2;
        errors += e + e2;
    }
    // Both outcomes are exercised.
    assert!(states > 500 && errors > 500, "states {states}, errors {errors}");
}

#[test]
fn fast_replay_matches_the_general_path_on_api_logs() {
    let (mut states, mut errors) = (0, 0);
    for seed in 0..40 {
        let mut rng = Rng(seed + 5);
        let vfs = api_log(seed);
        let end = replay::replay_to_lsn(&vfs, Path::new(STATE), None, &Limits::default());
        assert!(end.is_ok(), "api seed {seed}: a clean log fails to replay: {end:?}");
        let (a, e) = compare(&vfs, &mut rng, &format!("api seed {seed}"));
        let (a2, e2) = mutations(&vfs, &mut rng, &format!("api seed {seed}"));
        states += a + a2;
        errors += e + e2;
    }
    assert!(states > 100 && errors > 50, "states {states}, errors {errors}");
}

/// Records what a scan delivers, taking delta batches undecoded or not.
struct Recorder {
    takes: bool,
    seen: Vec<String>,
    batches: usize,
}

impl mmsb::internals::log::reader::Visitor for Recorder {
    fn commit(&mut self, c: mmsb::internals::log::reader::Commit<'_, '_>) -> Result<bool> {
        self.seen.push(format!("{:?} end {}", c.records(), c.end_lsn()));
        Ok(true)
    }
    fn delta_batch(&mut self, frames: mmsb::internals::log::reader::DeltaFrames<'_>) -> Option<bool> {
        // Written as `commit` would write the decoded batch; one that does
        // not decode is declined (the scan then decodes it and says why).
        let first = frames.end_lsn() - frames.len() as u64;
        let mut records = Vec::new();
        for (i, (at, body)) in frames.bodies().enumerate() {
            let v = mmsb::internals::codec::delta::DeltaView::parse(body, at, &Limits::default()).ok()?;
            records.push((first + i as u64, mmsb::internals::log::reader::Record::Delta(v)));
        }
        assert_eq!(records.len(), frames.len());
        self.seen.push(format!("{records:?} end {}", frames.end_lsn()));
        self.batches += 1;
        Some(true)
    }
    fn takes_delta_batches(&self) -> bool {
        self.takes
    }
}

/// One scan of `vfs`'s log read `window` bytes at a time: what it found and
/// delivered, as text.
fn scan_text(vfs: &SimVfs, mode: mmsb::RecoveryMode, takes: bool, window: usize) -> (String, usize) {
    let mut r = Recorder { takes, seen: Vec::new(), batches: 0 };
    let res = mmsb::internals::log::reader::scan_windowed(
        vfs,
        &log_dir(),
        0,
        mode,
        &Limits::default(),
        &mut r,
        window,
    );
    (format!("{res:?}\n{:#?}", r.seen), r.batches)
}

#[test]
fn scans_do_not_depend_on_the_read_window() {
    let mut batches = 0;
    for seed in 0..60 {
        let mut rng = Rng(seed + 999);
        let base = if seed % 3 == 0 { api_log(seed) } else { random_log(seed) };
        let segs = segments(&base);
        for m in 0..6 {
            let v = base.snapshot();
            if m > 0 {
                let seg = &segs[rng.below(segs.len() as u64) as usize];
                let len = v.read(seg).unwrap().len() as u64;
                let (at, x) = (rng.below(len.max(1)) as usize, 1 + rng.below(255) as u8);
                v.corrupt(seg, |b| {
                    if m % 2 == 0 {
                        b.truncate(at);
                    } else if let Some(c) = b.get_mut(at) {
                        *c ^= x;
                    }
                })
                .unwrap();
            }
            for mode in [mmsb::RecoveryMode::Strict, mmsb::RecoveryMode::Tolerant] {
                // Window 0: each file read whole and scanned record by record.
                let (whole, _) = scan_text(&v, mode, false, 0);
                for takes in [false, true] {
                    for window in [1, 7, 64, 300, 4096, usize::MAX] {
                        let (got, n) = scan_text(&v, mode, takes, window);
                        assert_eq!(got, whole, "seed {seed}, mutation {m}, {mode:?}, window {window}");
                        batches += n;
                    }
                }
            }
        }
    }
    assert!(batches > 1000, "{batches} batches taken undecoded");
}

//! Disk rows: log append, durable commit, checkpoint write and restore,
//! replay. Each next to the raw file operation on the same bytes, in a
//! directory on the same file system, measured in the same run.

use crate::{median, small_sparse, Row};
use mmsb::vfs::StdVfs;
use mmsb::Durability;
use mmsb::Limits;
use mmsb::{Config, Mmsb, PageId, PageSpec, Payload, Result, Update};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Sizes of the disk workloads.
#[derive(Clone, Copy, Debug)]
pub struct DiskBudget {
    /// Small deltas appended in the append row.
    pub append_deltas: usize,
    /// Durable commits timed.
    pub durable_commits: usize,
    /// Bytes of page data in the checkpoint rows.
    pub checkpoint_bytes: usize,
    /// Checkpoints (and restores) timed; the median is reported.
    pub checkpoint_reps: usize,
    /// Small deltas in the replayed log.
    pub replay_deltas: usize,
}

impl DiskBudget {
    /// The `--quick` sizes.
    pub const QUICK: DiskBudget = DiskBudget {
        append_deltas: 1_000_000,
        durable_commits: 300,
        checkpoint_bytes: 32 << 20,
        checkpoint_reps: 3,
        replay_deltas: 1_000_000,
    };
    /// The full sizes.
    pub const FULL: DiskBudget = DiskBudget {
        append_deltas: 4_000_000,
        durable_commits: 2_000,
        checkpoint_bytes: 256 << 20,
        checkpoint_reps: 5,
        replay_deltas: 4_000_000,
    };
}

/// Deltas per committed batch in the append and replay rows.
pub const BATCH: usize = 1_000;
/// Pages the small deltas go to.
const PAGES: usize = 64;
/// Their length.
const PAGE_LEN: usize = 64;
/// Largest small delta.
const SMALL: usize = 8;

fn small_pages(s: &Mmsb) -> Result<Vec<PageId>> {
    (0..PAGES).map(|_| s.create_page(PageSpec::new(PAGE_LEN as u64))).collect()
}

fn small_batch(rng: &mut ChaCha8Rng, ids: &[PageId]) -> Vec<Update> {
    (0..BATCH).map(|k| Update::new(ids[k % ids.len()], small_sparse(rng, PAGE_LEN, SMALL))).collect()
}

/// Write `chunks` chunks of `chunk` bytes to a fresh file in `dir`, with an
/// fdatasync after each when `sync`; seconds taken.
fn raw_write(dir: &Path, chunk: usize, chunks: usize, sync: bool) -> Result<f64> {
    let path = dir.join("raw-write.bin");
    let mut f = std::fs::File::create(&path)?;
    let buf = vec![0xA5u8; chunk.max(1)];
    let t = Instant::now();
    for _ in 0..chunks {
        f.write_all(&buf)?;
        if sync {
            f.sync_data()?;
        }
    }
    let e = t.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(e)
}

/// Write `len` bytes sequentially (1 MiB calls) to a fresh file in `dir`
/// and fdatasync once, as a checkpoint does; seconds taken.
fn raw_write_then_sync(dir: &Path, len: usize) -> Result<f64> {
    let path = dir.join("raw-checkpoint.bin");
    let mut f = std::fs::File::create(&path)?;
    let buf = vec![0x5Au8; 1 << 20];
    let t = Instant::now();
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        f.write_all(&buf[..n])?;
        left -= n;
    }
    f.sync_data()?;
    let e = t.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(e)
}

/// Log append of small deltas with [`Durability::Flush`] (one `write` per
/// committed batch of [`BATCH`] deltas), against raw `write` calls of the
/// same sizes.
pub fn append_rows(b: DiskBudget, base: &Path) -> Result<Vec<Row>> {
    let dir = base.join("append");
    let s = Mmsb::start(Config::at(&dir).durability(Durability::Flush))?;
    let ids = small_pages(&s)?;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let before = s.log_stats();
    let mut spent = Duration::ZERO;
    let batches = b.append_deltas.div_ceil(BATCH);
    for _ in 0..batches {
        let batch = small_batch(&mut rng, &ids);
        let t = Instant::now();
        s.update_batch(batch)?;
        spent += t.elapsed();
    }
    let after = s.log_stats();
    s.stop()?;
    drop(s);
    std::fs::remove_dir_all(&dir)?;
    let deltas = (batches * BATCH) as f64;
    let writes = (after.writes - before.writes).max(1);
    let bytes = after.bytes - before.bytes;
    let raw = raw_write(base, (bytes / writes) as usize, writes as usize, false)?;
    Ok(vec![Row::rate(
        "log_append_small_flush",
        deltas / spent.as_secs_f64(),
        "deltas/s",
        &format!("raw write() of the same {} MB in {} calls", bytes >> 20, writes),
        deltas / raw,
        Some(5e6),
    )])
}

/// Durable commit: one small delta per commit with an fsync each
/// ([`Durability::SYNC`]), against raw `write` + `fdatasync` of the same
/// bytes per commit.
pub fn durable_rows(b: DiskBudget, base: &Path) -> Result<Vec<Row>> {
    let dir = base.join("durable");
    let s = Mmsb::start(Config::at(&dir).durability(Durability::SYNC))?;
    let ids = small_pages(&s)?;
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let before = s.log_stats();
    let n = b.durable_commits.max(1);
    let mut spent = Duration::ZERO;
    for k in 0..n {
        let p = small_sparse(&mut rng, PAGE_LEN, SMALL);
        let t = Instant::now();
        s.update_page(ids[k % ids.len()], p)?;
        spent += t.elapsed();
    }
    let after = s.log_stats();
    s.stop()?;
    drop(s);
    std::fs::remove_dir_all(&dir)?;
    let per_commit = ((after.bytes - before.bytes) / n as u64) as usize;
    let raw = raw_write(base, per_commit, n, true)?;
    Ok(vec![Row::throughput(
        "log_commit_durable_small",
        n as f64 / spent.as_secs_f64(),
        "commits/s",
        &format!("raw write+fdatasync of {per_commit} B"),
        n as f64 / raw,
        Some(0.8),
    )])
}

/// Checkpoint write against raw sequential write + fsync of the same
/// bytes; checkpoint restore ([`Mmsb::start`] on the directory) against a
/// raw sequential read of the checkpoint file.
pub fn checkpoint_rows(b: DiskBudget, base: &Path) -> Result<Vec<Row>> {
    let dir = base.join("checkpoint");
    let page = 1usize << 20;
    let count = (b.checkpoint_bytes / page).max(1);
    let mut ids = Vec::with_capacity(count);
    {
        let s = Mmsb::start(Config::at(&dir).durability(Durability::None))?;
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        for _ in 0..count {
            let id = s.create_page(PageSpec::new(page as u64))?;
            // Random bytes: the page codec cannot shrink them.
            let mut data = vec![0u8; page];
            rng.fill_bytes(&mut data);
            s.update_page(id, Payload::Full(data))?;
            ids.push(id);
        }
        s.stop()?;
    }
    let mut write_times = Vec::new();
    let mut raw_write_times = Vec::new();
    let mut restore_times = Vec::new();
    let mut raw_read_times = Vec::new();
    let mut file_bytes = 0u64;
    for rep in 0..b.checkpoint_reps.max(1) {
        let t = Instant::now();
        let s = Mmsb::start(Config::at(&dir).durability(Durability::None))?;
        if rep > 0 {
            restore_times.push(t.elapsed().as_secs_f64());
        }
        s.update_page(ids[rep % ids.len()], Payload::Full(vec![rep as u8; page]))?;
        let t = Instant::now();
        // Full checkpoints: the increments have rows of their own.
        let info = s.checkpoint_full()?;
        write_times.push(t.elapsed().as_secs_f64());
        file_bytes = info.bytes;
        s.stop()?;
        drop(s);
        raw_write_times.push(raw_write_then_sync(base, info.bytes as usize)?);
        let t = Instant::now();
        let bytes = read_fresh(&info.path)?;
        raw_read_times.push(t.elapsed().as_secs_f64());
        std::hint::black_box(bytes);
    }
    // One more restore so there are as many restores as checkpoints.
    let t = Instant::now();
    let s = Mmsb::start(Config::at(&dir).durability(Durability::None))?;
    restore_times.push(t.elapsed().as_secs_f64());
    s.stop()?;
    drop(s);
    std::fs::remove_dir_all(&dir)?;
    let gbs = |secs: f64| file_bytes as f64 / secs / 1e9;
    let mb = file_bytes >> 20;
    Ok(vec![
        Row::throughput(
            &format!("checkpoint_write_{mb}m"),
            gbs(median(&mut write_times)),
            "GB/s",
            &format!("raw sequential write+fdatasync of {mb} MB"),
            gbs(median(&mut raw_write_times)),
            Some(0.8),
        ),
        Row::throughput(
            &format!("checkpoint_restore_{mb}m"),
            gbs(median(&mut restore_times)),
            "GB/s",
            &format!("raw sequential read of the {mb} MB file (page cache)"),
            gbs(median(&mut raw_read_times)),
            Some(0.8),
        ),
    ])
}

/// Incremental checkpoints over a state of `b.checkpoint_bytes` in 1 MiB
/// pages of random bytes, each in the same run as its peer: with 1% of the
/// 4 KiB blocks changed, an increment against a full checkpoint of the same
/// state (bytes written and time); with every block changed, the
/// checkpoint `Mmsb::checkpoint` chooses (a full one) against a forced full
/// one; and a start through a chain of 8 increments against a raw read of
/// the files it reads. With `loc` a GPU, the pages live there (the
/// increment gathers their changed blocks on the device); the rows' names
/// start with `gpu_` and carry the device's name.
pub fn increment_rows(b: DiskBudget, base: &Path, loc: mmsb::Location) -> Result<Vec<Row>> {
    let dir = base.join("increments");
    let (prefix, device) = match loc {
        mmsb::Location::Cpu => ("", crate::cpu_model()),
        _ => ("gpu_", mmsb::gpu::probe().map(|i| i.name).unwrap_or_else(|e| e.to_string())),
    };
    let page = 1usize << 20;
    let count = (b.checkpoint_bytes / page).max(1);
    let blocks_per_page = page / mmsb::CHANGE_BLOCK;
    let total_blocks = count * blocks_per_page;
    let cfg = || Config::at(&dir).durability(Durability::None).checkpoint_chain(8);
    let s = Mmsb::start(cfg())?;
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let id = s.create_page(PageSpec::new(page as u64).on(loc))?;
        let mut data = vec![0u8; page];
        rng.fill_bytes(&mut data);
        s.update_page(id, Payload::Full(data))?;
        ids.push(id);
    }
    // 1% of the blocks, each by one 8-byte write, in one commit.
    let one_percent = |rng: &mut ChaCha8Rng| -> Result<()> {
        let n = (total_blocks / 100).max(1);
        let mut updates = Vec::with_capacity(n);
        for k in 0..n {
            // Distinct blocks: a stride through them from a random start.
            let block = (rng.next_u64() as usize % 100 + k * 100) % total_blocks;
            let (p, at) = (block / blocks_per_page, (block % blocks_per_page) * mmsb::CHANGE_BLOCK);
            let mut bytes = [0u8; 8];
            rng.fill_bytes(&mut bytes);
            let payload = Payload::Sparse(mmsb::SparseDelta::from_pairs([(at as u64 + 8, &bytes[..])])?);
            updates.push(Update::new(ids[p], payload));
        }
        s.update_batch(updates).map(|_| ())
    };
    let (mut incr_t, mut full_t, mut incr_b, mut full_b) = (Vec::new(), Vec::new(), 0u64, 0u64);
    for _ in 0..b.checkpoint_reps.max(1) {
        // A full base, then an increment on it and a full checkpoint of the
        // same change, in turn.
        s.checkpoint_full()?;
        one_percent(&mut rng)?;
        let t = Instant::now();
        let i = s.checkpoint()?;
        incr_t.push(t.elapsed().as_secs_f64());
        if !matches!(i.kind, mmsb::CheckpointKind::Increment { .. }) {
            return Err(mmsb::Error::Invariant(format!("1% changed gave {:?}", i.kind)));
        }
        incr_b = i.bytes;
        one_percent(&mut rng)?;
        let t = Instant::now();
        full_b = s.checkpoint_full()?.bytes;
        full_t.push(t.elapsed().as_secs_f64());
    }
    // Every block changed: what checkpoint() picks against a full one,
    // each after a full one (both retire one file), in turn.
    let (mut all_t, mut all_full_t) = (Vec::new(), Vec::new());
    s.checkpoint_full()?;
    for rep in 0..b.checkpoint_reps.max(1) {
        for forced in [rep % 2 == 1, rep % 2 == 0] {
            for (k, id) in ids.iter().enumerate() {
                let mut data = vec![0u8; page];
                rng.fill_bytes(&mut data);
                data[0] = (rep + k) as u8;
                s.update_page(*id, Payload::Full(data))?;
            }
            let t = Instant::now();
            if forced {
                s.checkpoint_full()?;
                all_full_t.push(t.elapsed().as_secs_f64());
            } else {
                s.checkpoint()?;
                all_t.push(t.elapsed().as_secs_f64());
            }
        }
    }
    // A chain of 8 increments, then a start through it.
    s.checkpoint_full()?;
    let mut files = Vec::new();
    for _ in 0..8 {
        one_percent(&mut rng)?;
        files.push(s.checkpoint()?);
    }
    let chain_bytes: u64 = files.iter().map(|f| f.bytes).sum::<u64>() + full_b;
    let mut paths: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
    if !files.iter().all(|f| matches!(f.kind, mmsb::CheckpointKind::Increment { .. })) {
        return Err(mmsb::Error::Invariant("the chain of 8 was cut short".into()));
    }
    s.stop()?;
    drop(s);
    let full_path = mmsb::internals::checkpoint::list(&StdVfs, &mmsb::internals::files::log_dir(&dir))?
        .last()
        .map(|c| c.1.clone())
        .ok_or_else(|| mmsb::Error::Invariant("no checkpoint".into()))?;
    paths.push(full_path);
    let (mut restore_t, mut raw_t) = (Vec::new(), Vec::new());
    for _ in 0..b.checkpoint_reps.max(1) {
        let t = Instant::now();
        let s = Mmsb::start(cfg())?;
        restore_t.push(t.elapsed().as_secs_f64());
        drop(s);
        let t = Instant::now();
        for p in &paths {
            std::hint::black_box(read_fresh(p)?);
        }
        raw_t.push(t.elapsed().as_secs_f64());
    }
    std::fs::remove_dir_all(&dir)?;
    let mb = b.checkpoint_bytes >> 20;
    let gbs = |secs: f64| chain_bytes as f64 / secs / 1e9;
    let rows = vec![
        Row::cost(
            &format!("{prefix}checkpoint_increment_1pct_{mb}m_bytes"),
            incr_b as f64,
            "B",
            "a full checkpoint of the same state",
            full_b as f64,
            Some(20.0),
        ),
        Row::cost(
            &format!("{prefix}checkpoint_increment_1pct_{mb}m"),
            median(&mut incr_t) * 1e3,
            "ms",
            "a full checkpoint of the same state",
            median(&mut full_t) * 1e3,
            Some(10.0),
        ),
        Row::cost(
            &format!("{prefix}checkpoint_all_changed_{mb}m"),
            median(&mut all_t) * 1e3,
            "ms",
            "a forced full checkpoint of the same state",
            median(&mut all_full_t) * 1e3,
            Some(0.95),
        ),
        Row::throughput(
            &format!("{prefix}checkpoint_chain8_restore_{mb}m"),
            gbs(median(&mut restore_t)),
            "GB/s",
            "raw read of the chain's files (page cache)",
            gbs(median(&mut raw_t)),
            Some(0.8),
        ),
    ];
    Ok(rows.into_iter().map(|r| r.on(&device)).collect())
}

/// Reserved for the raw read of a checkpoint: more than glibc's largest
/// dynamic mmap threshold (32 MiB), so the buffer is a fresh mapping every
/// time, as the pages of a restore at start-up are, and not heap memory
/// that earlier frees may have left mapped (which made the limit swing
/// between about 2 and 5 GB/s from one build to the next).
const FRESH_READ_MIN: usize = 33 << 20;

/// Read a whole file into freshly mapped memory.
fn read_fresh(path: &Path) -> Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len() as usize;
    let mut bytes = Vec::with_capacity(len.max(FRESH_READ_MIN));
    std::io::Read::read_to_end(&mut f, &mut bytes)?;
    Ok(bytes)
}

/// Segment files of a state directory.
fn segments(dir: &Path) -> Result<Vec<PathBuf>> {
    let log = mmsb::internals::files::log_dir(dir);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&log)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| mmsb::internals::files::parse_segment_name(n).is_some())
        })
        .collect();
    v.sort();
    Ok(v)
}

/// Offline replay of a log of small deltas (every change re-validated),
/// against reading the same segment files.
pub fn replay_rows(b: DiskBudget, base: &Path) -> Result<Vec<Row>> {
    let dir = base.join("replay");
    let batches = b.replay_deltas.div_ceil(BATCH);
    {
        // The log alone: no checkpoint at the stop, which replay would
        // start from.
        let s = Mmsb::start(Config::at(&dir).durability(Durability::None).stop_checkpoint_bytes(u64::MAX))?;
        let ids = small_pages(&s)?;
        let mut rng = ChaCha8Rng::seed_from_u64(14);
        for _ in 0..batches {
            s.update_batch(small_batch(&mut rng, &ids))?;
        }
        s.stop()?;
    }
    let deltas = (batches * BATCH) as f64;
    let mut replay = Vec::new();
    let mut read = Vec::new();
    let mut bytes = 0u64;
    for _ in 0..3 {
        let t = Instant::now();
        let img = mmsb::history::replay::replay_to_lsn(&StdVfs, &dir, None, &Limits::default())?;
        replay.push(t.elapsed().as_secs_f64());
        std::hint::black_box(img.state_hash());
        let t = Instant::now();
        bytes = 0;
        for p in segments(&dir)? {
            bytes += std::hint::black_box(std::fs::read(p)?).len() as u64;
        }
        read.push(t.elapsed().as_secs_f64());
    }
    std::fs::remove_dir_all(&dir)?;
    // The target is a ratio: replay keeps up with at least 0.7 of the
    // speed at which the same segment files can merely be read.
    Ok(vec![Row::throughput(
        "replay_small_deltas",
        deltas / median(&mut replay),
        "deltas/s",
        &format!("read of the same {} MB of segments", bytes >> 20),
        deltas / median(&mut read),
        Some(0.7),
    )])
}

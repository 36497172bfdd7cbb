//! `mmsb demo`: the main job. Random deltas against a naive reference.

use mmsb::{DenseDelta, Location, Mmsb, PageId, PageSpec, Payload, Result, Run, SparseDelta};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// State directory (a temporary one when omitted). The demo ends with a
    /// checkpoint, so the directory holds a log and a checkpoint that
    /// `mmsb inspect`, `verify` and `replay` can read.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Put the larger pages on GPU 0 when a device is present (checked
    /// against the same naive reference); without one, say so and run on
    /// the CPU.
    #[arg(long)]
    gpu: bool,
    /// Number of deltas to apply.
    #[arg(long, default_value_t = 200_000)]
    deltas: u64,
    /// Seed of the random stream (the same seed gives the same run).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// With --dir, end without the checkpoint, so that the log keeps the
    /// run's whole history (every delta, for `mmsb export`, `mmsb stats
    /// --pages` and `--provenance`); a checkpoint retires the log before it.
    #[arg(long, requires = "dir")]
    keep_log: bool,
}

/// Page sizes of the demo: odd and even, tiny to 1 MiB.
const SIZES: &[u64] = &[1, 7, 64, 100, 4096, 4099, 65_536, 1 << 20];
/// Indices of the pages that go to GPU 0 with `--gpu`.
const GPU_PAGES: std::ops::Range<usize> = 4..8;
/// The derived page reads these two pages.
const DIGEST_PARENTS: [usize; 2] = [2, 3];

/// The derived page's recompute function: an 8-byte rolling digest of its
/// parents' bytes (deterministic, order-sensitive).
fn digest(ins: &[&[u8]], out: &mut [u8]) {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for p in ins {
        for &b in *p {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    out.copy_from_slice(&h.to_le_bytes()[..out.len()]);
}

pub fn run(args: &DemoArgs) -> Result<()> {
    if let Some(dir) = &args.dir {
        if std::fs::metadata(dir).is_ok_and(|m| !m.is_dir()) {
            return Err(mmsb::Error::Config(format!("{} exists and is not a directory", dir.display())));
        }
        // The demo writes only inside the directory it is given.
        let log = mmsb::internals::files::log_dir(dir);
        if std::fs::symlink_metadata(&log).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(mmsb::Error::Config(format!(
                "{} is a symbolic link; refusing to follow it",
                log.display()
            )));
        }
        // Its pages would join the state there, and its checkpoint would
        // retire that state's older log segments: start only in a new
        // directory or one without a state.
        if std::fs::read_dir(&log).is_ok_and(|mut entries| entries.next().is_some()) {
            return Err(mmsb::Error::Config(format!(
                "{} already holds an MMSB state; the demo runs only in a new or empty directory",
                dir.display()
            )));
        }
    }
    let gpu = if args.gpu {
        match mmsb::gpu::probe() {
            Ok(info) => {
                outln!("GPU 0: {}; pages {GPU_PAGES:?} of the demo live on it", info.name);
                true
            }
            Err(e) => {
                outln!("no usable GPU ({e}); running every page on the CPU");
                false
            }
        }
    } else {
        false
    };
    let mut config = crate::state_dir(&args.dir);
    if args.keep_log {
        // The log alone, as the option says: no checkpoint at the stop
        // either.
        config = config.stop_checkpoint_bytes(u64::MAX);
    }
    let state = Mmsb::start(config)?;
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let mut pages: Vec<(PageId, Vec<u8>)> = Vec::new();
    for (i, &len) in SIZES.iter().enumerate() {
        let mut spec = PageSpec::new(len).named(&format!("demo-{i}"));
        if gpu && GPU_PAGES.contains(&i) {
            spec = spec.on(Location::Gpu(0));
        }
        let id = state.create_page(spec)?;
        pages.push((id, vec![0u8; len as usize]));
    }
    if !state.has_function("digest", 1) {
        state.register_function("digest", 1, digest)?;
    }
    let derived = state.create_page(PageSpec::new(8).named("demo-digest"))?;
    state.declare_derived(derived, "digest", &DIGEST_PARENTS.map(|i| pages[i].0))?;
    // Ctrl-C (or SIGTERM) ends the run between two deltas, so that the
    // state is stopped and its temporary directory removed, not left
    // behind by a killed process.
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupted);
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed));
    let bar = crate::progress::bar(args.deltas, "deltas");

    let mut bytes_touched = 0u64;
    let mut kinds = [0u64; 3];
    let mut apply_time = std::time::Duration::ZERO;
    for done in 0..args.deltas {
        if interrupted.load(Ordering::Relaxed) {
            bar.finish_and_clear();
            let kept = match &args.dir {
                Some(d) => format!("the state in {} holds the {done} deltas applied", d.display()),
                None => "its temporary directory is removed".to_string(),
            };
            state.stop()?;
            // Dropping the state removes a temporary directory.
            drop(state);
            eprintln!("mmsb demo: interrupted after {done} deltas; {kept}");
            std::process::exit(130);
        }
        // Small pages get most of the traffic, as in real state.
        let k = if rng.random_bool(0.9) { rng.random_range(0..6) } else { rng.random_range(0..pages.len()) };
        let (id, reference) = &mut pages[k];
        let (payload, kind) = random_payload(&mut rng, reference.len());
        bytes_touched += payload.touched();
        kinds[kind] += 1;
        naive_apply(reference, &payload);
        let t = Instant::now();
        state.update_page(*id, payload)?;
        apply_time += t.elapsed();
        bar.inc(1);
    }
    bar.finish_and_clear();
    state.flush_gpu()?;

    let mut total_bytes = 0u64;
    for (id, reference) in &pages {
        // query_page copies GPU pages back; CPU pages are read the same way.
        let bytes = state.query_page(*id)?;
        if bytes != reference.as_slice() {
            let at = bytes.iter().zip(reference).position(|(a, b)| a != b).unwrap_or(0);
            return Err(mmsb::Error::Invariant(format!(
                "page {id} differs from the reference at byte {at} after {} deltas",
                args.deltas
            )));
        }
        total_bytes += reference.len() as u64;
    }
    let mut expect = [0u8; 8];
    digest(&DIGEST_PARENTS.map(|i| pages[i].1.as_slice()), &mut expect);
    if state.query_page(derived)? != expect {
        return Err(mmsb::Error::Invariant("the derived page differs from its recompute".into()));
    }
    state.verify()?;
    state.verify_recompute()?;

    let secs = apply_time.as_secs_f64().max(1e-9);
    if args.dir.is_some() {
        outln!("mmsb demo: state in {}", state.dir().display());
    } else {
        outln!(
            "mmsb demo: state in {} (temporary: removed when the demo ends; --dir DIR keeps one)",
            state.dir().display()
        );
    }
    outln!(
        "  pages            {} written ({} bytes, sizes {:?}) and 1 derived from two of them",
        pages.len(),
        total_bytes,
        SIZES
    );
    outln!("  deltas           {} (dense {}, sparse {}, full {})", args.deltas, kinds[0], kinds[1], kinds[2]);
    outln!("  bytes written    {bytes_touched}");
    outln!("  apply time       {:.3} s", secs);
    outln!(
        "  deltas/s         {:.0} (each its own logged update_page, Durability::Flush)",
        args.deltas as f64 / secs
    );
    outln!(
        "  check            every page matches the naive reference; the derived page matches its recompute"
    );
    if gpu {
        outln!("  gpu pages        {} on GPU 0, checked against the same reference", GPU_PAGES.len());
    }
    if args.dir.is_some() && args.keep_log {
        outln!("  log              kept whole (no checkpoint): LSN {}", state.lsn());
    } else if args.dir.is_some() {
        let info = state.checkpoint()?;
        outln!(
            "  checkpoint       {} (LSN {}, {} pages, {} bytes)",
            info.path.display(),
            info.lsn,
            info.pages,
            info.bytes
        );
    }
    outln!("state hash: {:032x}", state.state_hash()?);
    state.stop()?;
    Ok(())
}

/// A random payload for a page of `len` bytes, and its kind index.
fn random_payload(rng: &mut ChaCha8Rng, len: usize) -> (Payload, usize) {
    match rng.random_range(0..10) {
        0..=2 => {
            // Mask density 1/2, 1/4, 1/8 or 3/4, one random word at a time.
            let shape = rng.random_range(0..4);
            let words: Vec<u64> = (0..len.div_ceil(64))
                .map(|_| {
                    let (a, b, c) = (rng.random::<u64>(), rng.random::<u64>(), rng.random::<u64>());
                    match shape {
                        0 => a,
                        1 => a & b,
                        2 => a & b & c,
                        _ => a | b,
                    }
                })
                .collect();
            let mut data = vec![0u8; len];
            rng.fill_bytes(&mut data);
            (Payload::Dense(DenseDelta::from_words(words, data).expect("one word per 64 bytes")), 0)
        }
        3..=8 => {
            let mut runs = Vec::new();
            let mut data = Vec::new();
            let mut at = rng.random_range(0..len) as u64;
            for _ in 0..rng.random_range(1..8) {
                if at >= len as u64 {
                    break;
                }
                let run_len = rng.random_range(1..=(len as u64 - at).min(300));
                runs.push(Run { offset: at, len: run_len });
                data.extend((0..run_len).map(|_| rng.random::<u8>()));
                at += run_len + rng.random_range(0..200);
            }
            (Payload::Sparse(SparseDelta::new(runs, data).expect("runs are sorted and in range")), 1)
        }
        _ => {
            let mut data = vec![0u8; len];
            rng.fill_bytes(&mut data);
            (Payload::Full(data), 2)
        }
    }
}

/// The reference: one byte at a time, no cleverness.
fn naive_apply(page: &mut [u8], payload: &Payload) {
    match payload {
        Payload::Full(b) => page.copy_from_slice(b),
        Payload::Sparse(s) => {
            for (run, bytes) in s.iter() {
                for (i, b) in bytes.iter().enumerate() {
                    page[run.offset as usize + i] = *b;
                }
            }
        }
        Payload::Dense(d) => {
            let words = d.mask_words();
            for (i, b) in page.iter_mut().enumerate() {
                if words[i / 64] >> (i % 64) & 1 == 1 {
                    *b = d.data()[i];
                }
            }
        }
    }
}

//! `mmsb export` streams: its peak memory is that of `mmsb replay` on the
//! same directory (the replayed state and the log reader's buffers) plus a
//! bound that does not grow with the log (one commit's rows, one batch per
//! table being filled, one Parquet row group being encoded:
//! docs/FORMAT.md, "Memory"), checked on a log larger than all of it.

use mmsb::{Config, Mmsb, PageSpec, Payload};
use std::path::Path;
use std::process::Command;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The memory the export may use beyond `mmsb replay`'s, in MiB.
const EXTRA_MIB: u64 = 48;
/// The log: this many full writes of a 1 MiB page (random bytes, which no
/// codec shrinks), so that it is larger than replay's peak plus the bound.
const WRITES: usize = 320;
const PAGE: usize = 1 << 20;

/// Run the `mmsb` command; its peak resident set in bytes.
#[cfg(unix)]
fn peak_rss(args: &[&str], dirs: &[&Path]) -> Result<u64> {
    let child = Command::new(env!("CARGO_BIN_EXE_mmsb"))
        .args(args)
        .args(dirs)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: wait4 writes the status and the struct it is given; the
    // child is ours and not waited for elsewhere (`child` is forgotten).
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::wait4(pid, &mut status, 0, &mut u), pid);
        u
    };
    std::mem::forget(child);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "mmsb {args:?}: status {status}");
    Ok((usage.ru_maxrss as u64) << 10)
}

#[cfg(unix)]
#[test]
fn export_memory_stays_bounded_on_a_log_larger_than_the_bound() -> Result {
    let dir = tempfile::tempdir()?;
    let state_dir = dir.path().join("state");
    {
        let state = Mmsb::start(Config::at(&state_dir))?;
        let p = state.create_page(PageSpec::new(PAGE as u64).named("big"))?;
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut bytes = vec![0u8; PAGE];
        for _ in 0..WRITES {
            for chunk in bytes.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes());
            }
            state.update_page(p, Payload::Full(bytes.clone()))?;
        }
        state.stop()?;
    }
    let log_bytes: u64 = std::fs::read_dir(state_dir.join("log"))?
        .map(|e| e.and_then(|e| e.metadata()).map(|m| m.len()))
        .sum::<std::io::Result<u64>>()?;
    let replay = peak_rss(&["replay"], &[&state_dir])?;
    let out = dir.path().join("out");
    let export = peak_rss(&["export", "--with-bytes"], &[&state_dir, &out])?;
    let allowed = replay + (EXTRA_MIB << 20);
    eprintln!(
        "a {} MiB log: mmsb replay peaks at {} MiB, mmsb export --with-bytes at {} MiB (allowed {} MiB)",
        log_bytes >> 20,
        replay >> 20,
        export >> 20,
        allowed >> 20
    );
    assert!(log_bytes > allowed, "the log ({log_bytes} bytes) must be larger than the bound ({allowed})");
    let deltas_file = std::fs::metadata(out.join("deltas.parquet"))?.len();
    assert!(
        deltas_file > log_bytes - (2 << 20),
        "deltas.parquet holds every byte: {deltas_file} of {log_bytes}"
    );
    assert!(export < allowed, "peak RSS {export} bytes over the bound {allowed}");
    Ok(())
}

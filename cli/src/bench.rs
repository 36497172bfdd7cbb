//! `mmsb bench`: the performance envelope, each figure next to its limit.

use mmsb::{Error, Result};
use mmsb_benches::disk::{self, DiskBudget};
use mmsb_benches::{Budget, Row};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// A fast run (under 3 minutes on 2 cores): fewer sizes, shorter samples.
    #[arg(long)]
    quick: bool,
    /// Write the rows as a JSON array to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw an SVG chart of each figure against its limit to this file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Directory for the disk rows' files (a fresh temporary directory is
    /// made inside it; the engine and its raw-file limit share it, so both
    /// run on the same file system). Default: the system temporary directory.
    #[arg(long, value_name = "DIR")]
    scratch: Option<PathBuf>,
    /// Run only these sections (repeat or comma-separate): apply, append,
    /// durable, checkpoint, replay, export, propagation, gpu, peers.
    /// Default: all but peers.
    #[arg(long, value_name = "SECTION", value_delimiter = ',', value_parser = SECTIONS)]
    only: Vec<String>,
    /// Add the peers section: MMSB beside redb, fjall, SQLite and salsa on
    /// the same work (durable commits, reopen and history, incremental
    /// computation). Needs a binary built with the `peers` feature:
    /// `cargo build --release -p mmsb-cli --features peers`. Without
    /// --quick it loads 1,000,000 commits into each system before a
    /// reopen: long, and over 10 GB of scratch space for redb.
    #[arg(long)]
    peers: bool,
    /// Size of the state in the checkpoint rows, in MiB (default: 32 with
    /// --quick, 256 without).
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    state_mib: Option<u64>,
}

/// Section names accepted by `--only`.
const SECTIONS: [&str; 9] =
    ["apply", "append", "durable", "checkpoint", "replay", "export", "propagation", "gpu", "peers"];

/// Why `--peers` cannot run in this binary, when it cannot.
#[cfg(not(feature = "peers"))]
fn peers_missing() -> Option<Error> {
    Some(Error::Config(
        "this mmsb was built without the peers (redb, fjall, SQLite, salsa); build it with \
         `cargo build --release -p mmsb-cli --features peers`, or run \
         `cargo run --release -p mmsb-cli --features peers -- bench --peers`"
            .into(),
    ))
}

#[cfg(feature = "peers")]
fn peers_missing() -> Option<Error> {
    None
}

/// The peers section.
#[cfg(feature = "peers")]
fn peer_rows(quick: bool, base: &Path) -> Result<Vec<Row>> {
    use mmsb_benches::peers::PeerBudget;
    mmsb_benches::peers::rows(if quick { PeerBudget::QUICK } else { PeerBudget::FULL }, base)
}

#[cfg(not(feature = "peers"))]
fn peer_rows(_quick: bool, _base: &Path) -> Result<Vec<Row>> {
    Err(peers_missing().unwrap_or_else(|| Error::Config("no peers".into())))
}

/// Run one section with a spinner and its wall time on stderr.
fn section<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let spin = crate::progress::spinner(name);
    let t = Instant::now();
    let r = f();
    spin.finish_and_clear();
    eprintln!("  {name}: {:.1} s", t.elapsed().as_secs_f64());
    r
}

pub fn run(args: &BenchArgs) -> Result<()> {
    // The peers run when asked for, by `--peers` or by name in `--only`.
    let peers = args.peers || args.only.iter().any(|o| o == "peers");
    let want = |s: &str| match s {
        "peers" => peers,
        _ => args.only.is_empty() || args.only.iter().any(|o| o == s),
    };
    if let (true, Some(e)) = (peers, peers_missing()) {
        return Err(e);
    }
    let started = Instant::now();
    let budget = if args.quick { Budget::QUICK } else { Budget::FULL };
    let mut disk_budget = if args.quick { DiskBudget::QUICK } else { DiskBudget::FULL };
    if let Some(m) = args.state_mib {
        disk_budget.checkpoint_bytes = usize::try_from(m << 20)
            .map_err(|_| Error::Config(format!("--state-mib {m} exceeds the address space")))?;
    }
    let mut rows: Vec<Row> = Vec::new();
    // Everything that can fail before measuring is checked first: a path
    // that cannot be written fails before minutes of measuring, not after.
    // The results go to a temporary file beside each output, renamed over
    // it at the end, so an earlier file stays whole until then.
    if let (Some(j), Some(p)) = (&args.json, &args.plot) {
        if j == p {
            return Err(Error::Config(format!("--json and --plot name the same file, {}", j.display())));
        }
    }
    let json_file = args.json.as_deref().map(output).transpose()?;
    let plot_file = args.plot.as_deref().map(output).transpose()?;
    let disk = ["append", "durable", "checkpoint", "replay", "export", "peers"].iter().any(|s| want(s));
    let scratch = disk
        .then(|| {
            match &args.scratch {
                Some(d) => tempfile::Builder::new().prefix("mmsb-bench-").tempdir_in(d),
                None => tempfile::Builder::new().prefix("mmsb-bench-").tempdir(),
            }
            .map_err(|e| match &args.scratch {
                Some(d) => Error::Config(format!("--scratch {}: {e}", d.display())),
                None => Error::from(e),
            })
        })
        .transpose()?;
    eprintln!("mmsb bench: CPU ({})", mmsb_benches::cpu_model());
    if want("apply") {
        rows.extend(section("cpu apply and allocation", || {
            Ok(mmsb_benches::cpu::rows(budget, !args.quick))
        })?);
    }
    if let Some(scratch) = &scratch {
        let base = scratch.path();
        eprintln!("  disk rows in {}", base.display());
        if want("append") {
            rows.extend(section("log append", || disk::append_rows(disk_budget, base))?);
        }
        if want("durable") {
            rows.extend(section("durable commit", || disk::durable_rows(disk_budget, base))?);
        }
        if want("checkpoint") {
            rows.extend(section("checkpoint", || disk::checkpoint_rows(disk_budget, base))?);
            rows.extend(section("incremental checkpoints", || {
                disk::increment_rows(disk_budget, base, mmsb::Location::Cpu)
            })?);
            if want("gpu") && mmsb::gpu::device_count().unwrap_or(0) > 0 {
                rows.extend(section("incremental checkpoints of GPU pages", || {
                    disk::increment_rows(disk_budget, base, mmsb::Location::Gpu(0))
                })?);
            }
        }
        if want("replay") {
            rows.extend(section("replay", || disk::replay_rows(disk_budget, base))?);
        }
        if want("export") {
            rows.extend(section("export", || export_rows(args.quick, base))?);
        }
        if want("peers") {
            rows.extend(section("peers", || peer_rows(args.quick, base))?);
        }
    }
    if want("propagation") {
        rows.extend(section("propagation", || mmsb_benches::prop::rows(budget))?);
    }
    let gpu = if want("gpu") {
        section("gpu", || {
            Ok(mmsb_benches::gpu::rows(args.quick).map(|mut rows| {
                // Derived pages by a kernel against a CPU function: the
                // kernel rows' device, or a line saying why not.
                match mmsb_benches::gpu::derive_rows(args.quick) {
                    Ok(more) => rows.extend(more),
                    Err(why) => eprintln!("  derived GPU pages: no rows ({why})"),
                }
                rows
            }))
        })?
    } else {
        Err("not selected by --only".to_string())
    };
    outln!("{}", mmsb_benches::table(&rows_with(&rows, gpu.as_deref().unwrap_or(&[]))));
    match &gpu {
        Ok(g) => {
            outln!("GPU rows: {} measured on {}", g.len(), g.first().map_or("-", |r| r.device.as_str()));
            rows.extend(g.iter().cloned());
        }
        Err(why) => outln!("GPU rows: absent ({why})."),
    }
    outln!("{}", mmsb_benches::target_summary(&rows));
    eprintln!("mmsb bench: {:.0} s in all", started.elapsed().as_secs_f64());
    if let (Some(path), Some(f)) = (&args.json, json_file) {
        let json = serde_json::to_string_pretty(&rows).map_err(|e| Error::Serialization(e.to_string()))?;
        finish(f, path, json.as_bytes())?;
    }
    if let (Some(path), Some(f)) = (&args.plot, plot_file) {
        let svg = mmsb_benches::plot::svg(&rows, &format!("mmsb bench on {}", mmsb_benches::cpu_model()));
        finish(f, path, svg.as_bytes())?;
    }
    Ok(())
}

/// A temporary file in the directory of `path`, for its contents: the
/// directory is checked to be writable now, and `path` is not touched
/// until [`finish`].
fn output(path: &Path) -> Result<tempfile::NamedTempFile> {
    if path.is_dir() {
        return Err(Error::Config(format!("{} is a directory", path.display())));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    tempfile::Builder::new().prefix(".mmsb-bench-").tempfile_in(dir).map_err(|e| Error::from(e).in_file(path))
}

/// Write `bytes` to the temporary file and rename it to `path`.
fn finish(mut f: tempfile::NamedTempFile, path: &Path, bytes: &[u8]) -> Result<()> {
    f.write_all(bytes).and_then(|()| f.flush()).map_err(|e| Error::from(e).in_file(path))?;
    // Readable as a file written plainly would be (a temporary file is
    // the owner's alone).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(|e| Error::from(e).in_file(path))?;
    }
    f.persist(path).map_err(|e| Error::from(e.error).in_file(path))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// `mmsb export` of the demo's log (200,000 deltas; 50,000 with
/// `--quick`), against reading the same segment files: the export decodes
/// and re-validates every commit (the replay), turns it into rows and
/// writes the Parquet files. The target is a ratio: at least 0.5 of the
/// speed at which the segments can merely be read.
fn export_rows(quick: bool, base: &Path) -> Result<Vec<Row>> {
    let deltas: u64 = if quick { 50_000 } else { 200_000 };
    let dir = base.join("export-demo");
    // The demo itself, as the command runs it, keeping its whole log.
    let exe = std::env::current_exe()?;
    let made = std::process::Command::new(exe)
        .args(["demo", "--keep-log", "--deltas", &deltas.to_string(), "--dir"])
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .status()?;
    if !made.success() {
        return Err(Error::Invariant(format!("mmsb demo for the export rows: {made}")));
    }
    let segments: Vec<PathBuf> = std::fs::read_dir(mmsb::internals::files::log_dir(&dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    let (mut read, mut plain, mut bytes_too) = (Vec::new(), Vec::new(), Vec::new());
    let mut log_bytes = 0u64;
    let mut rows = 0u64;
    for round in 0..3 {
        let t = Instant::now();
        log_bytes = 0;
        for p in &segments {
            log_bytes += std::hint::black_box(std::fs::read(p)?).len() as u64;
        }
        read.push(t.elapsed().as_secs_f64());
        for (with_bytes, times) in [(false, &mut plain), (true, &mut bytes_too)] {
            let out = base.join(format!("export-out-{round}-{with_bytes}"));
            let opts = mmsb_arrow::ExportOptions {
                history: mmsb_arrow::Options { with_bytes, ..Default::default() },
                ..Default::default()
            };
            let t = Instant::now();
            let s = mmsb_arrow::export(&dir, &out, &opts)?;
            times.push(t.elapsed().as_secs_f64());
            rows = s.rows_of(mmsb_arrow::Table::Deltas);
            std::fs::remove_dir_all(&out)?;
        }
    }
    std::fs::remove_dir_all(&dir)?;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let n = rows as f64;
    let limit = n / median(&mut read);
    let what = format!("read of the same {} MB of segments", log_bytes >> 20);
    Ok(vec![
        Row::throughput(
            "export_demo_log_parquet",
            n / median(&mut plain),
            "deltas/s",
            &what,
            limit,
            Some(0.5),
        ),
        Row::throughput(
            "export_demo_log_parquet_with_bytes",
            n / median(&mut bytes_too),
            "deltas/s",
            &what,
            limit,
            None,
        ),
    ])
}

fn rows_with(cpu: &[Row], gpu: &[Row]) -> Vec<Row> {
    cpu.iter().chain(gpu).cloned().collect()
}

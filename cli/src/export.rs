//! `mmsb export DIR OUT`: a state directory's pages and history as
//! Parquet or Arrow IPC files (the `mmsb-arrow` crate; schemas in
//! docs/FORMAT.md). It reads DIR as the other offline commands do, through
//! the confined reader, and treats damage exactly as `mmsb replay` does.

use crate::progress;
use mmsb::history::replay::Until;
use mmsb::{Error, Lsn, Result};
use mmsb_arrow::{ExportOptions, Format, Options, Table};
use std::path::PathBuf;

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default)]
pub enum FileFormat {
    /// Apache Parquet, one `<table>.parquet` per table (Snappy).
    #[default]
    Parquet,
    /// Arrow IPC files (Feather v2), one `<table>.arrow` per table.
    Arrow,
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The state directory.
    dir: PathBuf,
    /// The directory to create: one file per table (pages, commits, deltas,
    /// graph_nodes, graph_edges) and manifest.json.
    out: PathBuf,
    /// The files' format.
    #[arg(long, value_enum, default_value_t = FileFormat::Parquet)]
    format: FileFormat,
    /// End the history at the last commit at or before this LSN (as
    /// `mmsb replay --to`); the pages table is the state there.
    #[arg(long, conflicts_with = "to_time")]
    to: Option<u64>,
    /// End the history at the last commit boundary at which at most this
    /// many changes (logical time) had been accepted.
    #[arg(long = "to-time", value_name = "T")]
    to_time: Option<u64>,
    /// Put the bytes each delta wrote in the deltas table (its `bytes`
    /// column; null without this flag).
    #[arg(long)]
    with_bytes: bool,
    /// Replace OUT when it exists and is an earlier export or an empty
    /// directory (anything else is refused even so).
    #[arg(long)]
    force: bool,
}

pub fn run(args: &ExportArgs) -> Result<()> {
    let v = crate::offline::open(&args.dir)?;
    // Nothing is written inside the state directory.
    let root = std::fs::canonicalize(&args.dir).map_err(|e| Error::from(e).in_file(&args.dir))?;
    let out_abs = match args.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => {
            std::fs::canonicalize(p).ok().map(|p| p.join(args.out.file_name().unwrap_or_default()))
        }
        _ => std::env::current_dir().ok().map(|d| d.join(&args.out)),
    };
    if out_abs.as_ref().is_some_and(|o| o.starts_with(&root)) {
        return Err(Error::Config(format!(
            "{} is inside the state directory {}; the export writes nothing there",
            args.out.display(),
            args.dir.display()
        )));
    }
    let until = match (args.to_time, args.to) {
        (Some(t), _) => Until::Time(t),
        (None, Some(l)) => Until::Lsn(Lsn(l)),
        (None, None) => Until::End,
    };
    let opts = ExportOptions {
        history: Options { until, with_bytes: args.with_bytes, ..Options::default() },
        format: match args.format {
            FileFormat::Parquet => Format::Parquet,
            FileFormat::Arrow => Format::Arrow,
        },
        force: args.force,
    };
    let spin = progress::spinner("exporting");
    let s = mmsb_arrow::export_with(&v, v.root(), &args.out, &opts);
    spin.finish_and_clear();
    let s = s?;
    // The notes `mmsb replay` gives for the same point, worded the same.
    crate::offline::end_notes(until, s.lsn.0, s.timestamp, s.torn.as_ref());
    outln!(
        "exported {} to {} ({}): history after LSN {} to LSN {} (logical time {})",
        args.dir.display(),
        args.out.display(),
        opts.format.extension(),
        s.from_lsn,
        s.lsn,
        s.timestamp
    );
    for t in Table::ALL {
        outln!("  {:<12} {:>10} rows", t.name(), s.rows_of(t));
    }
    outln!("state hash: {:032x}", s.state_hash);
    Ok(())
}

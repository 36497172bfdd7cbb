//! `mmsb stats DIR`: counters of a state directory, read without changing it
//! (through the same confined reader as the other offline commands).
use clap::Args;
use mmsb::Limits;
use std::path::PathBuf;

/// Arguments of `mmsb stats`.
#[derive(Args, Debug)]
pub struct StatsArgs {
    /// The state directory.
    pub dir: PathBuf,
    /// Print the provenance of this page's latest version instead: the
    /// derived deltas back to the user writes they rest on.
    #[arg(long, value_name = "PAGE", conflicts_with = "pages")]
    pub provenance: Option<u64>,
    /// Print the writes per page instead: for each page that received a
    /// delta in the history on disk (the log after the oldest checkpoint),
    /// its deltas, how many were derived, and the bytes they wrote.
    #[arg(long)]
    pub pages: bool,
}

/// Print the report.
///
/// # Errors
/// When `dir` is not a state directory (missing, or no `log/` inside), or
/// as the report's reading fails.
pub fn run(args: &StatsArgs) -> mmsb::Result<()> {
    let v = crate::offline::open(&args.dir)?;
    let limits = Limits::default();
    if args.pages {
        for w in mmsb::stats::page_writes_with(&v, v.root(), &limits)? {
            outln!("{w}");
        }
        return Ok(());
    }
    match args.provenance {
        Some(p) => {
            out!("{}", mmsb::history::provenance::chain_with(&v, v.root(), mmsb::PageId(p), None, &limits)?)
        }
        None => out!("{}", mmsb::stats::dir_stats_with(&v, v.root(), &limits)?),
    }
    Ok(())
}

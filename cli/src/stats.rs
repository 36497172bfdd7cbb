//! `mmsb stats DIR`: counters of a state directory, read without changing it.
use clap::Args;
use std::path::PathBuf;

/// Arguments of `mmsb stats`.
#[derive(Args, Debug)]
pub struct StatsArgs {
    /// The state directory.
    pub dir: PathBuf,
    /// Print the provenance of this page's latest version instead: the
    /// derived deltas back to the user writes they rest on.
    #[arg(long, value_name = "PAGE")]
    pub provenance: Option<u64>,
}

/// Print the report.
pub fn run(args: &StatsArgs) -> mmsb::Result<()> {
    match args.provenance {
        Some(p) => print!("{}", mmsb::provenance::chain(&args.dir, mmsb::PageId(p))?),
        None => print!("{}", mmsb::stats::dir_stats(&args.dir)?),
    }
    Ok(())
}

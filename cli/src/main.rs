//! `mmsb`: the MMSB command line.
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

mod bench;
mod demo;
mod stats;

#[derive(Parser, Debug)]
#[command(name = "mmsb", version, about = "MMSB: a deterministic, versioned in-memory state fabric")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create pages, apply a stream of random deltas, check every page
    /// against a naive reference and print a summary.
    Demo(demo::DemoArgs),
    /// Measure the performance envelope: each figure as a ratio to a limit
    /// measured in the same run.
    Bench(bench::BenchArgs),
    /// Summarise a state directory (pages, graph, log, checkpoints), or
    /// with --provenance PAGE, how that page's value was computed.
    Stats(stats::StatsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Stats(args) => stats::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mmsb: error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}

/// Where a subcommand keeps its state: the given directory, or a fresh
/// temporary one.
fn state_dir(dir: &Option<PathBuf>) -> mmsb::Config {
    match dir {
        Some(d) => mmsb::Config::at(d),
        None => mmsb::Config::temporary(),
    }
}

//! `mmsb`: the MMSB command line.
//!
//! | command | what |
//! |---|---|
//! | `demo` | random deltas against a naive reference; with `--dir`, leaves a log and a checkpoint |
//! | `inspect DIR` | records by type, sizes, LSN range, checkpoints |
//! | `verify DIR` | every CRC and invariant; exit 1 naming the file and offset of the first problem |
//! | `replay DIR` | the state at the end of the log, an LSN or a logical time; its hash on the last line |
//! | `bench` | the performance envelope, each figure next to a limit measured in the same run |
//!
//! The offline commands (`inspect`, `verify`, `replay`) only read, and never
//! follow a path out of the directory they are given.
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

mod bench;
mod confined;
mod demo;
mod offline;
mod progress;
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
    /// Describe a state directory: records by type, sizes, LSN range,
    /// checkpoints, torn tails.
    Inspect(offline::InspectArgs),
    /// Check every CRC and invariant of a state directory. Exit status 0
    /// when sound; 1 with the file and offset of the first problem.
    Verify(offline::VerifyArgs),
    /// Replay a state directory (newest usable checkpoint, then the log)
    /// and print the state hash on the last line.
    Replay(offline::ReplayArgs),
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
        Command::Inspect(args) => offline::inspect(&args),
        Command::Verify(args) => match offline::verify(&args) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
        Command::Replay(args) => offline::replay(&args),
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

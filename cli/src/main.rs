//! `mmsb`: the MMSB command line.
//!
//! | command | what |
//! |---|---|
//! | `demo` | random deltas against a naive reference; with `--dir`, leaves a log and a checkpoint |
//! | `inspect DIR` | records by type, sizes, LSN range, checkpoints |
//! | `verify DIR` | every CRC and invariant; exit 1 naming the file and offset of the first problem |
//! | `replay DIR` | the state at the end of the log, an LSN or a logical time; its hash on the last line |
//! | `stats DIR` | pages, graph, log and checkpoints in brief; `--provenance PAGE`: how that page's value was computed |
//! | `serve DIR` | the viewer and a read-only HTTP API over a state directory (docs/SERVE.md) |
//! | `export DIR OUT` | pages, commits, deltas and the graph as Parquet or Arrow IPC files (docs/FORMAT.md) |
//! | `bench` | the performance envelope, each figure next to a limit measured in the same run |
//! | `follow DIR` | a read-only replica of a state replicated through NATS JetStream (docs/DISTRIBUTED.md) |
//! | `lead DIR` | take a replicated state's lease and make random writes, printing each acknowledged commit |
//!
//! The offline commands (`inspect`, `verify`, `replay`, `stats`, `export`) only read, and never
//! follow a path out of the directory they are given.
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

/// `print!` to standard output that never panics: once the reader of a
/// pipe has gone (`mmsb inspect DIR | head`), the rest of the output is
/// dropped and the command runs to its end (its exit status and clean-up
/// unchanged); any other write error makes the exit status 1.
macro_rules! out {
    ($($t:tt)*) => {
        $crate::emit(format_args!($($t)*))
    };
}

/// `println!` that behaves as [`out!`].
macro_rules! outln {
    () => {
        $crate::emit(format_args!("\n"))
    };
    ($($t:tt)*) => {
        $crate::emit(format_args!("{}\n", format_args!($($t)*)))
    };
}

mod bench;
mod confined;
mod demo;
mod export;
mod offline;
mod progress;
mod replica;
mod serve;
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
    /// checkpoints, torn tails. It describes damage too (exit 0 whenever
    /// the directory could be read); `verify` judges it.
    Inspect(offline::InspectArgs),
    /// Check every CRC and invariant of a state directory. Exit status 0
    /// when sound; 1 with the file and offset of the first problem.
    Verify(offline::VerifyArgs),
    /// Replay a state directory (newest usable checkpoint, then the log)
    /// and print the state hash on the last line.
    Replay(offline::ReplayArgs),
    /// Write a state directory's pages and whole history (commits, deltas,
    /// the dependency graph) as Parquet or Arrow IPC files, one per table,
    /// for SQL engines and dataframe tools (schemas in docs/FORMAT.md).
    /// Damage stops it exactly where it stops `replay`.
    Export(export::ExportArgs),
    /// Measure the performance envelope: each figure as a ratio to a limit
    /// measured in the same run.
    Bench(bench::BenchArgs),
    /// Summarise a state directory (pages, graph, log, checkpoints), or
    /// with --provenance PAGE, how that page's value was computed.
    Stats(stats::StatsArgs),
    /// Serve the viewer and a read-only HTTP API over a state directory:
    /// travel through its history in a browser, watch new commits live
    /// (docs/SERVE.md).
    Serve(serve::ServeArgs),
    /// Follow a state replicated through NATS JetStream into a local
    /// read-only directory; the last line is its LSN and state hash
    /// (docs/DISTRIBUTED.md).
    Follow(replica::FollowArgs),
    /// Lead a replicated state: take its lease, catch up, then make random
    /// writes, printing each commit once the stream's quorum has it.
    Lead(replica::LeadArgs),
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
        Command::Serve(args) => serve::run(&args),
        Command::Export(args) => export::run(&args),
        Command::Follow(args) => replica::follow_cmd(&args).map_err(into_mmsb),
        Command::Lead(args) => replica::lead_cmd(&args).map_err(into_mmsb),
    };
    match result {
        Ok(()) if STDOUT_FAILED.load(Ordering::Relaxed) => ExitCode::FAILURE,
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut shown = e.to_string();
            eprintln!("mmsb: error: {shown}");
            // Causes the message does not already quote.
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                let cause = s.to_string();
                if !shown.contains(&cause) {
                    eprintln!("  caused by: {cause}");
                    shown.push_str(&cause);
                }
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}

/// A replication error as the command's error type.
pub(crate) fn into_mmsb(e: mmsb_replica::Error) -> mmsb::Error {
    match e {
        mmsb_replica::Error::State(e) => e,
        other => mmsb::Error::Replication(other.to_string()),
    }
}

/// Set once standard output can take no more (see [`out!`]).
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
/// Set when a write to standard output failed for another reason than a
/// closed pipe.
static STDOUT_FAILED: AtomicBool = AtomicBool::new(false);

/// Write to standard output; see [`out!`].
pub(crate) fn emit(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            STDOUT_FAILED.store(true, Ordering::Relaxed);
            eprintln!("mmsb: error: writing to standard output: {e}");
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

//! GPU benchmarks against the device-to-device copy of the same run.
//!
//!     cargo run --release -p mmsb-benches --example gpu_bench -- [--mib 256] [--iters 20] [--batch 100000] [--chunk 1024]
//!
//! Prints a table and one `BENCH name gbps ratio` line per figure. Without a
//! GPU it prints `SKIPPED: no CUDA device (...)` and exits successfully.
use mmsb_benches::gpu_harness::{run, BenchConfig};

fn main() {
    let mut cfg = BenchConfig::default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).and_then(|v| v.parse::<u64>().ok());
        match (args[i].as_str(), value) {
            ("--mib", Some(v)) => cfg.large = v << 20,
            ("--iters", Some(v)) => cfg.iters = v.clamp(1, 10_000) as u32,
            ("--batch", Some(v)) => cfg.batch = v,
            ("--batch-page", Some(v)) => cfg.batch_page = v,
            ("--chunk", Some(v)) => cfg.run_chunk = v,
            (other, _) => {
                eprintln!("usage: gpu_bench [--mib N] [--iters N] [--batch N] [--batch-page BYTES] [--chunk BYTES] (bad argument {other:?})");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    match run(&cfg) {
        Ok(report) => {
            print!("{}", report.table());
            for r in &report.rows {
                let ratio = r.ratio.map_or_else(|| "-".to_string(), |x| format!("{x:.3}"));
                println!("BENCH {} {:.1} {} {}", r.name, r.gbps, ratio, r.note.replace(' ', "_"));
            }
        }
        Err(mmsb::Error::NoDevice { reason }) => println!("SKIPPED: no CUDA device ({reason})"),
        Err(e) => {
            eprintln!("gpu_bench failed: {e}");
            std::process::exit(1);
        }
    }
}

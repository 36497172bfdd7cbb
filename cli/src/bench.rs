//! `mmsb bench`: the performance envelope, each figure next to its limit.

use mmsb::{Error, Result};
use mmsb_benches::{Budget, Row};
use std::path::PathBuf;

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
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let budget = if args.quick { Budget::QUICK } else { Budget::FULL };
    let mut rows: Vec<Row> = Vec::new();
    eprintln!("mmsb bench: CPU ({})", mmsb_benches::cpu_model());
    rows.extend(mmsb_benches::cpu::rows(budget, !args.quick));
    println!("{}", mmsb_benches::table(&rows));
    println!("GPU rows: not measured by this command; scripts/gpu-check.sh measures them on a CUDA device.");
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&rows).map_err(|e| Error::Serialization(e.to_string()))?;
        std::fs::write(path, json).map_err(|e| Error::from(e).in_file(path))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        let svg = mmsb_benches::plot::svg(&rows, &format!("mmsb bench on {}", mmsb_benches::cpu_model()));
        std::fs::write(path, svg).map_err(|e| Error::from(e).in_file(path))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

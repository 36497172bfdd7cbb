//! The viewer's replay, natively: the same `Session` code the browser runs
//! as WebAssembly, over the same files, timed the same way (median of 5
//! replays to the LSN before the log's last: the end itself comes with the
//! timeline). docs/BENCHMARKS.md puts the two side by side.
//!
//! ```sh
//! cargo run --release -p mmsb-web --example replay_time -- STATE_DIR
//! ```

use mmsb_web::Session;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: replay_time STATE_DIR")?;
    let mut s = Session::new();
    for e in std::fs::read_dir(std::path::Path::new(&dir).join("log"))? {
        let e = e?;
        let name = e.file_name().into_string().map_err(|_| "a file name that is not UTF-8")?;
        if name.starts_with("wal-") || name.starts_with("ckpt-") {
            s.set_file(&name, std::fs::read(e.path())?);
        }
    }
    let t = Instant::now();
    let timeline = s.timeline()?;
    let timeline_ms = t.elapsed().as_secs_f64() * 1e3;
    let commits = timeline.commits.len();
    let to = timeline.commits.last().map_or(0, |c| c.lsn.saturating_sub(1));
    let mut ms = Vec::new();
    let mut hash = String::new();
    for _ in 0..5 {
        let t = Instant::now();
        hash = s.goto_lsn(Some(to))?.hash;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    println!(
        "commits {commits}; timeline {timeline_ms:.2} ms; replay to LSN {to} (median of 5) {:.2} ms",
        ms[2]
    );
    println!("state hash: {hash}");
    Ok(())
}

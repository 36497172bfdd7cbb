//! A writer process for tests that need a second process on a state
//! directory (the single-writer lock, across processes).
//!
//! ```text
//! writer DIR
//! ```
//! Opens `DIR` (`Config::at`, fsync every commit) and prints `open`, or
//! prints `in-use` (exit 3) when another handle holds the directory, or
//! `error <message>` (exit 2). Then reads commands from stdin, one a line:
//! `w N` writes the byte N over a page of 8 bytes (created first) and
//! prints `ack` or `error <message>`; `q` stops the state, prints
//! `stopped` and exits 0. End of input stops too.

use mmsb::{Config, Durability, Error, Mmsb, PageSpec, Payload};
use std::io::{BufRead, Write};

fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: writer DIR");
        std::process::exit(2);
    };
    let mut out = std::io::stdout();
    let state = match Mmsb::start(Config::at(&dir).durability(Durability::SYNC)) {
        Ok(s) => s,
        Err(Error::InUse { .. }) => {
            let _ = writeln!(out, "in-use");
            std::process::exit(3);
        }
        Err(e) => {
            let _ = writeln!(out, "error {e}");
            std::process::exit(2);
        }
    };
    let page = match state.page_named("writer") {
        Some(p) => p,
        None => match state.create_page(PageSpec::new(8).named("writer")) {
            Ok(p) => p,
            Err(e) => {
                let _ = writeln!(out, "error {e}");
                std::process::exit(2);
            }
        },
    };
    let _ = writeln!(out, "open");
    let _ = out.flush();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let mut it = line.split(' ');
        match (it.next(), it.next().and_then(|n| n.parse::<u8>().ok())) {
            (Some("w"), Some(b)) => match state.update_page(page, Payload::Full(vec![b; 8])) {
                Ok(_) => {
                    let _ = writeln!(out, "ack");
                }
                Err(e) => {
                    let _ = writeln!(out, "error {e}");
                }
            },
            (Some("q"), _) => break,
            _ => {
                let _ = writeln!(out, "error bad command {line:?}");
            }
        }
        let _ = out.flush();
    }
    match state.stop() {
        Ok(()) => {
            let _ = writeln!(out, "stopped");
        }
        Err(e) => {
            let _ = writeln!(out, "error {e}");
        }
    }
}

//! Hands the peers' versions, as Cargo.lock pins them, to the `--peers`
//! rows (`MMSB_PEER_VERSIONS`: `name=version` pairs separated by `;`).

use std::path::Path;

/// The packages whose versions the rows name.
const PEERS: [&str; 4] = ["redb", "fjall", "salsa", "rusqlite"];

fn main() {
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    println!("cargo::rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(&lock).unwrap_or_default();
    let mut found = Vec::new();
    let mut name: Option<&str> = None;
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"'));
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.take()) {
            if PEERS.contains(&n) {
                found.push(format!("{n}={}", v.trim_matches('"')));
            }
        }
    }
    println!("cargo::rustc-env=MMSB_PEER_VERSIONS={}", found.join(";"));
}

//! Every file name and magic number of a state directory, in one place.
//!
//! ```text
//! <state dir>/
//!   log/                    the log directory (log_dir)
//!     LOCK                  held by the one writing handle (LOCK_NAME)
//!     wal-<16 hex>.log      a log segment (segment_name; magic SEGMENT_MAGIC)
//!     wal-<16 hex>.tmp      a segment being created (segment_temp_name)
//!     ckpt-<20 digits>.ckpt a checkpoint (checkpoint_name; magics CKPT_MAGIC, CKPT_END)
//!     *.dropped             a file recovery set aside (SET_ASIDE_SUFFIX)
//! ```
//!
//! The layouts inside the files are in docs/FORMAT.md.

/// Magic of a log segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"MMSBWAL\0";
/// Magic at the start of a checkpoint.
pub const CKPT_MAGIC: [u8; 8] = *b"MMSBCKPT";
/// Magic of the checkpoint trailer.
pub const CKPT_END: [u8; 8] = *b"CKPTEND\0";
/// The file in a log directory that [`Vfs::lock_dir`](super::vfs::Vfs::lock_dir) locks.
pub const LOCK_NAME: &str = "LOCK";

/// Suffix of a log file that tolerant recovery dropped whole and set aside.
pub const SET_ASIDE_SUFFIX: &str = ".dropped";

/// Segment file name for sequence number `seq`.
pub fn segment_name(seq: u64) -> String {
    format!("wal-{seq:016x}.log")
}

/// Name of the temporary file segment `seq` is written as before it is
/// renamed to [`segment_name`] (removed at start when a crash left it).
pub fn segment_temp_name(seq: u64) -> String {
    format!("wal-{seq:016x}.tmp")
}

/// Sequence number of a segment file name.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// An error for a file of the log directory that carries a prefix and
/// suffix of the engine's files (`wal-`/`.log`, `ckpt-`/`.ckpt`) but not the
/// rest of such a name: it may be data the engine would otherwise pass
/// over without a word.
pub(crate) fn check_names(dir: &std::path::Path, names: &[String]) -> crate::Result<()> {
    for n in names {
        let (looks, parses, want) = if n.starts_with("wal-") && n.ends_with(".log") {
            (true, parse_segment_name(n).is_some(), "wal-<16 hex digits>.log")
        } else if n.starts_with("ckpt-") && n.ends_with(".ckpt") {
            (true, parse_checkpoint_name(n).is_some(), "ckpt-<20 digits>.ckpt")
        } else {
            (false, true, "")
        };
        if looks && !parses {
            return Err(crate::Error::Corrupt {
                file: Some(dir.join(n)),
                offset: None,
                reason: format!(
                    "named like a log file but not as one ({want}); the engine would not read it: \
                     rename it or move it out of the log directory"
                ),
            });
        }
    }
    Ok(())
}

/// The log directory of a state directory.
pub fn log_dir(state_dir: &std::path::Path) -> std::path::PathBuf {
    state_dir.join("log")
}

/// File name of the checkpoint at `lsn`.
pub fn checkpoint_name(lsn: u64) -> String {
    format!("ckpt-{lsn:020}.ckpt")
}

/// LSN of a checkpoint file name.
pub fn parse_checkpoint_name(name: &str) -> Option<u64> {
    let d = name.strip_prefix("ckpt-")?.strip_suffix(".ckpt")?;
    if d.len() != 20 {
        return None;
    }
    d.parse().ok()
}

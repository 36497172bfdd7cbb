//! What the log's reader reports and the writer resumes from: how a scan
//! treats a bad tail ([`RecoveryMode`]), what it cut or dropped
//! ([`TornTail`], [`Dropped`]), and where the writer continues after a
//! recovery ([`Resume`]). Recovery (above the log) fills these in.

use shared_types::PageId;
use std::path::PathBuf;

/// What recovery does about corruption that is not a torn tail.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Fail with [`crate::Error::Corrupt`] naming the file and offset.
    #[default]
    Strict,
    /// Keep the longest valid prefix and report what was dropped.
    Tolerant,
}

/// A torn tail that recovery cut.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The segment.
    pub file: PathBuf,
    /// Offset of the first byte cut.
    pub offset: u64,
    /// Bytes cut.
    pub bytes: u64,
}

/// Data that tolerant recovery dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropped {
    /// The file.
    pub file: PathBuf,
    /// Offset of the first byte dropped.
    pub offset: u64,
    /// Bytes dropped.
    pub bytes: u64,
    /// Why.
    pub reason: String,
    /// Where [`crate::Mmsb::start`] moved the file when all of it was
    /// dropped (`<name>.dropped` beside it: kept for inspection, never read
    /// again), so that later starts, strict ones included, read the log as
    /// this one kept it.
    pub set_aside: Option<PathBuf>,
}

/// Where the writer continues after recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resume {
    /// Sequence number of the segment to start.
    pub seq: u64,
    /// Its generation (one above every generation on disk, so that anything
    /// after the recovered end of an older segment is never replayed).
    pub generation: u64,
    /// LSN of the next record.
    pub next_lsn: u64,
    /// The segment to continue instead, when recovery found everything
    /// intact and the log ends in a segment that holds a header and no
    /// record, starting at `next_lsn` (a clean stop left it, see
    /// [`LogWriter::close`](super::LogWriter::close)): appending to it is the same log.
    pub continued: Option<Continued>,
    /// The chain of the checkpoint recovery started from: the next
    /// checkpoint may be an increment on it.
    pub chain: Option<crate::storage::checkpoint::Chain>,
    /// Pages the log changed after that checkpoint (created, or at another
    /// epoch), ascending: the next increment holds them whole.
    pub changed: Vec<PageId>,
}

/// A segment the writer appends to after recovery ([`Resume::continued`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Continued {
    /// The file.
    pub path: PathBuf,
    /// Its sequence number.
    pub seq: u64,
    /// Its generation.
    pub generation: u64,
}

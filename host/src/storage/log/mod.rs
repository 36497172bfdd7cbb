//! The write-ahead log: every accepted [`crate::Change`] is appended
//! (and made as durable as [`Durability`] asks) before it becomes visible.
//!
//! | piece | module |
//! |---|---|
//! | record framing, batching, group commit, segments, poisoning | [`writer`] |
//! | segment parsing, torn-tail and corruption detection | [`reader`] |
//! | checkpoint + log → state, [`RecoveryReport`](crate::RecoveryReport) | [`recovery`](super::recovery) |
//!
//! The log lives in `<state dir>/log/` as segment files `wal-<seq>.log`
//! (16 hex digits) beside checkpoint files `ckpt-<lsn>.ckpt`. Formats are in
//! `docs/FORMAT.md`.
//!
//! # Record types and how to add one
//!
//! A record's type is one byte ([`RecordType`]). Codes `0x01..=0x7F` are
//! *required*: a reader that does not know one stops with an error, because
//! skipping it would replay a different state. Codes `0x80..=0xFF` are
//! *optional*: readers that do not know them skip them (use these for
//! annotations that do not change state). Code 0 is never valid, so zeroed
//! disk space never parses as a record. To add a type: pick the next free
//! code in the right range, add a variant here, encode it in
//! [`writer`], decode it in [`reader::decode_record`], bump nothing else —
//! older logs stay readable, and older readers fail cleanly on required
//! codes they do not know. `0x10..=0x1F` are reserved for dependency-graph
//! changes ([`RecordType::Graph`]).

pub mod reader;
mod scan;
pub mod writer;

use crate::delta::change::Change;
pub use scan::{Continued, Dropped, RecoveryMode, Resume, TornTail};
use shared_types::PageId;
pub use writer::LogStats;
// The engine writes through it; the storage layer alone only defines it.
#[cfg_attr(not(feature = "engine"), allow(unused_imports))]
pub use writer::LogWriter;

/// Current segment format version.
pub const SEGMENT_VERSION: u32 = 1;
/// Size of a segment header.
pub const SEGMENT_HEAD_LEN: usize = 48;
/// Size of a record header (`len u32, type u8, flags u8, reserved u16, lsn u64`).
pub const RECORD_HEAD_LEN: usize = 16;
/// Size of a record trailer (CRC32C).
pub const RECORD_TAIL_LEN: usize = 4;
/// Default segment size at which the writer starts a new segment.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// The type byte of a log record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
#[repr(u8)]
pub enum RecordType {
    /// A page was created: id, length, location, metadata.
    CreatePage = 0x01,
    /// A page was deleted: id.
    DeletePage = 0x02,
    /// A delta was applied: the delta body.
    Delta = 0x03,
    /// The next `count` records form one atomic batch.
    BatchBegin = 0x04,
    /// End of a batch of `count` records; the batch is committed.
    BatchEnd = 0x05,
    /// Deltas of one propagation, compactly ([`crate::storage::codec::derived`]).
    Derived = 0x06,
    /// Propagation work queued when a checkpoint was taken (optional:
    /// it changes no page; a reader that skips it recovers the same pages
    /// and loses only that queued work).
    Due = 0x80,
    /// A propagation ran and changed no page (optional, empty): what the
    /// writes before it queued is done.
    Settled = 0x81,
    /// Pages left stale by a control parent's write and not written since,
    /// when a checkpoint was taken (optional: it changes no page; a reader
    /// that skips it recovers them as fresh).
    Stale = 0x82,
    /// A dependency-graph change (edge added or removed, page declared
    /// derived): a postcard-encoded [`GraphRecord`].
    Graph = 0x10,
}

impl RecordType {
    /// The type for a code, if known.
    pub fn from_code(c: u8) -> Option<RecordType> {
        Some(match c {
            0x01 => RecordType::CreatePage,
            0x02 => RecordType::DeletePage,
            0x03 => RecordType::Delta,
            0x04 => RecordType::BatchBegin,
            0x05 => RecordType::BatchEnd,
            0x06 => RecordType::Derived,
            0x80 => RecordType::Due,
            0x81 => RecordType::Settled,
            0x82 => RecordType::Stale,
            0x10 => RecordType::Graph,
            _ => return None,
        })
    }

    /// Whether readers that do not know `code` may skip it.
    pub fn is_optional(code: u8) -> bool {
        code >= 0x80
    }

    /// A short name for reports.
    pub fn name(code: u8) -> &'static str {
        match RecordType::from_code(code) {
            Some(RecordType::CreatePage) => "create_page",
            Some(RecordType::DeletePage) => "delete_page",
            Some(RecordType::Delta) => "delta",
            Some(RecordType::BatchBegin) => "batch_begin",
            Some(RecordType::BatchEnd) => "batch_end",
            Some(RecordType::Derived) => "derived",
            Some(RecordType::Due) => "due",
            Some(RecordType::Settled) => "settled",
            Some(RecordType::Stale) => "stale",
            Some(RecordType::Graph) => "graph",
            None if RecordType::is_optional(code) => "optional",
            None => "unknown",
        }
    }
}

/// How durable a commit is when it returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Records stay in the process's buffer until it fills (1 MiB), a
    /// checkpoint, [`crate::Mmsb::sync`] or a clean stop: a process crash can
    /// lose recent commits (never a prefix of them out of order).
    None,
    /// Each commit's records are handed to the OS (`write`) before it
    /// returns: they survive a process crash, not a power cut.
    #[default]
    Flush,
    /// As `Flush`, and the log is fsynced once `every_records` records or
    /// `every_ms` milliseconds have accumulated since the last fsync (checked
    /// at each commit; `every_records: 1` fsyncs every commit). Commits in
    /// between share one fsync (group commit).
    Fsync {
        /// Fsync after this many records (0 = no record bound).
        every_records: u64,
        /// Fsync after this many milliseconds (0 = no time bound).
        every_ms: u64,
    },
}

impl Durability {
    /// Fsync every commit.
    pub const SYNC: Durability = Durability::Fsync { every_records: 1, every_ms: 0 };
}

/// The body of a [`RecordType::Graph`] record (postcard, see docs/FORMAT.md).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GraphRecord {
    /// [`Change::AddEdge`].
    AddEdge {
        /// Parent.
        from: PageId,
        /// Child.
        to: PageId,
        /// Kind.
        kind: crate::delta::change::EdgeKind,
    },
    /// [`Change::RemoveEdge`].
    RemoveEdge {
        /// Parent.
        from: PageId,
        /// Child.
        to: PageId,
    },
    /// [`Change::DeclareDerived`].
    DeclareDerived {
        /// The derived page.
        page: PageId,
        /// Function name.
        function: String,
        /// Function version.
        version: u32,
        /// Parents in call order.
        parents: Vec<PageId>,
    },
}

impl GraphRecord {
    /// The record for a graph change; `None` for other changes.
    pub fn of(c: &Change) -> Option<GraphRecord> {
        Some(match c {
            Change::AddEdge { from, to, kind } => GraphRecord::AddEdge { from: *from, to: *to, kind: *kind },
            Change::RemoveEdge { from, to } => GraphRecord::RemoveEdge { from: *from, to: *to },
            Change::DeclareDerived { page, function, version, parents } => GraphRecord::DeclareDerived {
                page: *page,
                function: function.clone(),
                version: *version,
                parents: parents.clone(),
            },
            _ => return None,
        })
    }

    /// The change this record describes.
    pub fn into_change(self) -> Change {
        match self {
            GraphRecord::AddEdge { from, to, kind } => Change::AddEdge { from, to, kind },
            GraphRecord::RemoveEdge { from, to } => Change::RemoveEdge { from, to },
            GraphRecord::DeclareDerived { page, function, version, parents } => {
                Change::DeclareDerived { page, function, version, parents }
            }
        }
    }
}

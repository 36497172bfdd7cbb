//! The one error family of MMSB.
//!
//! Every fallible operation returns [`Result<T>`]. An operation that fails has
//! changed nothing: validation happens before any byte is written.

use crate::types::page::Location;
use shared_types::{Epoch, PageId};
use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in MMSB.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No page with this id exists.
    #[error("page {0} not found")]
    PageNotFound(PageId),

    /// A page with this id already exists (only possible when replaying a
    /// foreign log or restoring over a live state).
    #[error("page {0} already exists")]
    PageExists(PageId),

    /// The delta does not fit the page or is malformed.
    #[error("invalid delta{}: {reason}", page.map(|p| format!(" for page {p}")).unwrap_or_default())]
    InvalidDelta {
        /// The target page, when known.
        page: Option<PageId>,
        /// What is wrong with it.
        reason: String,
    },

    /// A page specification (length, metadata) is not acceptable.
    #[error("invalid page: {reason}")]
    InvalidPage {
        /// What is wrong with it.
        reason: String,
    },

    /// The delta was built against an older (or newer) version of the page.
    #[error("stale base epoch for page {page}: delta expects {expected}, page is at {actual}")]
    StaleEpoch {
        /// The target page.
        page: PageId,
        /// The epoch the delta was built against.
        expected: Epoch,
        /// The page's current epoch.
        actual: Epoch,
    },

    /// Device memory could not be allocated.
    #[error("GPU memory: could not allocate {requested} bytes on device {device}: {reason}")]
    GpuMemory {
        /// Device ordinal.
        device: u32,
        /// Bytes asked for.
        requested: u64,
        /// What the driver said.
        reason: String,
    },

    /// A GPU driver call or kernel launch failed.
    #[error("GPU error in {context}: {source}")]
    Gpu {
        /// The operation or kernel that failed.
        context: String,
        /// The driver's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// No usable GPU (no driver, no device, or the ordinal does not exist).
    #[error("no GPU available: {reason}")]
    NoDevice {
        /// Why.
        reason: String,
    },

    /// The operation is not possible for a page at this location.
    #[error("{op} is not supported for a page at location {location}")]
    UnsupportedLocation {
        /// The operation.
        op: &'static str,
        /// The location.
        location: Location,
    },

    /// Bytes could not be encoded or decoded (metadata, a malformed buffer).
    #[error("serialization: {0}")]
    Serialization(String),

    /// A dependency edge would close a cycle. The cycle is listed in order,
    /// starting and ending at the same page.
    #[error("dependency cycle: {}", fmt_cycle(cycle))]
    GraphCycle {
        /// Pages on the cycle.
        cycle: Vec<PageId>,
    },

    /// A dependency edge cannot be added or removed for a reason other than
    /// a cycle (it already exists, it does not exist, it feeds a page that
    /// has no recompute function).
    #[error("invalid edge {from} -> {to}: {reason}")]
    InvalidEdge {
        /// The parent page.
        from: PageId,
        /// The child page.
        to: PageId,
        /// What is wrong.
        reason: String,
    },

    /// A recompute function is unknown, or registered with another version.
    #[error("recompute function {name:?}: {reason}")]
    Function {
        /// The function's registered name.
        name: String,
        /// What is wrong.
        reason: String,
    },

    /// A recompute function panicked while deriving a page. Nothing of the
    /// propagation was applied.
    #[error("recompute of page {page} by {function:?} failed: {reason}")]
    Recompute {
        /// The derived page.
        page: PageId,
        /// The function's registered name.
        function: String,
        /// The panic message.
        reason: String,
    },

    /// Persistent data failed a check (bad magic, CRC mismatch, impossible
    /// length, broken invariant).
    #[error("corrupt data{}{}: {reason}", file.as_ref().map(|f| format!(" in {}", f.display())).unwrap_or_default(), offset.map(|o| format!(" at offset {o}")).unwrap_or_default())]
    Corrupt {
        /// The file, when the data came from one.
        file: Option<PathBuf>,
        /// Byte offset of the first problem, when known.
        offset: Option<u64>,
        /// What is wrong.
        reason: String,
    },

    /// An I/O operation failed.
    #[error("I/O error{}: {source}", path.as_ref().map(|p| format!(" on {}", p.display())).unwrap_or_default())]
    Io {
        /// The file or directory, when known.
        path: Option<PathBuf>,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// An earlier write or fsync of the log failed, or a logged change
    /// could not be applied; the log refuses writes until the state is
    /// reopened (a failed fsync is never retried and trusted).
    #[error("the log is poisoned by an earlier failure: {0}")]
    Poisoned(String),

    /// An invariant check (`verify`) found a violation.
    #[error("invariant violated: {0}")]
    Invariant(String),

    /// The configuration is not valid.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The handle was stopped.
    #[error("the state was stopped")]
    Stopped,

    /// A [`crate::CommitSink`] refused a commit or could not say that it
    /// took it (a replicated log's publish failed, or this writer was
    /// deposed); the commit is not acknowledged and the log is poisoned.
    #[error("replication refused the commit: {0}")]
    Replication(String),

    /// A directory given as a state directory is not one: it is missing
    /// or holds no log, when [`crate::Config::existing`] asked for an
    /// existing state, or it holds other files and no MMSB log, which
    /// [`crate::Config::at`] does not adopt.
    #[error("{} is not an MMSB state directory: {reason}", .dir.display())]
    NotAState {
        /// The directory.
        dir: PathBuf,
        /// What is missing or in the way.
        reason: String,
    },

    /// Another handle holds the state directory (in this process or
    /// another): two writers would hand out the same ids and overwrite each
    /// other's log.
    #[error("state directory {} is in use by another handle (its log directory is locked); stop that handle first", .dir.display())]
    InUse {
        /// The state directory.
        dir: PathBuf,
    },

    /// A change needs the write lock of a page that this thread holds a
    /// [`crate::PageRef`] on, or that any thread holds a `SharedPageRef`
    /// on (an Arrow view of the page; the page itself, or a derived page
    /// its propagation would write): waiting might never end, so the
    /// change is refused whole. Drop the guard first.
    #[error(
        "page {page} is borrowed by a PageRef on this thread or a SharedPageRef (an Arrow view); drop it before a change that writes the page"
    )]
    PageBorrowed {
        /// The page.
        page: PageId,
    },

    /// A typed view ([`crate::typed`]) does not fit the page: the type's
    /// size does not match the page (or the range asked for), or the type
    /// has size zero.
    #[error(
        "page {page}: cannot view {len} bytes at offset {offset} as `{ty}` ({size} bytes each): {reason}"
    )]
    TypeLayout {
        /// The page.
        page: PageId,
        /// The Rust type asked for.
        ty: &'static str,
        /// `size_of` of that type.
        size: usize,
        /// Byte offset of the view in the page.
        offset: u64,
        /// Bytes the view would cover (the page length for whole-page views).
        len: u64,
        /// What does not fit.
        reason: &'static str,
    },
}

fn fmt_cycle(cycle: &[PageId]) -> String {
    cycle.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(" -> ")
}

impl Error {
    pub(crate) fn invalid_delta(page: Option<PageId>, reason: impl Into<String>) -> Self {
        Error::InvalidDelta { page, reason: reason.into() }
    }

    /// A [`Error::Corrupt`] with no file or offset.
    pub fn corrupt(reason: impl Into<String>) -> Self {
        Error::Corrupt { file: None, offset: None, reason: reason.into() }
    }

    /// A [`Error::Corrupt`] at a byte offset.
    pub fn corrupt_at(offset: u64, reason: impl Into<String>) -> Self {
        Error::Corrupt { file: None, offset: Some(offset), reason: reason.into() }
    }

    /// Attach a file to a `Corrupt` or `Io` error that has none.
    pub fn in_file(self, path: impl Into<PathBuf>) -> Self {
        match self {
            Error::Corrupt { file: None, offset, reason } => {
                Error::Corrupt { file: Some(path.into()), offset, reason }
            }
            Error::Io { path: None, source } => Error::Io { path: Some(path.into()), source },
            other => other,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(source: std::io::Error) -> Self {
        Error::Io { path: None, source }
    }
}

impl From<postcard::Error> for Error {
    fn from(e: postcard::Error) -> Self {
        Error::Serialization(e.to_string())
    }
}

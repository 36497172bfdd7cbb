//! [`Change`]: one accepted state change, the unit the commit path applies
//! (and the log records).

use crate::delta::Delta;
use crate::page::{Location, Metadata};
use shared_types::PageId;

/// One accepted change to the state, in acceptance order.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// A zero-filled page was created.
    CreatePage {
        /// Its id.
        id: PageId,
        /// Its length in bytes.
        len: u64,
        /// Where its bytes live.
        location: Location,
        /// Its initial metadata.
        meta: Metadata,
    },
    /// A page was deleted.
    DeletePage {
        /// Its id.
        id: PageId,
    },
    /// A delta was applied.
    Apply(Delta),
}

impl Change {
    /// The page the change is about.
    pub fn page(&self) -> PageId {
        match self {
            Change::CreatePage { id, .. } | Change::DeletePage { id } => *id,
            Change::Apply(d) => d.page,
        }
    }
}

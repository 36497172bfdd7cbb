//! [`Change`]: one accepted state change, the unit the commit path applies
//! (and the log records).

use crate::delta::Delta;
use crate::graph::EdgeKind;
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
    /// A dependency edge was added.
    AddEdge {
        /// Parent.
        from: PageId,
        /// Child.
        to: PageId,
        /// What the edge does.
        kind: EdgeKind,
    },
    /// A dependency edge was removed.
    RemoveEdge {
        /// Parent.
        from: PageId,
        /// Child.
        to: PageId,
    },
    /// A page was declared derived from `parents` (in call order) by a
    /// recompute function, replacing any earlier derivation. Replaying it
    /// records the derivation; it needs no code.
    DeclareDerived {
        /// The derived page.
        page: PageId,
        /// The function's registered name.
        function: String,
        /// The function's version.
        version: u32,
        /// Parents in call order.
        parents: Vec<PageId>,
    },
}

impl Change {
    /// The page the change is about (the child, for an edge).
    pub fn page(&self) -> PageId {
        match self {
            Change::CreatePage { id, .. } | Change::DeletePage { id } => *id,
            Change::Apply(d) => d.page,
            Change::AddEdge { to, .. } | Change::RemoveEdge { to, .. } => *to,
            Change::DeclareDerived { page, .. } => *page,
        }
    }
}

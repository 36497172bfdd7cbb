//! [`Change`]: one accepted state change, the unit the commit path applies
//! (and the log records).

use crate::delta::{Delta, Payload};
use crate::types::page::{Location, Metadata};
use serde::{Deserialize, Serialize};
use shared_types::{Epoch, PageId};

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

/// What a dependency edge does when its parent changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EdgeKind {
    /// The child is recomputed from its parents by its recompute function.
    Data,
    /// The child is only marked stale.
    Control,
}

/// One update of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    /// Target page.
    pub page: PageId,
    /// The change.
    pub payload: Payload,
    /// When set, the update is refused unless the page is at this epoch.
    pub base_epoch: Option<Epoch>,
}

impl Update {
    /// An unconditional update.
    pub fn new(page: PageId, payload: Payload) -> Self {
        Self { page, payload, base_epoch: None }
    }

    /// An update that requires the page to be at `epoch`.
    #[must_use]
    pub fn at_epoch(mut self, epoch: Epoch) -> Self {
        self.base_epoch = Some(epoch);
        self
    }
}

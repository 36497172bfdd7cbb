//! The page record: a page's id, length, epoch, location, metadata and
//! the storage of its bytes.

use crate::gpu::Storage;
use crate::{Error, Location, Metadata, Result};
use shared_types::{Epoch, PageId};

/// A page: id, fixed length, epoch, location, metadata and bytes.
#[derive(Debug)]
pub struct Page {
    pub(crate) id: PageId,
    pub(crate) len: u64,
    pub(crate) epoch: Epoch,
    pub(crate) location: Location,
    pub(crate) meta: Metadata,
    pub(crate) storage: Storage,
}

impl Page {
    /// The page's id.
    pub fn id(&self) -> PageId {
        self.id
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Pages are never empty; provided for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of deltas applied since creation.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Where the bytes live.
    pub fn location(&self) -> Location {
        self.location
    }

    /// The metadata map.
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// The `name` metadata entry, if it is UTF-8.
    pub fn name(&self) -> Option<&str> {
        self.meta.get("name").and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The bytes, for a page in host memory.
    ///
    /// # Errors
    /// [`Error::UnsupportedLocation`] for a page whose bytes are on a device:
    /// copy them out with [`crate::Mmsb::query_page`] instead.
    pub fn bytes(&self) -> Result<&[u8]> {
        self.storage.host().ok_or(Error::UnsupportedLocation { op: "Page::bytes", location: self.location })
    }

    /// A copy of the bytes, wherever they live (GPU pages apply their
    /// queued deltas first).
    pub(crate) fn copy_bytes(&self) -> Result<Vec<u8>> {
        self.storage.read().map(std::borrow::Cow::into_owned)
    }
}

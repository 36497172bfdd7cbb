//! The storage of a page's bytes: host memory or a GPU page. Every
//! CPU/GPU decision about a page's bytes is a method of [`Storage`]: how a
//! page is made at a location, read, written and copied back.

use crate::alloc::{PageAllocator, PageBuf};
use crate::delta::Payload;
use crate::gpu::GpuPage;
use crate::storage::codec::page::PageBytes;
use crate::types::page::Location;
use crate::Result;
use std::borrow::Cow;

/// Where the bytes of a page are stored.
#[derive(Debug)]
pub(crate) enum Storage {
    /// Host memory from the page allocator.
    Host(PageBuf),
    /// Device memory of one GPU ([`Location::Gpu`]).
    Device(GpuPage),
    /// CUDA managed memory ([`Location::Unified`]).
    Unified(GpuPage),
}

impl Storage {
    /// Fresh zeroed storage of `len` bytes at `location`.
    ///
    /// # Errors
    /// [`crate::Error::InvalidPage`] when host memory cannot hold it; the
    /// errors of [`crate::gpu::open`] and of a device allocation.
    pub(crate) fn zeroed(location: Location, len: u64, alloc: &PageAllocator) -> Result<Storage> {
        Ok(match location {
            Location::Cpu => Storage::Host(alloc.alloc(len as usize)?),
            Location::Gpu(_) => Storage::Device(crate::gpu::create_page(location, len)?),
            Location::Unified => Storage::Unified(crate::gpu::create_page(location, len)?),
        })
    }

    /// Storage at `location` holding `bytes` read from a checkpoint: a host
    /// page keeps the buffer they were read into.
    ///
    /// # Errors
    /// As [`Storage::zeroed`].
    pub(crate) fn restored(location: Location, bytes: PageBytes, alloc: &PageAllocator) -> Result<Storage> {
        match location {
            Location::Cpu => Ok(Storage::Host(bytes.into_page_buf(alloc)?)),
            _ => Self::copied(location, &bytes, alloc),
        }
    }

    /// Storage at `location` holding a copy of `bytes`.
    ///
    /// # Errors
    /// As [`Storage::zeroed`].
    pub(crate) fn copied(location: Location, bytes: &[u8], alloc: &PageAllocator) -> Result<Storage> {
        Ok(match location {
            Location::Cpu => Storage::Host(alloc.alloc_copy(bytes)?),
            Location::Gpu(_) => Storage::Device(crate::gpu::page_from(location, bytes)?),
            Location::Unified => Storage::Unified(crate::gpu::page_from(location, bytes)?),
        })
    }

    /// The GPU page behind device or unified storage.
    pub(crate) fn gpu(&self) -> Option<&GpuPage> {
        match self {
            Storage::Host(_) => None,
            Storage::Device(g) | Storage::Unified(g) => Some(g),
        }
    }

    /// The number of bytes stored.
    pub(crate) fn len(&self) -> u64 {
        match self {
            Storage::Host(b) => b.len() as u64,
            Storage::Device(g) | Storage::Unified(g) => g.len(),
        }
    }

    /// The bytes, when they are in host memory.
    #[inline]
    pub(crate) fn host(&self) -> Option<&[u8]> {
        match self {
            Storage::Host(b) => Some(b),
            Storage::Device(_) | Storage::Unified(_) => None,
        }
    }

    /// The bytes, writable, when they are in host memory.
    #[inline]
    pub(crate) fn host_mut(&mut self) -> Option<&mut [u8]> {
        match self {
            Storage::Host(b) => Some(b),
            Storage::Device(_) | Storage::Unified(_) => None,
        }
    }

    /// The bytes wherever they are: borrowed from host memory, or copied
    /// back from a device (its queued deltas applied first).
    ///
    /// # Errors
    /// [`crate::Error::Gpu`] when the device cannot be read.
    pub(crate) fn read(&self) -> Result<Cow<'_, [u8]>> {
        match self {
            Storage::Host(b) => Ok(Cow::Borrowed(b)),
            Storage::Device(g) | Storage::Unified(g) => g.download().map(Cow::Owned),
        }
    }

    /// Apply a payload already checked against the page's length: in place
    /// in host memory, queued on a device (the commit's flush applies it).
    /// A queued payload is taken (`payload` is left an empty sparse delta).
    ///
    /// # Errors
    /// The payload's own errors in host memory.
    #[inline]
    pub(crate) fn apply(&mut self, payload: &mut Payload) -> Result<()> {
        match self {
            Storage::Host(b) => payload.apply_to(b),
            Storage::Device(g) | Storage::Unified(g) => {
                g.enqueue(std::mem::replace(payload, Payload::Sparse(Default::default())));
                Ok(())
            }
        }
    }
}

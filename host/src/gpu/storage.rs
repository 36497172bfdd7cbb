//! The storage of a page's bytes: host memory or a GPU page. Every
//! CPU/GPU dispatch on a page's bytes goes through [`Storage`].

use crate::alloc::PageBuf;

/// Where the bytes of a page are stored.
#[derive(Debug)]
pub(crate) enum Storage {
    /// Host memory from the page allocator.
    Host(PageBuf),
    /// Device memory of one GPU ([`Location::Gpu`]).
    Device(crate::gpu::GpuPage),
    /// CUDA managed memory ([`Location::Unified`]).
    Unified(crate::gpu::GpuPage),
}

impl Storage {
    /// The GPU page behind device or unified storage.
    pub(crate) fn gpu(&self) -> Option<&crate::gpu::GpuPage> {
        match self {
            Storage::Host(_) => None,
            Storage::Device(g) | Storage::Unified(g) => Some(g),
        }
    }
}

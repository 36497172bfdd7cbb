//! Pooled device memory: size classes, slabs for small classes, free lists,
//! statistics.
//!
//! | request | served from |
//! |---|---|
//! | up to [`SLAB_CLASS_MAX`] | a power-of-two class carved out of [`SLAB_BYTES`] slabs |
//! | up to [`MAX_POOLED`] | a power-of-two class, one driver allocation per block, cached when freed |
//! | larger | a direct driver allocation (rounded to 2 MiB), freed on drop |
//!
//! Every block is at least 256-byte aligned (the driver aligns allocations
//! to 256 bytes or more and classes are multiples of 256), which the
//! kernels' 16-byte vector paths rely on. Slabs are returned to the driver
//! only when the pool is dropped; cached large blocks are trimmed when an
//! allocation fails and when the cache exceeds its budget.

use super::driver::{self, DevicePtr};
use super::range::DeviceRange;
use crate::{Error, Result};
use cudarc::driver::CudaContext;
use parking_lot::Mutex;
use std::sync::Arc;

/// Smallest class (bytes).
pub const MIN_CLASS: u64 = 256;
/// Largest class carved from slabs.
pub const SLAB_CLASS_MAX: u64 = 64 << 10;
/// Bytes per slab.
pub const SLAB_BYTES: u64 = 4 << 20;
/// Largest pooled class.
pub const MAX_POOLED: u64 = 64 << 20;
const NUM_CLASSES: usize = (MAX_POOLED.trailing_zeros() - MIN_CLASS.trailing_zeros() + 1) as usize;
/// Default byte budget for cached (freed, not slab) large blocks.
pub const DEFAULT_CACHE_BUDGET: u64 = 1 << 30;

/// A snapshot of a device pool's statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuPoolStats {
    /// Bytes in blocks handed out (by capacity).
    pub live_bytes: u64,
    /// Blocks handed out.
    pub live_blocks: u64,
    /// Bytes reserved from the driver (slabs, cached and live large blocks).
    pub reserved_bytes: u64,
    /// Bytes in cached free large blocks.
    pub cached_bytes: u64,
    /// Requests served without a driver allocation.
    pub hits: u64,
    /// Requests that needed a driver allocation.
    pub misses: u64,
    /// Driver allocations made so far.
    pub driver_allocs: u64,
    /// Bytes copied host → device (uploads, batch images) by this device's
    /// handle so far.
    pub h2d_bytes: u64,
    /// Bytes copied device → host (reads, checkpoints, diffs) so far.
    pub d2h_bytes: u64,
}

#[derive(Default)]
struct State {
    /// Free block addresses per class.
    free: Vec<Vec<DevicePtr>>,
    /// Slab base addresses (freed on drop).
    slabs: Vec<DevicePtr>,
    stats: GpuPoolStats,
}

pub(crate) struct PoolInner {
    ctx: Arc<CudaContext>,
    ordinal: u32,
    cache_budget: u64,
    state: Mutex<State>,
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        // Live blocks hold an Arc to the pool, so none is live here.
        let st = self.state.get_mut();
        let slabs = std::mem::take(&mut st.slabs);
        let mut cached = Vec::new();
        for (c, list) in st.free.iter_mut().enumerate() {
            if class_size(c) > SLAB_CLASS_MAX {
                cached.append(list);
            }
        }
        for p in slabs.into_iter().chain(cached) {
            // Errors cannot be reported from drop; the context records them.
            // SAFETY: p is a slab base or a cached block from driver_alloc,
            // listed once and freed once; no block is live (each holds an
            // Arc to the pool) and the pool's device work was synchronised
            // by the operations that used its blocks.
            let _ = unsafe { driver::free(&self.ctx, p) };
        }
    }
}

const fn class_size(c: usize) -> u64 {
    MIN_CLASS << c
}

fn class_of(len: u64) -> Option<usize> {
    if len > MAX_POOLED {
        return None;
    }
    let size = len.max(MIN_CLASS).next_power_of_two();
    Some((size.trailing_zeros() - MIN_CLASS.trailing_zeros()) as usize)
}

/// A pool of device memory on one device. Cloning shares the pool.
#[derive(Clone)]
pub(crate) struct DevicePool {
    inner: Arc<PoolInner>,
}

impl std::fmt::Debug for DevicePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevicePool")
            .field("ordinal", &self.inner.ordinal)
            .field("stats", &self.stats())
            .finish()
    }
}

impl DevicePool {
    pub(crate) fn new(ctx: Arc<CudaContext>, ordinal: u32, cache_budget: u64) -> Self {
        let state = State { free: vec![Vec::new(); NUM_CLASSES], ..State::default() };
        Self { inner: Arc::new(PoolInner { ctx, ordinal, cache_budget, state: Mutex::new(state) }) }
    }

    /// Statistics.
    pub(crate) fn stats(&self) -> GpuPoolStats {
        self.inner.state.lock().stats
    }

    /// A block of at least `len` bytes (contents undefined).
    ///
    /// # Errors
    /// [`Error::GpuMemory`] when the device is out of memory even after the
    /// cache was trimmed; [`Error::Gpu`] for other driver failures.
    pub(crate) fn alloc(&self, len: u64) -> Result<DeviceBlock> {
        let len = len.max(1);
        let inner = &self.inner;
        let Some(c) = class_of(len) else {
            let cap = len.checked_next_multiple_of(2 << 20).ok_or_else(|| Error::GpuMemory {
                device: inner.ordinal,
                requested: len,
                reason: "size overflows".into(),
            })?;
            let ptr = self.driver_alloc(cap)?;
            let mut st = inner.state.lock();
            st.stats.misses += 1;
            st.stats.live_bytes += cap;
            st.stats.live_blocks += 1;
            return Ok(DeviceBlock { ptr, len, cap, class: None, pool: self.clone() });
        };
        let size = class_size(c);
        {
            let mut st = inner.state.lock();
            if let Some(ptr) = st.free[c].pop() {
                st.stats.hits += 1;
                st.stats.live_bytes += size;
                st.stats.live_blocks += 1;
                if size > SLAB_CLASS_MAX {
                    st.stats.cached_bytes -= size;
                }
                return Ok(DeviceBlock { ptr, len, cap: size, class: Some(c), pool: self.clone() });
            }
        }
        if size <= SLAB_CLASS_MAX {
            // Carve a fresh slab into blocks of this class.
            let slab = self.driver_alloc(SLAB_BYTES)?;
            let mut st = inner.state.lock();
            st.slabs.push(slab);
            let n = SLAB_BYTES / size;
            st.free[c].extend((1..n).rev().map(|k| slab + k * size));
            st.stats.misses += 1;
            st.stats.live_bytes += size;
            st.stats.live_blocks += 1;
            Ok(DeviceBlock { ptr: slab, len, cap: size, class: Some(c), pool: self.clone() })
        } else {
            let ptr = self.driver_alloc(size)?;
            let mut st = inner.state.lock();
            st.stats.misses += 1;
            st.stats.live_bytes += size;
            st.stats.live_blocks += 1;
            Ok(DeviceBlock { ptr, len, cap: size, class: Some(c), pool: self.clone() })
        }
    }

    fn driver_alloc(&self, bytes: u64) -> Result<DevicePtr> {
        let inner = &self.inner;
        let first = driver::alloc(&inner.ctx, inner.ordinal, bytes);
        let ptr = match first {
            Ok(p) => p,
            Err(Error::GpuMemory { .. }) => {
                self.trim();
                driver::alloc(&inner.ctx, inner.ordinal, bytes)?
            }
            Err(e) => return Err(e),
        };
        let mut st = inner.state.lock();
        st.stats.driver_allocs += 1;
        st.stats.reserved_bytes += bytes;
        Ok(ptr)
    }

    /// Return every cached large block to the driver.
    pub(crate) fn trim(&self) {
        let inner = &self.inner;
        let mut freed = Vec::new();
        {
            let mut st = inner.state.lock();
            for c in 0..NUM_CLASSES {
                if class_size(c) > SLAB_CLASS_MAX {
                    let size = class_size(c);
                    for p in st.free[c].drain(..) {
                        freed.push((p, size));
                    }
                }
            }
            let bytes: u64 = freed.iter().map(|(_, s)| s).sum();
            st.stats.cached_bytes -= bytes;
            st.stats.reserved_bytes -= bytes;
        }
        for (p, _) in freed {
            // SAFETY: p was a cached free block (from driver_alloc, handed
            // out by no one) and has just left the free list, so it is
            // freed once.
            let _ = unsafe { driver::free(&inner.ctx, p) };
        }
    }

    /// Take back a block handed out by [`DevicePool::alloc`].
    ///
    /// # Safety
    /// `ptr`, `cap` and `class` must be those of a block this pool handed
    /// out, released once, with all device work using it finished.
    unsafe fn release(&self, ptr: DevicePtr, cap: u64, class: Option<usize>) {
        let inner = &self.inner;
        let mut st = inner.state.lock();
        st.stats.live_bytes -= cap;
        st.stats.live_blocks -= 1;
        match class {
            Some(c) if cap <= SLAB_CLASS_MAX => st.free[c].push(ptr),
            Some(c) if st.stats.cached_bytes + cap <= inner.cache_budget => {
                st.free[c].push(ptr);
                st.stats.cached_bytes += cap;
            }
            _ => {
                st.stats.reserved_bytes -= cap;
                drop(st);
                // A failed free cannot be reported from drop; the context records it.
                // SAFETY: per the caller, ptr is a block of ours from
                // driver_alloc (a direct or a pooled class block, never a
                // slab piece: those classes take the first arm), released
                // once and not kept in any list.
                let _ = unsafe { driver::free(&inner.ctx, ptr) };
            }
        }
    }
}

/// A block of device memory from a device's pool (contents undefined until
/// written); returned to the pool on drop. Its bytes are reached through
/// [`DeviceBlock::range`].
pub struct DeviceBlock {
    ptr: DevicePtr,
    len: u64,
    cap: u64,
    class: Option<usize>,
    pool: DevicePool,
}

impl std::fmt::Debug for DeviceBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceBlock")
            .field("ptr", &format_args!("{:#x}", self.ptr))
            .field("len", &self.len)
            .finish()
    }
}

impl DeviceBlock {
    /// Device address of the first byte.
    pub(crate) fn ptr(&self) -> DevicePtr {
        self.ptr
    }

    /// Requested length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always `false`: a block asked for with length zero holds one byte.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The block's bytes (its requested length), borrowing the block.
    pub fn range(&self) -> DeviceRange<'_> {
        // SAFETY: the block is one live allocation of at least len bytes
        // on the pool's device (a class block, a slab piece or a direct
        // allocation, each 256-aligned and a multiple of 256 bytes long),
        // returned to the pool only when the block is dropped, which the
        // borrow prevents for the range's life.
        unsafe { DeviceRange::new(self.ptr, self.len, self.pool.inner.ordinal) }
    }
}

impl Drop for DeviceBlock {
    fn drop(&mut self) {
        // SAFETY: the block's own fields, released once (here). Work using
        // the block is finished: every operation of the crate waits for the
        // device's stream before it returns, and asynchronous launches are
        // `unsafe` with that duty or wait before their ranges' borrows end.
        unsafe { self.pool.release(self.ptr, self.cap, self.class) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_powers_of_two_from_256() {
        assert_eq!(class_of(1), Some(0));
        assert_eq!(class_size(0), 256);
        assert_eq!(class_of(256), Some(0));
        assert_eq!(class_of(257), Some(1));
        assert_eq!(class_size(class_of(4096).unwrap_or(0)), 4096);
        assert_eq!(class_size(class_of(MAX_POOLED).unwrap_or(0)), MAX_POOLED);
        assert_eq!(class_of(MAX_POOLED + 1), None);
        assert_eq!(class_size(NUM_CLASSES - 1), MAX_POOLED);
        assert_eq!(SLAB_BYTES % SLAB_CLASS_MAX, 0);
    }
}

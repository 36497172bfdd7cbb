//! Size-classed, pooled, 64-byte-aligned page buffers.
//!
//! Page bytes live in [`PageBuf`]s handed out by a [`PageAllocator`]. Requests
//! up to [`MAX_POOLED_CLASS`] bytes are rounded up to a power-of-two class;
//! a dropped buffer goes back to its class's free list (while the pool holds
//! less than its byte budget) and is handed out again, zeroed, by the next
//! request of that class. Larger buffers are allocated and freed directly.
//!
//! This module and `gpu/` are the only places with `unsafe` code.

use crate::sync::{AtomicU64, Mutex, Ordering};
use std::alloc::{self, Layout};
use std::ptr::NonNull;
use std::sync::Arc;

/// Alignment of every page buffer (one cache line, and enough for SIMD).
pub const PAGE_ALIGN: usize = 64;
/// Smallest size class.
pub const MIN_CLASS: usize = 64;
/// Largest pooled size class (64 MiB); larger buffers are not pooled.
pub const MAX_POOLED_CLASS: usize = 64 << 20;
const NUM_CLASSES: usize = (MAX_POOLED_CLASS.trailing_zeros() - MIN_CLASS.trailing_zeros() + 1) as usize;
/// Default byte budget of the free lists.
pub const DEFAULT_POOL_BUDGET: u64 = 256 << 20;

/// A snapshot of allocator statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocStats {
    /// Bytes in buffers currently handed out (by capacity).
    pub live_bytes: u64,
    /// Bytes held in the free lists, ready for reuse.
    pub pooled_bytes: u64,
    /// Buffers currently handed out.
    pub live_buffers: u64,
    /// Requests served from a free list.
    pub pool_hits: u64,
    /// Requests that needed a fresh allocation.
    pub pool_misses: u64,
}

struct Inner {
    free: [Mutex<Vec<NonNull<u8>>>; NUM_CLASSES],
    budget: u64,
    live_bytes: AtomicU64,
    pooled_bytes: AtomicU64,
    live_buffers: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
}

// SAFETY: the raw pointers in the free lists are exclusively owned, unaliased
// heap blocks; every access to a list goes through its mutex.
unsafe impl Send for Inner {}
// SAFETY: as above; shared access only reaches the lists through mutexes and
// the counters are atomics.
unsafe impl Sync for Inner {}

impl Drop for Inner {
    fn drop(&mut self) {
        for (class, list) in self.free.iter_mut().enumerate() {
            let size = class_size(class);
            for ptr in list.get_mut().drain(..) {
                // SAFETY: every pointer in list `class` was allocated with
                // `layout(size)` and is owned by the list.
                unsafe { alloc::dealloc(ptr.as_ptr(), layout(size)) };
            }
        }
    }
}

/// A thread-safe pool of page buffers. Cloning shares the pool.
#[derive(Clone)]
pub struct PageAllocator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PageAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageAllocator").field("stats", &self.stats()).finish()
    }
}

impl Default for PageAllocator {
    fn default() -> Self {
        Self::new(DEFAULT_POOL_BUDGET)
    }
}

fn class_of(len: usize) -> Option<usize> {
    if len > MAX_POOLED_CLASS {
        return None;
    }
    let size = len.max(MIN_CLASS).next_power_of_two();
    Some((size.trailing_zeros() - MIN_CLASS.trailing_zeros()) as usize)
}

const fn class_size(class: usize) -> usize {
    MIN_CLASS << class
}

fn layout(size: usize) -> Layout {
    // size is at least MIN_CLASS and a multiple of PAGE_ALIGN after rounding.
    Layout::from_size_align(size, PAGE_ALIGN).expect("page sizes are checked before layout")
}

/// Capacity actually reserved for a `len`-byte request.
fn capacity_for(len: usize) -> Option<usize> {
    match class_of(len) {
        Some(c) => Some(class_size(c)),
        None => len.checked_next_multiple_of(PAGE_ALIGN).filter(|&c| c <= isize::MAX as usize - PAGE_ALIGN),
    }
}

impl PageAllocator {
    /// A pool whose free lists hold at most `budget` bytes.
    pub fn new(budget: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                free: std::array::from_fn(|_| Mutex::new(Vec::new())),
                budget,
                live_bytes: AtomicU64::new(0),
                pooled_bytes: AtomicU64::new(0),
                live_buffers: AtomicU64::new(0),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
            }),
        }
    }

    /// A zeroed buffer of `len` bytes (1 ≤ len), 64-byte aligned.
    ///
    /// # Errors
    /// [`crate::Error::InvalidPage`] for a zero or impossibly large length;
    /// [`crate::Error::InvalidPage`] too when the system is out of memory.
    pub fn alloc(&self, len: usize) -> crate::Result<PageBuf> {
        if len == 0 {
            return Err(crate::Error::InvalidPage { reason: "page length must be at least 1 byte".into() });
        }
        let cap = capacity_for(len).ok_or_else(|| crate::Error::InvalidPage {
            reason: format!("page length {len} exceeds the address space"),
        })?;
        let class = class_of(len);
        let inner = &self.inner;
        let reused = class.and_then(|c| inner.free[c].lock().pop());
        let ptr = match reused {
            Some(ptr) => {
                inner.pooled_bytes.fetch_sub(cap as u64, Ordering::Relaxed);
                inner.hits.fetch_add(1, Ordering::Relaxed);
                // SAFETY: ptr came from the free list of this class: `cap`
                // writable bytes owned by us; len <= cap.
                unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, len) };
                ptr
            }
            None => {
                inner.misses.fetch_add(1, Ordering::Relaxed);
                // SAFETY: layout has non-zero size (cap >= MIN_CLASS).
                let raw = unsafe { alloc::alloc_zeroed(layout(cap)) };
                NonNull::new(raw).ok_or_else(|| crate::Error::InvalidPage {
                    reason: format!("out of memory allocating {cap} bytes"),
                })?
            }
        };
        inner.live_bytes.fetch_add(cap as u64, Ordering::Relaxed);
        inner.live_buffers.fetch_add(1, Ordering::Relaxed);
        Ok(PageBuf { ptr, len, cap, pool: self.clone() })
    }

    /// A buffer holding a copy of `bytes`.
    ///
    /// # Errors
    /// As [`PageAllocator::alloc`].
    pub fn alloc_copy(&self, bytes: &[u8]) -> crate::Result<PageBuf> {
        let mut buf = self.alloc(bytes.len())?;
        buf.copy_from_slice(bytes);
        Ok(buf)
    }

    /// Current statistics.
    pub fn stats(&self) -> AllocStats {
        let i = &self.inner;
        AllocStats {
            live_bytes: i.live_bytes.load(Ordering::Relaxed),
            pooled_bytes: i.pooled_bytes.load(Ordering::Relaxed),
            live_buffers: i.live_buffers.load(Ordering::Relaxed),
            pool_hits: i.hits.load(Ordering::Relaxed),
            pool_misses: i.misses.load(Ordering::Relaxed),
        }
    }

    /// Free every pooled (unused) buffer.
    pub fn trim(&self) {
        for (class, list) in self.inner.free.iter().enumerate() {
            let drained: Vec<_> = std::mem::take(&mut *list.lock());
            let size = class_size(class);
            for ptr in drained {
                self.inner.pooled_bytes.fetch_sub(size as u64, Ordering::Relaxed);
                // SAFETY: owned block of this class, allocated with layout(size).
                unsafe { alloc::dealloc(ptr.as_ptr(), layout(size)) };
            }
        }
    }

    fn release(&self, ptr: NonNull<u8>, cap: usize) {
        let inner = &self.inner;
        inner.live_bytes.fetch_sub(cap as u64, Ordering::Relaxed);
        inner.live_buffers.fetch_sub(1, Ordering::Relaxed);
        if let Some(class) = class_of(cap).filter(|&c| class_size(c) == cap) {
            let prev = inner.pooled_bytes.fetch_add(cap as u64, Ordering::Relaxed);
            if prev + cap as u64 <= inner.budget {
                inner.free[class].lock().push(ptr);
                return;
            }
            inner.pooled_bytes.fetch_sub(cap as u64, Ordering::Relaxed);
        }
        // SAFETY: ptr was allocated with layout(cap) and is no longer used.
        unsafe { alloc::dealloc(ptr.as_ptr(), layout(cap)) };
    }
}

/// An owned, 64-byte-aligned byte buffer from a [`PageAllocator`]; returns to
/// the pool when dropped. Dereferences to `[u8]` of its requested length.
pub struct PageBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
    pool: PageAllocator,
}

// SAFETY: PageBuf uniquely owns its heap block, like a Box<[u8]>.
unsafe impl Send for PageBuf {}
// SAFETY: shared references only give `&[u8]`.
unsafe impl Sync for PageBuf {}

impl PageBuf {
    /// Reserved capacity (the size class).
    pub fn capacity(&self) -> usize {
        self.cap
    }
}

impl std::ops::Deref for PageBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for `len` initialised (zeroed at allocation)
        // bytes for as long as self lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for PageBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in Deref, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for PageBuf {
    fn drop(&mut self) {
        self.pool.release(self.ptr, self.cap);
    }
}

impl std::fmt::Debug for PageBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageBuf").field("len", &self.len).field("cap", &self.cap).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_zeroed_and_reused() {
        let a = PageAllocator::new(1 << 20);
        let mut b = a.alloc(100).unwrap();
        assert_eq!(b.len(), 100);
        assert_eq!(b.capacity(), 128);
        assert_eq!(b.as_ptr() as usize % PAGE_ALIGN, 0);
        b.fill(7);
        let p = b.as_ptr();
        drop(b);
        assert_eq!(a.stats().pooled_bytes, 128);
        let c = a.alloc(120).unwrap();
        assert_eq!(c.as_ptr(), p, "same class is reused");
        assert!(c.iter().all(|&x| x == 0), "reused buffers are zeroed");
        let s = a.stats();
        assert_eq!((s.pool_hits, s.pool_misses, s.live_buffers, s.live_bytes), (1, 1, 1, 128));
    }

    #[test]
    fn zero_length_is_an_error() {
        assert!(matches!(PageAllocator::default().alloc(0), Err(crate::Error::InvalidPage { .. })));
    }

    #[test]
    fn huge_length_is_an_error_not_a_panic() {
        assert!(PageAllocator::default().alloc(usize::MAX).is_err());
    }

    #[test]
    fn budget_bounds_the_pool() {
        let a = PageAllocator::new(256);
        let bufs: Vec<_> = (0..4).map(|_| a.alloc(128).unwrap()).collect();
        drop(bufs);
        assert_eq!(a.stats().pooled_bytes, 256);
        assert_eq!(a.stats().live_bytes, 0);
        a.trim();
        assert_eq!(a.stats().pooled_bytes, 0);
    }

    #[test]
    fn unpooled_sizes_round_trip() {
        let a = PageAllocator::new(0);
        let b = a.alloc(MAX_POOLED_CLASS + 1).unwrap();
        assert_eq!(b.capacity() % PAGE_ALIGN, 0);
        assert_eq!(b.len(), MAX_POOLED_CLASS + 1);
        drop(b);
        assert_eq!(a.stats().pooled_bytes, 0);
    }

    #[test]
    fn concurrent_alloc_and_free() {
        let a = PageAllocator::new(1 << 20);
        std::thread::scope(|s| {
            for t in 0..4 {
                let a = a.clone();
                s.spawn(move || {
                    for i in 0..500 {
                        let mut b = a.alloc(64 + (i * 37 + t) % 5000).unwrap();
                        assert!(b.iter().all(|&x| x == 0));
                        b.fill(1);
                    }
                });
            }
        });
        assert_eq!(a.stats().live_buffers, 0);
        assert_eq!(a.stats().live_bytes, 0);
    }
}

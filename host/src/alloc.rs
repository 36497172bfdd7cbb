//! Size-classed, pooled, 64-byte-aligned page buffers.
//!
//! Page bytes live in [`PageBuf`]s handed out by a [`PageAllocator`]. Requests
//! up to [`MAX_POOLED_CLASS`] bytes are rounded up to a power-of-two class;
//! a dropped buffer goes back to its class's free list (while the pool holds
//! less than its byte budget) and is handed out again, zeroed, by the next
//! request of that class. Larger buffers are allocated and freed directly.
//!
//! This module, `simd` and `gpu/` are the only places with `unsafe` code.

use crate::sync::{AtomicI64, Mutex, Ordering};

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
/// Default byte budget of the free lists (split evenly over the shards).
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

/// One size class of one shard: its free buffers and its counters, all
/// under one lock (one uncontended lock per allocation, no shared atomics).
#[derive(Default)]
struct ClassList {
    free: Vec<NonNull<u8>>,
    hits: u64,
    misses: u64,
    taken: u64,
    returned: u64,
}

/// Free lists of one shard. Threads are spread over shards so that
/// concurrent allocators rarely touch the same lock or cache line.
#[repr(align(128))]
struct Shard {
    classes: [Mutex<ClassList>; NUM_CLASSES],
    /// Bytes in this shard's free lists, for the budget check.
    pooled_bytes: AtomicI64,
}

/// Number of shards (a power of two; two under the loom model checker, to
/// keep its state space small while still exercising stealing).
const SHARDS: usize = if cfg!(loom) { 2 } else { 8 };

struct Inner {
    shards: [Shard; SHARDS],
    /// Counters of buffers too large to pool: (taken, returned, bytes live).
    unpooled: Mutex<(u64, u64, u64)>,
    /// Byte budget of each shard's free lists (the pool budget / SHARDS).
    shard_budget: i64,
}

// SAFETY: the raw pointers in the free lists are exclusively owned, unaliased
// heap blocks; every access to a list goes through its mutex.
unsafe impl Send for Inner {}
// SAFETY: as above; shared access only reaches the lists through mutexes and
// the budget counters are atomics.
unsafe impl Sync for Inner {}

impl Drop for Inner {
    fn drop(&mut self) {
        for shard in &self.shards {
            for (class, list) in shard.classes.iter().enumerate() {
                let size = class_size(class);
                for ptr in std::mem::take(&mut list.lock().free) {
                    // SAFETY: every pointer in list `class` was allocated with
                    // `layout(size)` and is owned by the list.
                    unsafe { alloc::dealloc(ptr.as_ptr(), layout(size)) };
                }
            }
        }
    }
}

/// The shard of the calling thread: assigned round-robin at first use.
fn my_shard() -> usize {
    crate::sync::thread_slot() % SHARDS
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
        let shard_budget = i64::try_from(budget / SHARDS as u64).unwrap_or(i64::MAX);
        let shards = std::array::from_fn(|_| Shard {
            classes: std::array::from_fn(|_| Mutex::new(ClassList::default())),
            pooled_bytes: AtomicI64::new(0),
        });
        Self { inner: Arc::new(Inner { shards, unpooled: Mutex::new((0, 0, 0)), shard_budget }) }
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
        let Some(class) = class_of(len) else {
            // SAFETY: layout has non-zero size (cap >= len >= 1).
            let raw = unsafe { alloc::alloc_zeroed(layout(cap)) };
            let ptr = NonNull::new(raw).ok_or_else(|| crate::Error::InvalidPage {
                reason: format!("out of memory allocating {cap} bytes"),
            })?;
            let mut u = self.inner.unpooled.lock();
            u.0 += 1;
            u.2 += cap as u64;
            return Ok(PageBuf { ptr, len, cap, pool: self.clone() });
        };
        let home = my_shard();
        let mut list = self.inner.shards[home].classes[class].lock();
        list.taken += 1;
        let mut reused = list.free.pop().map(|p| (p, home));
        if reused.is_none() {
            // Steal from another shard before asking the system.
            drop(list);
            reused = (1..SHARDS).find_map(|k| {
                let from = (home + k) % SHARDS;
                self.inner.shards[from].classes[class].lock().free.pop().map(|p| (p, from))
            });
            list = self.inner.shards[home].classes[class].lock();
        }
        let ptr = match reused {
            Some((ptr, from)) => {
                list.hits += 1;
                drop(list);
                self.inner.shards[from].pooled_bytes.fetch_sub(cap as i64, Ordering::Relaxed);
                // SAFETY: ptr came from a free list of this class: `cap`
                // writable bytes owned by us; len <= cap.
                unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, len) };
                ptr
            }
            None => {
                list.misses += 1;
                drop(list);
                // SAFETY: layout has non-zero size (cap >= MIN_CLASS).
                let raw = unsafe { alloc::alloc_zeroed(layout(cap)) };
                match NonNull::new(raw) {
                    Some(p) => p,
                    None => {
                        self.inner.shards[home].classes[class].lock().taken -= 1;
                        return Err(crate::Error::InvalidPage {
                            reason: format!("out of memory allocating {cap} bytes"),
                        });
                    }
                }
            }
        };
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

    /// Current statistics (summed over shards; exact once concurrent calls
    /// have returned).
    pub fn stats(&self) -> AllocStats {
        let mut st = AllocStats::default();
        for shard in &self.inner.shards {
            for (class, list) in shard.classes.iter().enumerate() {
                let l = list.lock();
                let size = class_size(class) as u64;
                st.pooled_bytes += l.free.len() as u64 * size;
                st.pool_hits += l.hits;
                st.pool_misses += l.misses;
                // Taken in one shard, returned in another: sum signed.
                let live = l.taken as i64 - l.returned as i64;
                st.live_buffers = st.live_buffers.wrapping_add(live as u64);
                st.live_bytes = st.live_bytes.wrapping_add((live * size as i64) as u64);
            }
        }
        let u = self.inner.unpooled.lock();
        st.live_buffers = st.live_buffers.wrapping_add(u.0 - u.1);
        st.live_bytes = st.live_bytes.wrapping_add(u.2);
        st.pool_misses += u.0;
        st
    }

    /// Free every pooled (unused) buffer.
    pub fn trim(&self) {
        for shard in &self.inner.shards {
            for (class, list) in shard.classes.iter().enumerate() {
                let drained: Vec<_> = std::mem::take(&mut list.lock().free);
                let size = class_size(class);
                shard.pooled_bytes.fetch_sub((drained.len() * size) as i64, Ordering::Relaxed);
                for ptr in drained {
                    // SAFETY: owned block of this class, allocated with layout(size).
                    unsafe { alloc::dealloc(ptr.as_ptr(), layout(size)) };
                }
            }
        }
    }

    fn release(&self, ptr: NonNull<u8>, cap: usize) {
        match class_of(cap).filter(|&c| class_size(c) == cap) {
            Some(class) => {
                let shard = &self.inner.shards[my_shard()];
                let prev = shard.pooled_bytes.fetch_add(cap as i64, Ordering::Relaxed);
                let keep = prev + cap as i64 <= self.inner.shard_budget;
                let mut list = shard.classes[class].lock();
                list.returned += 1;
                if keep {
                    list.free.push(ptr);
                    return;
                }
                drop(list);
                shard.pooled_bytes.fetch_sub(cap as i64, Ordering::Relaxed);
            }
            None => {
                let mut u = self.inner.unpooled.lock();
                u.1 += 1;
                u.2 -= cap as u64;
            }
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
        let a = PageAllocator::new(8 << 20);
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
        // 256 bytes per shard; all frees here land in this thread's shard.
        let a = PageAllocator::new(256 * SHARDS as u64);
        let bufs: Vec<_> = (0..4).map(|_| a.alloc(128).unwrap()).collect();
        drop(bufs);
        assert_eq!(a.stats().pooled_bytes, 256);
        assert_eq!(a.stats().live_bytes, 0);
        a.trim();
        assert_eq!(a.stats().pooled_bytes, 0);
    }

    #[test]
    #[cfg_attr(miri, ignore = "a 64 MiB zeroed allocation is too slow to interpret")]
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
                    // Miri interprets every byte check: fewer, smaller rounds there.
                    let (rounds, spread) = if cfg!(miri) { (12, 300) } else { (500, 5000) };
                    for i in 0..rounds {
                        let mut b = a.alloc(64 + (i * 37 + t) % spread).unwrap();
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

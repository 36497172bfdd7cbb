//! Size-classed, pooled, 64-byte-aligned page buffers.
//!
//! Page bytes live in [`PageBuf`]s handed out by a [`PageAllocator`]. Requests
//! up to [`MAX_POOLED_CLASS`] bytes are rounded up to a power-of-two class;
//! a dropped buffer goes back to its class's free list in its home shard
//! (while that shard holds less than its share of the byte budget) and is
//! handed out again, zeroed, by the next request of that class. Larger
//! buffers are allocated and freed directly.
//!
//! This module, `simd` and `gpu/` are the only places with `unsafe` code.

use crate::sync::Mutex;

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

/// One size class of one shard: its free buffers and its counters.
#[derive(Default)]
struct ClassList {
    free: Vec<NonNull<u8>>,
    hits: u64,
    misses: u64,
    taken: u64,
    returned: u64,
}

/// Everything one shard guards with its one lock.
struct ShardState {
    classes: [ClassList; NUM_CLASSES],
    /// Bytes in this shard's free lists, for the budget check.
    pooled_bytes: u64,
    /// Buffers too large to pool: (taken, returned, bytes live).
    unpooled: (u64, u64, u64),
}

/// Free lists of one shard. Threads are spread over shards, and a buffer
/// holds its home shard (not the whole pool), so concurrent threads rarely
/// touch the same lock, counter or cache line: one uncontended lock on
/// allocation, one on free, and the shard's reference count.
#[repr(align(128))]
struct Shard {
    state: Mutex<ShardState>,
    /// Byte budget of this shard's free lists (the pool budget / SHARDS).
    budget: u64,
}

// SAFETY: the raw pointers in the free lists are exclusively owned, unaliased
// heap blocks; every access to a list goes through the shard's mutex.
unsafe impl Send for Shard {}
// SAFETY: as above; shared access only reaches the lists through the mutex.
unsafe impl Sync for Shard {}

impl Shard {
    /// Return a block of `cap` bytes: to its class's free list while the
    /// shard's budget allows, otherwise to the system.
    fn release(&self, ptr: NonNull<u8>, cap: usize) {
        let mut st = self.state.lock();
        match class_of(cap).filter(|&c| class_size(c) == cap) {
            Some(class) => {
                st.classes[class].returned += 1;
                if st.pooled_bytes + cap as u64 <= self.budget {
                    st.pooled_bytes += cap as u64;
                    st.classes[class].free.push(ptr);
                    return;
                }
            }
            None => {
                st.unpooled.1 += 1;
                st.unpooled.2 -= cap as u64;
            }
        }
        drop(st);
        // SAFETY: ptr was allocated with layout(cap) and is no longer used.
        unsafe { alloc::dealloc(ptr.as_ptr(), layout(cap)) };
    }

    /// Pop a free block of `class`, adjusting the budget count.
    fn pop(&self, class: usize) -> Option<NonNull<u8>> {
        let mut st = self.state.lock();
        let p = st.classes[class].free.pop()?;
        st.pooled_bytes -= class_size(class) as u64;
        Some(p)
    }

    /// Free every pooled block.
    fn trim(&self) {
        let mut drained = Vec::new();
        {
            let mut st = self.state.lock();
            st.pooled_bytes = 0;
            for (class, list) in st.classes.iter_mut().enumerate() {
                drained.extend(std::mem::take(&mut list.free).into_iter().map(|p| (p, class)));
            }
        }
        for (ptr, class) in drained {
            // SAFETY: an owned block of `class`, allocated with layout(class_size(class)).
            unsafe { alloc::dealloc(ptr.as_ptr(), layout(class_size(class))) };
        }
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        self.trim();
    }
}

/// Number of shards (a power of two; two under the loom model checker, to
/// keep its state space small while still exercising stealing).
const SHARDS: usize = if cfg!(loom) { 2 } else { 8 };

/// The shard of the calling thread: assigned round-robin at first use.
fn my_shard() -> usize {
    crate::sync::thread_slot() % SHARDS
}

/// A thread-safe pool of page buffers. Cloning shares the pool.
#[derive(Clone)]
pub struct PageAllocator {
    shards: Arc<[Arc<Shard>; SHARDS]>,
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
        let shards = std::array::from_fn(|_| {
            Arc::new(Shard {
                state: Mutex::new(ShardState {
                    classes: std::array::from_fn(|_| ClassList::default()),
                    pooled_bytes: 0,
                    unpooled: (0, 0, 0),
                }),
                budget: budget / SHARDS as u64,
            })
        });
        Self { shards: Arc::new(shards) }
    }

    /// A zeroed buffer of `len` bytes (1 ≤ len), 64-byte aligned.
    ///
    /// # Errors
    /// [`crate::Error::InvalidPage`] for a zero or impossibly large length;
    /// [`crate::Error::InvalidPage`] too when the system is out of memory.
    pub fn alloc(&self, len: usize) -> crate::Result<PageBuf> {
        let (buf, reused) = self.take(len)?;
        if reused {
            // SAFETY: the block has `cap >= len` writable bytes owned by `buf`.
            unsafe { std::ptr::write_bytes(buf.ptr.as_ptr(), 0, len) };
        }
        Ok(buf)
    }

    /// A buffer of `len` bytes whose contents are those of a fresh (zeroed)
    /// or reused block (`true`): always initialised bytes (every block
    /// starts zeroed and is only written through slices), but stale ones
    /// when reused, so callers overwrite every byte before handing it out.
    fn take(&self, len: usize) -> crate::Result<(PageBuf, bool)> {
        if len == 0 {
            return Err(crate::Error::InvalidPage { reason: "page length must be at least 1 byte".into() });
        }
        let cap = capacity_for(len).ok_or_else(|| crate::Error::InvalidPage {
            reason: format!("page length {len} exceeds the address space"),
        })?;
        let home_at = my_shard();
        let home = &self.shards[home_at];
        let oom = || crate::Error::InvalidPage { reason: format!("out of memory allocating {cap} bytes") };
        let Some(class) = class_of(len) else {
            // SAFETY: layout has non-zero size (cap >= len >= 1).
            let ptr = NonNull::new(unsafe { alloc::alloc_zeroed(layout(cap)) }).ok_or_else(oom)?;
            let mut st = home.state.lock();
            st.unpooled.0 += 1;
            st.unpooled.2 += cap as u64;
            drop(st);
            return Ok((PageBuf { ptr, len, cap, shard: Arc::clone(home) }, false));
        };
        let mut st = home.state.lock();
        st.classes[class].taken += 1;
        let mut reused = st.classes[class].free.pop();
        if reused.is_some() {
            st.pooled_bytes -= cap as u64;
            st.classes[class].hits += 1;
            drop(st);
        } else {
            // Steal from another shard before asking the system.
            drop(st);
            reused = (1..SHARDS).find_map(|k| self.shards[(home_at + k) % SHARDS].pop(class));
            let mut st = home.state.lock();
            if reused.is_some() {
                st.classes[class].hits += 1;
            } else {
                st.classes[class].misses += 1;
            }
        }
        let hit = reused.is_some();
        let ptr = match reused {
            // The block came from a free list of this class: `cap` writable
            // bytes, now owned by the new buffer.
            Some(ptr) => ptr,
            None => {
                // SAFETY: layout has non-zero size (cap >= MIN_CLASS).
                match NonNull::new(unsafe { alloc::alloc_zeroed(layout(cap)) }) {
                    Some(p) => p,
                    None => {
                        home.state.lock().classes[class].taken -= 1;
                        return Err(oom());
                    }
                }
            }
        };
        Ok((PageBuf { ptr, len, cap, shard: Arc::clone(home) }, hit))
    }

    /// A buffer holding a copy of `bytes` (copied in once, not zeroed first).
    ///
    /// # Errors
    /// As [`PageAllocator::alloc`].
    pub fn alloc_copy(&self, bytes: &[u8]) -> crate::Result<PageBuf> {
        let (mut buf, _) = self.take(bytes.len())?;
        buf.copy_from_slice(bytes);
        Ok(buf)
    }

    /// Current statistics (summed over shards; exact once concurrent calls
    /// have returned).
    pub fn stats(&self) -> AllocStats {
        let mut st = AllocStats::default();
        for shard in self.shards.iter() {
            let s = shard.state.lock();
            st.pooled_bytes += s.pooled_bytes;
            for (class, l) in s.classes.iter().enumerate() {
                st.pool_hits += l.hits;
                st.pool_misses += l.misses;
                // A buffer is taken and returned through its home shard.
                let live = l.taken - l.returned;
                st.live_buffers += live;
                st.live_bytes += live * class_size(class) as u64;
            }
            st.live_buffers += s.unpooled.0 - s.unpooled.1;
            st.live_bytes += s.unpooled.2;
            st.pool_misses += s.unpooled.0;
        }
        st
    }

    /// Free every pooled (unused) buffer.
    pub fn trim(&self) {
        for shard in self.shards.iter() {
            shard.trim();
        }
    }
}

/// An owned, 64-byte-aligned byte buffer from a [`PageAllocator`]; returns to
/// the pool when dropped. Dereferences to `[u8]` of its requested length.
pub struct PageBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
    /// The home shard: the block goes back to its free lists.
    shard: Arc<Shard>,
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
        self.shard.release(self.ptr, self.cap);
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
    fn copies_replace_every_stale_byte() {
        let a = PageAllocator::new(8 << 20);
        let mut b = a.alloc(200).unwrap();
        b.fill(0xEE);
        drop(b);
        let src: Vec<u8> = (0..150u8).collect();
        let c = a.alloc_copy(&src).unwrap();
        assert_eq!(&c[..], &src[..]);
        assert_eq!(a.stats().pool_hits, 1, "the stale block was reused");
        drop(c);
        assert!(a.alloc(256).unwrap().iter().all(|&x| x == 0), "plain allocations are zeroed");
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

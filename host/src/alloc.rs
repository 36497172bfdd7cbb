//! Size-classed, pooled, 64-byte-aligned page buffers.
//!
//! Page bytes live in [`PageBuf`]s handed out by a [`PageAllocator`]. Requests
//! up to [`MAX_POOLED_CLASS`] bytes are rounded up to a power-of-two class;
//! a dropped buffer goes back to its class's free list in its home shard
//! (while that shard holds less than its share of the byte budget) and is
//! handed out again, zeroed, by the next request of that class. Larger
//! buffers are allocated and freed directly. On Linux, blocks of 256 KiB
//! and more come from populated private mappings (zeroed and resident in
//! one call) that start on a 2 MiB boundary and are advised for
//! transparent huge pages; a class under 2 MiB is cut from one such
//! mapping, its spare blocks going to the class's free list. The rest come
//! from the global allocator.
//!
//! In front of the shards, each thread keeps at most one free buffer of
//! each class up to [`MAX_CACHED_CLASS`] (at most 128 KiB a thread, outside
//! the budget): a thread that frees and allocates pages of one size in turn
//! takes no lock and touches no shared cache line. The cache serves the
//! allocator the thread used last and goes back to the shards when the
//! thread uses another allocator or exits.
//!
//! This module, `simd` and `gpu/` are the only places with `unsafe` code.

use crate::sync::{AtomicU64, Mutex, Ordering};

use std::alloc::{self, Layout};
use std::cell::RefCell;
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
    /// Bytes held in the free lists and the thread caches, ready for reuse.
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
    /// The pool's id ([`Pool::id`]): a thread cache keeps only buffers of
    /// the pool it serves.
    pool: u64,
}

// SAFETY: the raw pointers in the free lists are exclusively owned, unaliased
// heap blocks; every access to a list goes through the shard's mutex.
unsafe impl Send for Shard {}
// SAFETY: as above; shared access only reaches the lists through the mutex.
unsafe impl Sync for Shard {}

impl Shard {
    /// Return a block of `cap` bytes: to its class's free list while the
    /// shard's budget allows, otherwise to the system. `count`: count the
    /// return here (a thread cache handing a block on counted it already; a
    /// spare block of a fresh mapping was never taken).
    fn release(&self, ptr: NonNull<u8>, cap: usize, count: bool) {
        let mut st = self.state.lock();
        match class_of(cap).filter(|&c| class_size(c) == cap) {
            Some(class) => {
                st.classes[class].returned += u64::from(count);
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
        // SAFETY: ptr was allocated by sys_alloc_zeroed(cap) and is no
        // longer used.
        unsafe { sys_free(ptr, cap) };
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
            // SAFETY: an owned block of `class`, allocated by
            // sys_alloc_zeroed(class_size(class)).
            unsafe { sys_free(ptr, class_size(class)) };
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

/// What the clones of one [`PageAllocator`] share.
struct Pool {
    shards: [Arc<Shard>; SHARDS],
    /// Unique for the life of the process (never reused, unlike an address).
    id: u64,
    /// The counters of the thread caches serving this pool, and the sums of
    /// those whose thread has moved on.
    caches: Mutex<(Vec<Arc<CacheCounters>>, CacheTotals)>,
}

/// A thread-safe pool of page buffers. Cloning shares the pool.
#[derive(Clone)]
pub struct PageAllocator {
    pool: Arc<Pool>,
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

/// Blocks of at least this many bytes are mapped straight from the
/// operating system, with their memory populated at once. The global
/// allocator can only clear a block aligned past 16 bytes with a `memset`
/// after allocating it, touching every page one fault at a time; a
/// populated mapping arrives zeroed and resident in one call.
#[cfg(all(target_os = "linux", not(miri), not(loom)))]
const MAP_MIN: usize = 256 << 10;

/// Mapped blocks start on a boundary of this size (the x86-64 and AArch64
/// transparent huge page), and the kernel is asked to back them with huge
/// pages: one TLB entry per 2 MiB, and memory that is physically
/// contiguous, so a page of 1 MiB spreads evenly over the cache's sets
/// instead of piling, 4 KiB frame by frame, into some of them (measured on
/// a Sapphire Rapids class host: a sparse apply over a 1 MiB page ran at
/// 0.43 to 0.79 of memcpy on 4 KiB frames, 0.76 to 0.80 on huge pages).
/// A mapped class smaller than this is cut from one such chunk, the
/// chunk's other blocks going to the class's free list, when the shard's
/// budget can hold them ([`CARVE_BUDGET`]); otherwise it is mapped alone.
#[cfg(all(target_os = "linux", not(miri), not(loom)))]
const CHUNK: usize = 2 << 20;

/// Shard budgets from which blocks under a chunk are cut from one: a
/// smaller budget would free most of the chunk at once, after paying to
/// zero it.
const CARVE_BUDGET: u64 = 2 << 20;

/// A zeroed block of `cap` bytes (`cap >= 1`, a multiple of
/// [`PAGE_ALIGN`]), aligned to [`PAGE_ALIGN`]; null when out of memory.
/// With `spare`, a mapped block under [`CHUNK`] is cut from a chunk and the
/// chunk's other blocks of `cap` bytes (zeroed, resident, each freed by
/// `sys_free(_, cap)`) are handed to it; without, such a block is mapped
/// alone, on small pages.
fn sys_alloc_zeroed(cap: usize, spare: Option<&mut dyn FnMut(NonNull<u8>)>) -> *mut u8 {
    #[cfg(all(target_os = "linux", not(miri), not(loom)))]
    if cap >= MAP_MIN {
        if cap >= CHUNK {
            return map_chunks(cap);
        }
        let Some(spare) = spare else {
            return map_populated(cap);
        };
        let start = map_chunks(CHUNK);
        if !start.is_null() {
            for at in (cap..CHUNK).step_by(cap) {
                // SAFETY: at < CHUNK: inside the mapping, which is not null.
                spare(unsafe { NonNull::new_unchecked(start.add(at)) });
            }
        }
        return start;
    }
    let _ = spare;
    // SAFETY: the layout has a non-zero size (cap >= 1).
    unsafe { alloc::alloc_zeroed(layout(cap)) }
}

/// A populated private mapping of `len` bytes (page-aligned, zeroed,
/// resident); null when out of memory.
#[cfg(all(target_os = "linux", not(miri), not(loom)))]
fn map_populated(len: usize) -> *mut u8 {
    // SAFETY: a new private anonymous mapping touches no existing memory.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

/// A private mapping of `len` bytes starting on a [`CHUNK`] boundary,
/// advised for huge pages and populated (zeroed, resident); null when out
/// of memory.
#[cfg(all(target_os = "linux", not(miri), not(loom)))]
fn map_chunks(len: usize) -> *mut u8 {
    let Some(span) = len.checked_add(CHUNK) else {
        return std::ptr::null_mut();
    };
    // SAFETY: a new private anonymous mapping touches no existing memory.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return std::ptr::null_mut();
    }
    let head = (raw as usize).next_multiple_of(CHUNK) - raw as usize;
    let tail = span - head - len;
    // SAFETY: `raw .. raw + span` is the mapping made just above and no one
    // else knows it; `start .. start + len` lies inside it (head < CHUNK),
    // and only the parts before and after are unmapped.
    unsafe {
        let start = raw.cast::<u8>().add(head);
        if head > 0 {
            libc::munmap(raw, head);
        }
        if tail > 0 {
            libc::munmap(start.add(len).cast(), tail);
        }
        // Advice only: without transparent huge pages (or with them off)
        // the block is made of small pages, as any mapping is.
        libc::madvise(start.cast(), len, libc::MADV_HUGEPAGE);
        // Resident and zeroed now, as MAP_POPULATE would make it; kernels
        // before 5.14 lack the advice and get one write per small page.
        if libc::madvise(start.cast(), len, libc::MADV_POPULATE_WRITE) != 0 {
            for at in (0..len).step_by(4096) {
                std::ptr::write_volatile(start.add(at), 0);
            }
        }
        start
    }
}

/// Free a block of [`sys_alloc_zeroed`].
///
/// # Safety
/// `ptr` came from `sys_alloc_zeroed(cap)` with this `cap` and is not used
/// again.
unsafe fn sys_free(ptr: NonNull<u8>, cap: usize) {
    #[cfg(all(target_os = "linux", not(miri), not(loom)))]
    if cap >= MAP_MIN {
        // SAFETY: the whole mapping of `cap` bytes made for this block (a
        // whole mapping never needs splitting, so munmap cannot fail).
        unsafe { libc::munmap(ptr.as_ptr().cast(), cap) };
        return;
    }
    // SAFETY: allocated with layout(cap) by the global allocator.
    unsafe { alloc::dealloc(ptr.as_ptr(), layout(cap)) }
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
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let shards = std::array::from_fn(|_| {
            Arc::new(Shard {
                state: Mutex::new(ShardState {
                    classes: std::array::from_fn(|_| ClassList::default()),
                    pooled_bytes: 0,
                    unpooled: (0, 0, 0),
                }),
                budget: budget / SHARDS as u64,
                pool: id,
            })
        });
        Self { pool: Arc::new(Pool { shards, id, caches: Mutex::new((Vec::new(), CacheTotals::default())) }) }
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
        if let Some((ptr, shard)) = cache_take(&self.pool, cap) {
            return Ok((PageBuf { ptr, len, cap, shard: Some(shard) }, true));
        }
        let home_at = my_shard();
        let home = &self.pool.shards[home_at];
        let oom = || crate::Error::InvalidPage { reason: format!("out of memory allocating {cap} bytes") };
        let Some(class) = class_of(len) else {
            let ptr = NonNull::new(sys_alloc_zeroed(cap, None)).ok_or_else(oom)?;
            let mut st = home.state.lock();
            st.unpooled.0 += 1;
            st.unpooled.2 += cap as u64;
            drop(st);
            return Ok((PageBuf { ptr, len, cap, shard: Some(Arc::clone(home)) }, false));
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
            reused = (1..SHARDS).find_map(|k| self.pool.shards[(home_at + k) % SHARDS].pop(class));
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
            // A block cut from a larger mapping when the shard's budget
            // can hold its siblings: they go to this class's free list, as
            // freed blocks do (not counted as returns: they were never
            // taken).
            None => match NonNull::new(sys_alloc_zeroed(
                cap,
                (home.budget >= CARVE_BUDGET).then_some(&mut |p| home.release(p, cap, false)),
            )) {
                Some(p) => p,
                None => {
                    home.state.lock().classes[class].taken -= 1;
                    return Err(oom());
                }
            },
        };
        Ok((PageBuf { ptr, len, cap, shard: Some(Arc::clone(home)) }, hit))
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
        // Taken and returned counts add up over the shards and the thread
        // caches (a buffer may be taken through one and returned through
        // the other), so live figures are differences of the sums.
        let mut t = CacheTotals::default();
        for shard in self.pool.shards.iter() {
            let s = shard.state.lock();
            st.pooled_bytes += s.pooled_bytes;
            for (class, l) in s.classes.iter().enumerate() {
                st.pool_hits += l.hits;
                st.pool_misses += l.misses;
                t.taken += l.taken;
                t.taken_bytes += l.taken * class_size(class) as u64;
                t.returned += l.returned;
                t.returned_bytes += l.returned * class_size(class) as u64;
            }
            st.live_buffers += s.unpooled.0 - s.unpooled.1;
            st.live_bytes += s.unpooled.2;
            st.pool_misses += s.unpooled.0;
        }
        {
            let caches = self.pool.caches.lock();
            t.add(&caches.1);
            for c in &caches.0 {
                t.add(&c.totals());
            }
        }
        st.pool_hits += t.hits;
        st.pooled_bytes += t.pooled;
        st.live_buffers += t.taken.wrapping_sub(t.returned);
        st.live_bytes += t.taken_bytes.wrapping_sub(t.returned_bytes);
        st
    }

    /// Free every pooled (unused) buffer: the shards' free lists and the
    /// calling thread's cache (other threads' caches, at most one buffer
    /// per class each, stay with their threads).
    pub fn trim(&self) {
        cache_flush(self.pool.id);
        for shard in self.pool.shards.iter() {
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
    /// The home shard: the block goes back to its free lists (or to the
    /// dropping thread's cache). `None` only inside `drop`.
    shard: Option<Arc<Shard>>,
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
        let Some(shard) = self.shard.take() else { return };
        if let Err(shard) = cache_put(self.ptr, self.cap, shard) {
            shard.release(self.ptr, self.cap, true);
        }
    }
}

// ---------------------------------------------------------------------------
// Thread caches
// ---------------------------------------------------------------------------

/// Largest class a thread cache keeps (64 KiB): with one buffer per class
/// from [`MIN_CLASS`] up, a cache holds less than 128 KiB.
pub const MAX_CACHED_CLASS: usize = 64 << 10;
/// Classes a thread cache keeps: none under the loom model checker, whose
/// models check the shards' shared lists.
const CACHED_CLASSES: usize = if cfg!(loom) {
    0
} else {
    (MAX_CACHED_CLASS.trailing_zeros() - MIN_CLASS.trailing_zeros() + 1) as usize
};

/// Sums of cache counters.
#[derive(Clone, Copy, Debug, Default)]
struct CacheTotals {
    hits: u64,
    taken: u64,
    taken_bytes: u64,
    returned: u64,
    returned_bytes: u64,
    pooled: u64,
}

impl CacheTotals {
    fn add(&mut self, o: &CacheTotals) {
        self.hits += o.hits;
        self.taken += o.taken;
        self.taken_bytes += o.taken_bytes;
        self.returned += o.returned;
        self.returned_bytes += o.returned_bytes;
        self.pooled += o.pooled;
    }
}

/// The counters of one thread's cache for one pool. Only that thread
/// writes them (a load and a store, no read-modify-write); `stats` reads
/// them from any thread.
#[derive(Default)]
struct CacheCounters {
    hits: AtomicU64,
    taken_bytes: AtomicU64,
    returned: AtomicU64,
    returned_bytes: AtomicU64,
    pooled: AtomicU64,
}

impl CacheCounters {
    /// `c += by` by the owning thread.
    fn bump(c: &AtomicU64, by: u64) {
        c.store(c.load(Ordering::Relaxed).wrapping_add(by), Ordering::Relaxed);
    }

    fn totals(&self) -> CacheTotals {
        let hits = self.hits.load(Ordering::Relaxed);
        CacheTotals {
            hits,
            // Every buffer a cache hands out was a hit.
            taken: hits,
            taken_bytes: self.taken_bytes.load(Ordering::Relaxed),
            returned: self.returned.load(Ordering::Relaxed),
            returned_bytes: self.returned_bytes.load(Ordering::Relaxed),
            pooled: self.pooled.load(Ordering::Relaxed),
        }
    }
}

/// One thread's cache: the pool it serves, its counters there, and at
/// most one free buffer per class (with the buffer's home shard).
#[derive(Default)]
struct ThreadCache {
    /// [`Pool::id`] of the pool served; 0 when none.
    pool: u64,
    counters: Option<Arc<CacheCounters>>,
    slots: [Option<(NonNull<u8>, Arc<Shard>)>; CACHED_CLASSES],
}

impl ThreadCache {
    /// Give every cached buffer back to its shard and serve no pool.
    fn flush(&mut self) {
        let counters = self.counters.take();
        for (class, slot) in self.slots.iter_mut().enumerate() {
            if let Some((ptr, shard)) = slot.take() {
                if let Some(c) = &counters {
                    CacheCounters::bump(&c.pooled, (class_size(class) as u64).wrapping_neg());
                }
                shard.release(ptr, class_size(class), false);
            }
        }
        self.pool = 0;
    }

    /// Serve `pool`, registering fresh counters with it.
    fn bind(&mut self, pool: &Pool) {
        self.flush();
        let mine = Arc::new(CacheCounters::default());
        {
            let mut caches = pool.caches.lock();
            let (list, retired) = &mut *caches;
            // Fold the counters of caches that moved on (their thread
            // dropped its reference; get_mut synchronises with that drop).
            list.retain_mut(|c| match Arc::get_mut(c) {
                Some(done) => {
                    retired.add(&done.totals());
                    false
                }
                None => true,
            });
            list.push(Arc::clone(&mine));
        }
        self.counters = Some(mine);
        self.pool = pool.id;
    }
}

impl Drop for ThreadCache {
    fn drop(&mut self) {
        self.flush();
    }
}

thread_local! {
    static CACHE: RefCell<ThreadCache> = RefCell::new(ThreadCache::default());
}

/// The cached class of a `cap`-byte block, if caches keep it.
fn cached_class(cap: usize) -> Option<usize> {
    class_of(cap).filter(|&c| c < CACHED_CLASSES && class_size(c) == cap)
}

/// A free buffer of capacity `cap` from the calling thread's cache, if it
/// serves `pool` and holds one (it starts serving `pool` otherwise).
fn cache_take(pool: &Pool, cap: usize) -> Option<(NonNull<u8>, Arc<Shard>)> {
    let class = cached_class(cap)?;
    CACHE
        .try_with(|cell| {
            let mut cache = cell.try_borrow_mut().ok()?;
            if cache.pool != pool.id {
                cache.bind(pool);
                return None;
            }
            let taken = cache.slots[class].take()?;
            if let Some(c) = &cache.counters {
                CacheCounters::bump(&c.hits, 1);
                CacheCounters::bump(&c.taken_bytes, cap as u64);
                CacheCounters::bump(&c.pooled, (cap as u64).wrapping_neg());
            }
            Some(taken)
        })
        .ok()
        .flatten()
}

/// Keep a freed block in the calling thread's cache; gives the shard back
/// when the cache does not take it (another pool, a class it does not
/// keep, its slot full, or the thread exiting).
fn cache_put(ptr: NonNull<u8>, cap: usize, shard: Arc<Shard>) -> Result<(), Arc<Shard>> {
    let Some(class) = cached_class(cap) else { return Err(shard) };
    let mut shard = Some(shard);
    let _ = CACHE.try_with(|cell| {
        let Ok(mut cache) = cell.try_borrow_mut() else { return };
        let Some(s) = shard.take_if(|s| cache.pool == s.pool && cache.slots[class].is_none()) else {
            return;
        };
        if let Some(c) = &cache.counters {
            CacheCounters::bump(&c.returned, 1);
            CacheCounters::bump(&c.returned_bytes, cap as u64);
            CacheCounters::bump(&c.pooled, cap as u64);
        }
        cache.slots[class] = Some((ptr, s));
    });
    shard.map_or(Ok(()), Err)
}

/// Give the calling thread's cache back to the shards if it serves the
/// pool `pool`.
fn cache_flush(pool: u64) {
    let _ = CACHE.try_with(|cell| {
        if let Ok(mut cache) = cell.try_borrow_mut() {
            if cache.pool == pool {
                cache.flush();
            }
        }
    });
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
        // 256 bytes per shard; the first free goes to this thread's cache,
        // the others to this thread's shard, which keeps two and frees one.
        let a = PageAllocator::new(256 * SHARDS as u64);
        let bufs: Vec<_> = (0..4).map(|_| a.alloc(128).unwrap()).collect();
        drop(bufs);
        assert_eq!(a.stats().pooled_bytes, 128 + 256);
        assert_eq!(a.stats().live_bytes, 0);
        a.trim();
        assert_eq!(a.stats().pooled_bytes, 0);
        // Classes above the cached ones go straight to the shard.
        let big: Vec<_> = (0..2).map(|_| a.alloc(MAX_CACHED_CLASS * 2).unwrap()).collect();
        drop(big);
        assert_eq!(a.stats().pooled_bytes, 0, "over the shard's budget: both freed");
    }

    #[test]
    fn thread_cache_hands_back_the_last_freed_buffer() {
        let a = PageAllocator::new(1 << 20);
        let first = a.alloc(4096).unwrap();
        let p = first.as_ptr();
        drop(first);
        for i in 0..10u8 {
            let mut b = a.alloc(4000).unwrap();
            assert_eq!(b.as_ptr(), p, "round {i}: the cached buffer");
            assert!(b.iter().all(|&x| x == 0), "round {i}: zeroed");
            b.fill(i + 1);
        }
        let s = a.stats();
        assert_eq!((s.pool_hits, s.pool_misses, s.live_buffers, s.live_bytes), (10, 1, 0, 0));
        assert_eq!(s.pooled_bytes, 4096);
        // A second buffer of the class finds the slot taken: the shard keeps it.
        let (x, y) = (a.alloc(4096).unwrap(), a.alloc(4096).unwrap());
        assert_ne!(x.as_ptr(), y.as_ptr());
        drop((x, y));
        let s = a.stats();
        assert_eq!((s.live_buffers, s.pooled_bytes), (0, 2 * 4096));
        a.trim();
        assert_eq!(a.stats().pooled_bytes, 0);
    }

    #[test]
    fn buffers_move_between_threads_and_pools_without_loss() {
        let (a, b) = (PageAllocator::new(1 << 20), PageAllocator::new(1 << 20));
        // Allocated here, freed on a thread whose cache serves the same
        // pool, then by a thread serving another pool, then at its exit.
        let here = a.alloc(256).unwrap();
        let t = {
            let (a, b) = (a.clone(), b.clone());
            std::thread::spawn(move || {
                drop(a.alloc(256).unwrap());
                drop(here);
                let mut mine = a.alloc(256).unwrap();
                mine.fill(3);
                drop(b.alloc(256).unwrap()); // now serves b
                drop(mine); // an a buffer: to its shard, not b's cache
                a.alloc(512).unwrap() // serves a again; returned below
            })
        };
        let back = t.join().unwrap();
        assert_eq!(b.stats().live_buffers, 0);
        assert_eq!(a.stats().live_buffers, 1);
        drop(back);
        for pool in [&a, &b] {
            let s = pool.stats();
            assert_eq!((s.live_buffers, s.live_bytes), (0, 0), "{s:?}");
            pool.trim();
            // The exited thread's cache went back to the shards at its exit.
            assert_eq!(pool.stats().pooled_bytes, 0, "{:?}", pool.stats());
        }
        // Alternating pools on one thread keeps each pool's buffers apart.
        for i in 0..20 {
            let (x, y) = (a.alloc(64 + i).unwrap(), b.alloc(64 + i).unwrap());
            drop((y, x));
        }
        for pool in [&a, &b] {
            assert_eq!(pool.stats().live_buffers, 0);
            pool.trim();
            assert_eq!(pool.stats().pooled_bytes, 0);
        }
    }

    #[test]
    #[cfg(all(target_os = "linux", not(miri), not(loom)))]
    fn mapped_classes_are_cut_from_aligned_chunks() {
        let a = PageAllocator::new(64 << 20);
        // A 1 MiB block starts a chunk; the other half waits in the pool.
        let mut b = a.alloc(1 << 20).unwrap();
        assert_eq!(b.as_ptr() as usize % CHUNK, 0);
        assert_eq!(a.stats().pooled_bytes, 1 << 20);
        let mut c = a.alloc(1 << 20).unwrap();
        assert_eq!(c.as_ptr() as usize, b.as_ptr() as usize + (1 << 20), "the chunk's second block");
        assert!(c.iter().all(|&x| x == 0));
        b.fill(1);
        c.fill(2);
        assert!(b.iter().all(|&x| x == 1) && c.iter().all(|&x| x == 2), "the halves do not overlap");
        let s = a.stats();
        assert_eq!((s.pool_hits, s.pool_misses, s.pooled_bytes, s.live_bytes), (1, 1, 0, 2 << 20));
        // Eight blocks of 256 KiB from one chunk, the ninth from a new one.
        let small: Vec<_> = (0..9).map(|_| a.alloc(256 << 10).unwrap()).collect();
        let mut starts: Vec<usize> = small[..8].iter().map(|b| b.as_ptr() as usize).collect();
        starts.sort_unstable();
        assert_eq!(starts[0] % CHUNK, 0);
        assert!(starts.windows(2).all(|w| w[1] - w[0] == 256 << 10));
        assert_eq!(small[8].as_ptr() as usize % CHUNK, 0);
        assert_eq!(a.stats().pool_misses, 3);
        // Blocks of a chunk and more, pooled or not, start on a chunk boundary.
        for len in [3 << 20, MAX_POOLED_CLASS + 1] {
            let mut big = a.alloc(len).unwrap();
            assert_eq!(big.as_ptr() as usize % CHUNK, 0, "{len}");
            big.fill(3);
            assert!(big.iter().all(|&x| x == 3));
        }
        drop((b, c, small));
        a.trim();
        assert_eq!(a.stats().pooled_bytes, 0);
    }

    #[test]
    #[cfg(all(target_os = "linux", not(miri), not(loom)))]
    fn spare_blocks_over_the_budget_are_freed() {
        // 2 MiB a shard: a 1 MiB block and its spare fill this thread's.
        let a = PageAllocator::new(SHARDS as u64 * CHUNK as u64);
        drop(a.alloc(1 << 20).unwrap());
        assert_eq!(a.stats().pooled_bytes, 2 << 20);
        let mut b = a.alloc(512 << 10).unwrap();
        assert_eq!(b.as_ptr() as usize % CHUNK, 0, "cut from a chunk");
        assert_eq!(a.stats().pooled_bytes, 2 << 20, "its three spare blocks went back");
        b.fill(9);
        assert!(b.iter().all(|&x| x == 9), "the kept block survives its siblings' unmapping");
        drop(b);
        let s = a.stats();
        assert_eq!((s.live_bytes, s.live_buffers), (0, 0));
        // Without the budget for spares, a block is mapped alone.
        let none = PageAllocator::new(0);
        let c = none.alloc(512 << 10).unwrap();
        assert!(c.iter().all(|&x| x == 0));
        assert_eq!(none.stats().pooled_bytes, 0);
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

//! Heap allocations on the write path: a one-page write allocates nothing
//! of its own (its payload is the caller's; the log buffer grows now and
//! then, by doubling); a write that propagates allocates one vector.
//!
//! A counting global allocator sees every allocation of this test binary;
//! only those made by the test's own thread inside the measured window
//! count (the log's and the state's background threads are left out).

use mmsb::Durability;
use mmsb::{Config, Mmsb, PageId, PageSpec, Payload};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

fn note() {
    // `try_with`: the allocator may run while thread-locals are torn down.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counter only reads and writes thread-locals of plain integers.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Allocations made by this thread while `f` runs.
fn allocations(f: impl FnOnce()) -> u64 {
    COUNT.with(|c| c.set(0));
    COUNTING.with(|on| on.set(true));
    f();
    COUNTING.with(|on| on.set(false));
    COUNT.with(Cell::get)
}

fn copy(ins: &[&[u8]], out: &mut [u8]) {
    out.copy_from_slice(ins[0]);
}

/// Writes `n` full payloads of `len` bytes to `page` to warm up (the log's
/// buffers reach their working size), then `n` more; returns the
/// allocations this thread made during the second `n` (payloads built
/// before).
fn allocations_of_writes(s: &Mmsb, page: PageId, len: usize, n: u32) -> mmsb::Result<u64> {
    let mut payloads: Vec<Payload> = (0..2 * n).map(|i| Payload::Full(vec![i as u8; len])).collect();
    for pl in payloads.drain(..n as usize) {
        s.update_page(page, pl)?;
    }
    let mut res = Ok(());
    let count = allocations(|| {
        for pl in payloads.drain(..) {
            if let Err(e) = s.update_page(page, pl) {
                res = Err(e);
                break;
            }
        }
    });
    res.map(|()| count)
}

#[test]
fn a_one_page_write_allocates_nothing_beyond_its_payload() -> mmsb::Result<()> {
    let s = Mmsb::start(Config::temporary().durability(Durability::None))?;
    let p = s.create_page(PageSpec::new(64))?;
    let n = 2_000;
    let count = allocations_of_writes(&s, p, 64, n)?;
    // Amortized growth of the log buffer only (it doubles).
    assert!(count <= 3, "{count} allocations in {n} one-page writes");
    Ok(())
}

#[test]
fn a_write_with_a_derived_chain_allocates_a_bounded_amount() -> mmsb::Result<()> {
    let s = Mmsb::start(Config::temporary().durability(Durability::None))?;
    s.register_function("copy", 1, copy)?;
    let src = s.create_page(PageSpec::new(8))?;
    let mut prev = src;
    for _ in 0..10 {
        let d = s.create_page(PageSpec::new(8))?;
        s.declare_derived(d, "copy", &[prev])?;
        prev = d;
    }
    let n = 2_000;
    let count = allocations_of_writes(&s, src, 8, n)?;
    assert_eq!(s.read_page(prev)?.bytes(), &[(2 * n - 1) as u8; 8]);
    // The locks of the pages a propagation writes are gathered in one
    // vector per write; nothing else is allocated per write or per node.
    assert!(count <= u64::from(n) + 3, "{count} allocations in {n} writes through a chain of 10");
    Ok(())
}

//! Model checking of the allocator's sharded free lists with loom.
//!
//! Run with `bash scripts/loom.sh` (`RUSTFLAGS="--cfg loom"`,
//! `LOOM_MAX_PREEMPTIONS=2`). Under loom the allocator has two shards, so
//! two threads sit on different shards and an empty home list makes a thread
//! steal from the other one. Every test checks the one property a free list
//! must never break: a buffer is handed to at most one owner at a time, and
//! it is zeroed when handed out; then that the counters balance.
#![cfg(loom)]

use loom::sync::{Arc, Mutex};
use loom::thread;
use mmsb::internals::alloc::{PageAllocator, PageBuf};
use std::collections::BTreeSet;

/// Addresses of the buffers currently owned by someone.
#[derive(Clone, Default)]
struct Owners(Arc<Mutex<BTreeSet<usize>>>);

impl Owners {
    fn take(&self, a: &PageAllocator, len: usize, mark: u8) -> PageBuf {
        let mut b = a.alloc(len).expect("alloc");
        assert!(b.iter().all(|&x| x == 0), "a buffer handed out is zeroed");
        let fresh = self.0.lock().unwrap().insert(b.as_ptr() as usize);
        assert!(fresh, "buffer {:p} handed to two owners", b.as_ptr());
        b.fill(mark);
        b
    }

    fn give(&self, b: PageBuf, mark: u8) {
        assert!(b.iter().all(|&x| x == mark), "someone else wrote into an owned buffer");
        self.0.lock().unwrap().remove(&(b.as_ptr() as usize));
        drop(b);
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(2);
    }
    b.check(f);
}

/// Two threads allocate and free the same class at once.
#[test]
fn concurrent_alloc_free_same_class() {
    model(|| {
        let a = PageAllocator::new(1 << 20);
        let owners = Owners::default();
        let hs: Vec<_> = (1..=2u8)
            .map(|m| {
                let (a, o) = (a.clone(), owners.clone());
                thread::spawn(move || {
                    let b = o.take(&a, 100, m);
                    o.give(b, m);
                    let b = o.take(&a, 128, m);
                    o.give(b, m);
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        let s = a.stats();
        assert_eq!((s.live_buffers, s.live_bytes), (0, 0));
        assert_eq!(s.pool_hits + s.pool_misses, 4);
    });
}

/// A buffer freed on one shard is stolen by a thread on the other while the
/// owner's shard allocates again.
#[test]
fn steal_from_other_shard() {
    model(|| {
        let a = PageAllocator::new(1 << 20);
        let owners = Owners::default();
        // Main thread's shard gets one free buffer.
        let b = owners.take(&a, 64, 9);
        owners.give(b, 9);
        let hs: Vec<_> = (1..=2u8)
            .map(|m| {
                let (a, o) = (a.clone(), owners.clone());
                thread::spawn(move || {
                    let b = o.take(&a, 64, m);
                    o.give(b, m);
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        let s = a.stats();
        assert_eq!((s.live_buffers, s.live_bytes), (0, 0));
        assert!(s.pool_hits >= 1, "at least one thread reused the pooled buffer");
    });
}

/// ABA: thread 1 pops from a list while thread 2 takes the same buffer,
/// frees it back (re-pushing the same address) and takes it again. With a
/// lock-free list this is the classic ABA; the lists must never hand the
/// address to both threads.
#[test]
fn aba_free_and_retake_while_other_pops() {
    model(|| {
        let a = PageAllocator::new(1 << 20);
        let owners = Owners::default();
        let b = owners.take(&a, 64, 9);
        owners.give(b, 9);
        let t1 = {
            let (a, o) = (a.clone(), owners.clone());
            thread::spawn(move || {
                let b = o.take(&a, 64, 1);
                o.give(b, 1);
            })
        };
        let t2 = {
            let (a, o) = (a.clone(), owners.clone());
            thread::spawn(move || {
                let b = o.take(&a, 64, 2);
                let addr = b.as_ptr() as usize;
                o.give(b, 2);
                let b = o.take(&a, 64, 3);
                // Same address again is fine (it was freed); two owners is not.
                let _ = addr;
                o.give(b, 3);
            })
        };
        t1.join().unwrap();
        t2.join().unwrap();
        let s = a.stats();
        assert_eq!((s.live_buffers, s.live_bytes), (0, 0));
    });
}

/// The budget check races with frees on the same shard: the pool never ends
/// up holding more than its budget, and every buffer is accounted for.
#[test]
fn budget_race() {
    model(|| {
        // Budget of one 64-byte buffer per shard.
        let a = PageAllocator::new(2 * 64);
        let b1 = a.alloc(64).unwrap();
        let b2 = a.alloc(64).unwrap();
        let t = {
            let a = a.clone();
            thread::spawn(move || {
                let b = a.alloc(64).unwrap();
                drop(b);
            })
        };
        drop(b1);
        drop(b2);
        t.join().unwrap();
        let s = a.stats();
        assert_eq!((s.live_buffers, s.live_bytes), (0, 0));
        assert!(s.pooled_bytes <= 2 * 64, "pool over budget: {s:?}");
        a.trim();
        assert_eq!(a.stats().pooled_bytes, 0);
    });
}

//! The synchronisation primitives used by the allocator and the registry's
//! map, in one place so that a model checker can swap them.
//!
//! A normal build uses `parking_lot` locks and `std` atomics. A build with
//! `RUSTFLAGS="--cfg loom"` swaps in thin wrappers over `loom`'s types with
//! the same (non-poisoning) API, so the allocator's sharded free lists can be
//! model-checked (see `alloc::loom_tests` and docs/RELIABILITY.md). The page
//! cells themselves (`registry::PageCell`) stay `parking_lot` in both builds:
//! the API hands out owned `ArcRwLockReadGuard`s, which loom has no analogue of.

#[cfg(not(loom))]
pub(crate) use parking_lot::Mutex;
#[cfg(all(not(loom), feature = "engine"))]
pub(crate) use parking_lot::RwLock;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(loom)]
pub(crate) use loom_shim::{Mutex, RwLock};

/// A small per-thread number, handed out round-robin at a thread's first
/// call (the allocator maps it to a shard).
#[cfg(not(loom))]
pub(crate) fn thread_slot() -> usize {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed) as usize;
    }
    SLOT.with(|s| *s)
}

/// As above, with loom's per-execution statics and thread locals.
#[cfg(loom)]
pub(crate) fn thread_slot() -> usize {
    loom::lazy_static! {
        static ref NEXT: AtomicU64 = AtomicU64::new(0);
    }
    loom::thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed) as usize;
    }
    SLOT.with(|s| *s)
}

#[cfg(loom)]
mod loom_shim {
    //! `parking_lot`-shaped wrappers over loom's locks (no poisoning: a
    //! panic under a lock fails the model anyway).

    use std::fmt;

    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(t: T) -> Self {
            Self(loom::sync::Mutex::new(t))
        }
        pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    impl<T: Default> Default for Mutex<T> {
        fn default() -> Self {
            Self::new(T::default())
        }
    }

    impl<T> fmt::Debug for Mutex<T> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Mutex { .. }")
        }
    }

    pub(crate) struct RwLock<T>(loom::sync::RwLock<T>);

    impl<T> RwLock<T> {
        pub(crate) fn read(&self) -> loom::sync::RwLockReadGuard<'_, T> {
            self.0.read().unwrap_or_else(|e| e.into_inner())
        }
        pub(crate) fn write(&self) -> loom::sync::RwLockWriteGuard<'_, T> {
            self.0.write().unwrap_or_else(|e| e.into_inner())
        }
    }

    impl<T: Default> Default for RwLock<T> {
        fn default() -> Self {
            Self(loom::sync::RwLock::new(T::default()))
        }
    }

    impl<T> fmt::Debug for RwLock<T> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("RwLock { .. }")
        }
    }
}

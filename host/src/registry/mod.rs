//! The page registry: a concurrent map from [`PageId`] to page.
//!
//! Ids are handed out by the commit path in order (1, 2, 3, …), so the same
//! sequence of operations yields the same ids, and replay reproduces them.

mod page;
pub(crate) use page::Changed;
pub use page::Page;
pub use page::CHANGE_BLOCK;

use crate::sync::{Mutex, RwLock};
use crate::{Error, Result};
use shared_types::{Epoch, PageId};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A shared, lockable page.
pub type PageCell = Arc<parking_lot::RwLock<Page>>;

thread_local! {
    /// The page locks this thread holds a [`crate::PageRef`] on, by
    /// address (one entry per guard; a guard keeps its lock alive, and
    /// cannot leave its thread). Addresses, not page ids: ids repeat across
    /// the states of one process.
    static BORROWED: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn address(lock: &parking_lot::RwLock<Page>) -> usize {
    std::ptr::from_ref(lock) as usize
}

/// Note a [`crate::PageRef`] on `lock`, made on this thread.
pub(crate) fn note_borrow(lock: &parking_lot::RwLock<Page>) {
    let _ = BORROWED.try_with(|b| b.borrow_mut().push(address(lock)));
}

/// Note that a [`crate::PageRef`] on `lock` of this thread is gone.
pub(crate) fn note_release(lock: &parking_lot::RwLock<Page>) {
    let at = address(lock);
    let _ = BORROWED.try_with(|b| {
        let mut b = b.borrow_mut();
        if let Some(i) = b.iter().rposition(|&x| x == at) {
            b.swap_remove(i);
        }
    });
}

/// The page locks a [`crate::SharedPageRef`] holds, by address, one entry
/// per guard. Such a guard may be on any thread, so a change that would
/// write its page is refused everywhere rather than left to wait for a
/// reader that may be its own thread.
static SHARED: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());
/// Entries of [`SHARED`]: the common case (none) reads no mutex.
static SHARED_COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Note a [`crate::SharedPageRef`] on `lock`.
pub(crate) fn note_shared(lock: &parking_lot::RwLock<Page>) {
    let mut s = SHARED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    s.push(address(lock));
    SHARED_COUNT.store(s.len(), std::sync::atomic::Ordering::Release);
}

/// Note that a [`crate::SharedPageRef`] on `lock` is gone.
pub(crate) fn note_unshared(lock: &parking_lot::RwLock<Page>) {
    let at = address(lock);
    let mut s = SHARED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(i) = s.iter().rposition(|&x| x == at) {
        s.swap_remove(i);
    }
    SHARED_COUNT.store(s.len(), std::sync::atomic::Ordering::Release);
}

/// Whether a [`crate::SharedPageRef`] on `lock` exists (on any thread).
fn shared(lock: &parking_lot::RwLock<Page>) -> bool {
    if SHARED_COUNT.load(std::sync::atomic::Ordering::Acquire) == 0 {
        return false;
    }
    let at = address(lock);
    SHARED.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&at)
}

/// Whether this thread holds a [`crate::PageRef`] on `lock`, or any thread
/// a [`crate::SharedPageRef`]: a write to it would wait for itself, or
/// for a reader no one can tell the end of.
pub(crate) fn borrowed_here(lock: &parking_lot::RwLock<Page>) -> bool {
    let at = address(lock);
    BORROWED.try_with(|b| b.borrow().contains(&at)).unwrap_or(false) || shared(lock)
}

/// The write lock of page `id`: at once when it is free; an error when
/// this thread holds a [`crate::PageRef`] on it (the wait would never end);
/// otherwise once the readers on other threads are done.
///
/// # Errors
/// [`Error::PageBorrowed`].
pub(crate) fn write_page(
    cell: &parking_lot::RwLock<Page>,
    id: PageId,
) -> Result<parking_lot::RwLockWriteGuard<'_, Page>> {
    if let Some(w) = cell.try_write() {
        return Ok(w);
    }
    if borrowed_here(cell) {
        return Err(Error::PageBorrowed { page: id });
    }
    Ok(cell.write())
}

/// Concurrent id → page map with invariant checks.
#[derive(Debug, Default)]
pub struct Registry {
    pages: RwLock<BTreeMap<PageId, PageCell>>,
    /// Epochs seen by the last `verify`, to check they never go back.
    seen: Mutex<BTreeMap<PageId, Epoch>>,
}

impl Registry {
    /// The page with this id.
    ///
    /// # Errors
    /// [`Error::PageNotFound`].
    pub fn get(&self, id: PageId) -> Result<PageCell> {
        self.pages.read().get(&id).cloned().ok_or(Error::PageNotFound(id))
    }

    /// Whether a page with this id exists.
    pub fn contains(&self, id: PageId) -> bool {
        self.pages.read().contains_key(&id)
    }

    /// Add a page.
    ///
    /// # Errors
    /// [`Error::PageExists`] when the id is taken.
    pub fn insert(&self, page: Page) -> Result<PageCell> {
        let id = page.id;
        let mut map = self.pages.write();
        if map.contains_key(&id) {
            return Err(Error::PageExists(id));
        }
        let cell = Arc::new(parking_lot::RwLock::new(page));
        map.insert(id, cell.clone());
        Ok(cell)
    }

    /// Remove a page and return it.
    ///
    /// # Errors
    /// [`Error::PageNotFound`].
    pub fn remove(&self, id: PageId) -> Result<PageCell> {
        self.seen.lock().remove(&id);
        self.pages.write().remove(&id).ok_or(Error::PageNotFound(id))
    }

    /// All page ids, ascending.
    pub fn ids(&self) -> Vec<PageId> {
        self.pages.read().keys().copied().collect()
    }

    /// All pages in id order.
    pub fn cells(&self) -> Vec<(PageId, PageCell)> {
        self.pages.read().iter().map(|(k, v)| (*k, v.clone())).collect()
    }

    /// Number of pages.
    pub fn len(&self) -> usize {
        self.pages.read().len()
    }

    /// Check the invariants: each page is stored under its own id, below
    /// `next_id`; its storage has exactly its length; its epoch never went
    /// back since the last call.
    ///
    /// # Errors
    /// [`Error::Invariant`] naming the first violation.
    pub fn verify(&self, next_id: PageId) -> Result<()> {
        let map = self.pages.read();
        let mut seen = self.seen.lock();
        for (key, cell) in map.iter() {
            let p = cell.read();
            if p.id != *key {
                return Err(Error::Invariant(format!("page stored under id {key} says it is {}", p.id)));
            }
            if p.id.0 == 0 || p.id >= next_id {
                return Err(Error::Invariant(format!(
                    "page id {} outside the issued range 1..{next_id}",
                    p.id
                )));
            }
            let stored = p.storage.len();
            if stored != p.len {
                return Err(Error::Invariant(format!(
                    "page {key} has length {} but {stored} stored bytes",
                    p.len
                )));
            }
            if let Some(prev) = seen.get(key) {
                if p.epoch < *prev {
                    return Err(Error::Invariant(format!(
                        "page {key} epoch went back from {prev} to {}",
                        p.epoch
                    )));
                }
            }
            seen.insert(*key, p.epoch);
        }
        Ok(())
    }
}

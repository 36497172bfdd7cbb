//! The synchronisation primitives used by the allocator, registry and commit
//! path, in one place so that a model checker can swap them.

pub(crate) use parking_lot::Mutex;
pub(crate) use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

//! # MMSB — Memory-Mapped State Bus
//!
//! A deterministic, versioned, GPU-accelerated in-memory state fabric. State
//! lives in [pages](Page); every change is a [delta](Payload); applying a
//! delta is exact and bumps the page's [epoch](Epoch).
//!
//! | layer | module | what it does |
//! |---|---|---|
//! | API | [`api`] | [`Mmsb`] handle: create, update, query pages |
//! | deltas | [`delta`] | dense / sparse / full payloads: apply, merge, diff |
//! | pages | [`page`], [`registry`] | page records and the id → page map |
//! | graph | [`graph`], [`propagate`] | page dependencies; recompute functions; propagation |
//! | events | [`events`] | typed events of every state change, to subscribers |
//! | memory | [`alloc`] | pooled 64-byte-aligned page buffers |
//! | kernels | [`ptx`] | the PTX built from the Rust `gpu-kernels` crate |
//! | GPU | [`gpu`] | devices, device/unified pages, batched delta application |
//! | typed views | [`typed`] | read pages as `T: Pod`; writes captured as minimal deltas |
//! | persistence | [`log`], [`checkpoint`], [`codec`], [`vfs`] | write-ahead log, checkpoints, formats |
//! | history | [`replay`], [`provenance`], [`tools`] | replay, page history, the call graph of a value |
//! | monitoring | [`stats`] | counters, latency histograms, `metrics` export |
//!
//! ```
//! use mmsb::{Config, Mmsb, PageSpec, Payload};
//! # fn main() -> mmsb::Result<()> {
//! let state = Mmsb::start(Config::temporary())?;
//! let p = state.create_page(PageSpec::new(8))?;
//! state.update_page(p, Payload::Full(vec![7; 8]))?;
//! assert_eq!(state.read_page(p)?.bytes(), &[7; 8]);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub mod alloc;
pub mod api;
pub mod change;
pub mod checkpoint;
pub mod codec;
pub mod delta;
pub mod error;
pub mod events;
pub mod gpu;
pub mod graph;
mod linebuf;
pub mod log;
pub mod page;
pub mod propagate;
pub mod provenance;
pub mod ptx;
pub mod registry;
pub mod replay;
mod simd;
pub mod stats;
mod sync;
pub mod tools;
pub mod typed;
pub mod vfs;
mod write;

pub use api::{
    Config, Derivation, Mmsb, PageInfo, PageRef, Update, MAX_PROPAGATION_THREADS, MIN_SEGMENT_BYTES,
};
pub use change::Change;
pub use delta::{Delta, DenseDelta, Payload, PayloadKind, Provenance, Run, Runs, Source, SparseDelta};
pub use error::{Error, Result};
pub use events::{Event, SourceKind, Subscription};
pub use graph::EdgeKind;
pub use log::{Durability, RecoveryMode, RecoveryReport};
pub use page::{Location, Metadata, Page, PageSpec};
pub use propagate::{PropagationMode, PropagationStats, RecomputeFn};
pub use shared_types::{DeltaId, Epoch, Lsn, PageId};

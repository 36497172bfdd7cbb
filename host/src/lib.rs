//! # MMSB — Memory-Mapped State Bus
//!
//! A deterministic, versioned, GPU-accelerated in-memory state fabric. State
//! lives in [pages](Page); every change is a [delta](Payload); applying a
//! delta is exact and bumps the page's [epoch](Epoch).
//!
//! The supported API is the crate root and five public modules:
//!
//! | where | what |
//! |---|---|
//! | crate root | [`Mmsb`] (start, write, read, derive, checkpoint, stop), [`Config`], pages ([`PageSpec`], [`Page`], [`Location`]), the write vocabulary ([`Update`], [`Payload`], [`Delta`], [`Change`]; see docs/ARCHITECTURE.md's glossary), events, recovery reports, state images, [`Error`] |
//! | [`history`] | a state directory read offline: replay to an LSN or a time, page history, the provenance of a value, inspect and verify |
//! | [`typed`] | pages read and written as `T: Pod` values, writes captured as minimal deltas |
//! | [`events`] | the event stream's delivery rules |
//! | [`gpu`] | devices: probing, opening, when queued deltas reach a device ([`gpu::GpuApply`]), a page's device memory handed to another library ([`gpu::DeviceExport`]) |
//! | [`stats`] | counters, latency histograms, directory statistics, `metrics` export |
//! | [`vfs`] | the file-system seam ([`vfs::Vfs`]), the real one and a crash-simulating one |
//!
//! Everything else is private. The project's own fuzz targets, tests,
//! benchmarks and CLI reach the plumbing (formats, codecs, the log's reader
//! and writer) through the hidden `internals` feature, which is not a
//! supported API. The layers inside, bottom to top, and the path of a
//! write through them are drawn in docs/ARCHITECTURE.md.
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
// Dead-code analysis runs on the build with `internals` (the workspace's:
// tests, fuzzing and the CLI turn it on), where the plumbing is reachable.
#![cfg_attr(not(feature = "internals"), allow(dead_code))]

#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

// The layers, bottom to top, are drawn in docs/ARCHITECTURE.md: types,
// delta, alloc, storage, events, history, gpu, registry, graph, stats,
// engine, typed. Each module imports only from those below it;
// scripts/module-cycles.py checks it. The storage layer and the offline
// history above it build without the `engine` feature (and so for
// wasm32-unknown-unknown). The plumbing is private; the `internals`
// feature re-exports parts of it (see `internals` below).
mod alloc;
mod delta;
#[cfg(feature = "engine")]
mod engine;
pub mod events;
#[cfg(feature = "engine")]
pub mod gpu;
#[cfg(feature = "engine")]
mod graph;
pub mod history;
mod linebuf;
#[cfg(feature = "engine")]
mod registry;
#[cfg(feature = "engine")]
pub mod stats;
mod storage;
mod sync;
#[cfg(feature = "engine")]
pub mod typed;
mod types;
#[cfg(feature = "engine")]
#[macro_use]
mod macros;

pub use alloc::AllocStats;
pub use delta::change::{Change, EdgeKind, Update};
pub use delta::{Delta, DenseDelta, Payload, PayloadKind, Provenance, Run, Runs, Source, SparseDelta};
#[cfg(feature = "engine")]
pub use engine::handle::{Derivation, Mmsb, PageInfo, PageRef, SharedPageRef};
#[cfg(feature = "engine")]
pub use engine::open::{
    Config, DEFAULT_CHECKPOINT_CHAIN, DEFAULT_STOP_CHECKPOINT_BYTES, MAX_PROPAGATION_THREADS,
    MIN_SEGMENT_BYTES,
};
pub use events::{Event, SourceKind, Subscription};
#[cfg(feature = "engine")]
pub use graph::propagate::{PropagationMode, PropagationStats, RecomputeFn};
#[cfg(feature = "engine")]
pub use registry::{Page, CHANGE_BLOCK};
pub use shared_types::{DeltaId, Epoch, Lsn, PageId};
pub use storage::checkpoint::{CheckpointInfo, CheckpointKind};
pub use storage::codec::page::PageImage;
pub use storage::codec::Limits;
pub use storage::image::{DerivedImage, GraphImage, StateImage};
pub use storage::log::{writer::CommitSink, Durability, LogStats};
pub use storage::recovery::{Dropped, Due, RecoveryMode, RecoveryReport, TornTail};
pub use storage::vfs;
pub use types::error::{Error, Result};
pub use types::page::{Location, Metadata, PageSpec};

// The paths of the offline functions before they were gathered under
// `history`; kept so that code written against them builds.
#[doc(hidden)]
pub use history::{provenance, replay, tools};

/// The crate's plumbing, for its own fuzz targets, tests, benchmarks and
/// CLI: file formats, codecs, the log's reader and writer, checkpoints,
/// recovery, the allocator, the dependency graph's internals and the GPU
/// layer's device blocks, typed ranges and checked launches. Enabled by
/// the `internals` feature. **Not a supported API**: anything here may
/// change in any release. The supported API is the crate root and the
/// public modules (see the README's "Stability" section).
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals {
    /// The page allocator.
    pub mod alloc {
        pub use crate::alloc::*;
    }
    /// Payloads and changes, with their internals.
    pub mod delta {
        pub use crate::delta::*;
    }
    pub use crate::storage::{checkpoint, codec, files, image, log, recovery, vfs};
    /// Whether propagation runs device recomputes ahead of its level loop
    /// (on unless this turns it off): for benchmarks of the level-by-level
    /// path. Affects every state of the process.
    #[cfg(feature = "engine")]
    pub fn set_run_ahead(on: bool) {
        crate::graph::propagate::RUN_AHEAD.store(on, std::sync::atomic::Ordering::Relaxed);
    }
    /// Device blocks, typed device ranges and checked kernel launches.
    #[cfg(feature = "engine")]
    pub mod gpu {
        pub use crate::gpu::internals::*;
    }
}

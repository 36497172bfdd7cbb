//! The engine: the [`Mmsb`](handle::Mmsb) handle and the write path
//! behind it (batches, logging then applying, events, checkpoints).

mod checkpoint;
pub mod handle;
pub mod open;
pub(crate) mod write;

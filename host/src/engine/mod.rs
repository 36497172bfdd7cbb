//! The engine: the [`Mmsb`](handle::Mmsb) handle and the write path
//! behind it (batches, logging then applying, events, checkpoints).

pub mod handle;
pub(crate) mod write;

//! The criterion suite: one binary, one module per area. Every group sets
//! a `Throughput` and measures its limit (memcpy, plain allocation, raw
//! file I/O) or a peer library beside the figure.
//!
//! ```sh
//! cargo bench -p mmsb-benches --bench mmsb                 # everything
//! cargo bench -p mmsb-benches --bench mmsb -- propagate    # one area
//! cargo bench -p mmsb-benches --bench mmsb -- gpu          # GPU kernels (skips without a device)
//! ```

use criterion::{criterion_group, criterion_main, Criterion};
use std::time::Duration;

mod alloc;
mod apply;
mod checkpoint;
mod codecs;
mod gpu;
mod log;
mod propagation;
mod replay;

/// Short measurements: the suite covers many areas on small machines.
fn config() -> Criterion {
    Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500))
}

criterion_group! {
    name = benches;
    config = config();
    targets = apply::bench, codecs::bench, alloc::bench, propagation::bench, log::bench,
        checkpoint::bench, replay::bench, gpu::bench
}
criterion_main!(benches);

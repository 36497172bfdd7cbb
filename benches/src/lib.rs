//! Benchmarks for MMSB live in `benches/`.

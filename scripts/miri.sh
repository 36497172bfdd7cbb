#!/usr/bin/env bash
# Miri over the code with `unsafe` that runs on the CPU: shared-types (Pod
# layouts) and the host allocator (alloc.rs), plus the host codec and delta
# unit tests that are cheap enough under the interpreter. The PTX build is
# skipped under Miri (host/build.rs); GPU code needs a driver and is not run.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
rustup +nightly component list --installed | grep -q '^miri' || rustup +nightly component add miri rust-src
export CARGO_TARGET_DIR="${MIRI_TARGET_DIR:-target/miri}"
# Isolation off only for the clock (proptest reads it); the filesystem is not touched.
# Tree Borrows: bitvec 1.1 (the dense-mask type) performs zero-size retags
# that the older Stacked Borrows model rejects inside bitvec itself; this
# project's own unsafe code (allocator, SIMD dispatch) also passes Stacked
# Borrows (MIRIFLAGS=-Zmiri-disable-isolation bash scripts/miri.sh -- alloc::).
export MIRIFLAGS="${MIRIFLAGS:--Zmiri-disable-isolation -Zmiri-tree-borrows}"
# proptest under the interpreter: a few cases are plenty to reach every unsafe path.
export PROPTEST_CASES="${PROPTEST_CASES:-4}"
cargo +nightly miri setup
timeout "${MIRI_TIMEOUT:-900}" cargo +nightly miri test -p mmsb-shared-types
timeout "${MIRI_TIMEOUT:-900}" cargo +nightly miri test -p mmsb --lib -- alloc:: simd:: ptx:: delta::tests:: linebuf:: "$@"

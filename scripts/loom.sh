#!/usr/bin/env bash
# Model-check the allocator's sharded free lists with loom
# (host/tests/loom_alloc.rs). LOOM_MAX_PREEMPTIONS bounds the search
# (default 2); a separate target dir keeps the --cfg loom build apart.
set -euo pipefail
cd "$(dirname "$0")/.."
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}"
export RUSTFLAGS="--cfg loom ${RUSTFLAGS:-}"
export CARGO_TARGET_DIR="${LOOM_TARGET_DIR:-target/loom}"
timeout "${LOOM_TIMEOUT:-900}" cargo test -p mmsb --release --features internals --test loom_alloc -- --test-threads=2 "$@"

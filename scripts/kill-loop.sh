#!/usr/bin/env bash
# SIGKILL a writer with fsync-per-commit durability at random moments and
# check that every acknowledged commit survives (tests/src/bin/kill_loop.rs).
#   MMSB_KILLS   number of kills (default 200; thousands for a soak run)
#   MMSB_KILL_SEED  seed (default fixed; the run prints it)
set -euo pipefail
cd "$(dirname "$0")/.."
# The dev profile (opt-level 1, dependencies 2) reuses the test build.
cargo build -p mmsb-tests --bin kill_loop --quiet
exec "${CARGO_TARGET_DIR:-target}/debug/kill_loop" --kills "${MMSB_KILLS:-200}" "$@"

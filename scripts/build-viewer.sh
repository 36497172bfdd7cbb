#!/usr/bin/env bash
# Build the viewer that `mmsb serve` serves: the mmsb_web crate compiled to
# WebAssembly, its JavaScript glue, and the page's own files, into
# target/viewer/ (or $1). Nothing generated is committed.
#
#   bash scripts/build-viewer.sh [OUT_DIR]
#
# Needs the wasm32-unknown-unknown target (added here with rustup) and
# wasm-bindgen-cli of exactly the wasm-bindgen version web/Cargo.toml pins
# (installed here with cargo when missing; cached in ~/.cargo/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=${1:-$root/target/viewer}
# Keep in step with web/Cargo.toml's `wasm-bindgen = "=..."`.
wbg_version=0.2.130
if ! grep -q "^wasm-bindgen = \"=$wbg_version\"" web/Cargo.toml; then
    echo "build-viewer: web/Cargo.toml does not pin wasm-bindgen =$wbg_version" >&2
    exit 1
fi

rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || true
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$wbg_version" ]; then
    echo "build-viewer: installing wasm-bindgen-cli $wbg_version (once; cached in ~/.cargo/bin)" >&2
    # --locked when the registry has every locked version; otherwise the
    # newest compatible ones.
    cargo install wasm-bindgen-cli --version "$wbg_version" --locked \
        || cargo install wasm-bindgen-cli --version "$wbg_version"
fi

cargo build -p mmsb-web --target wasm32-unknown-unknown --profile wasm
mkdir -p "$out"
wasm-bindgen --target web --no-typescript --out-dir "$out" \
    target/wasm32-unknown-unknown/wasm/mmsb_web.wasm
cp web/viewer/index.html web/viewer/viewer.js web/viewer/viewer.css "$out/"
wasm=$(stat -c %s "$out/mmsb_web_bg.wasm")
gz=$(gzip -9 -c "$out/mmsb_web_bg.wasm" "$out/mmsb_web.js" "$out/viewer.js" "$out/index.html" "$out/viewer.css" | wc -c)
echo "build-viewer: $out (wasm $wasm bytes; the whole viewer $gz bytes gzip -9)"

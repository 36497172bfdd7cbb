#!/usr/bin/env bash
# Build the example device recompute function to PTX with the toolchain
# that builds MMSB's own kernels (stable Rust, rust-src, -Zbuild-std=core).
#
#   bash examples/device-function/build.sh [OUT.ptx]
#
# Writes target/device-function/example_kernel.ptx unless told otherwise.
# MMSB_PTX_TARGET_CPU picks the PTX target (default sm_70, as host/build.rs).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$root/target/device-function/example_kernel.ptx}
target_dir=$root/target/device-function/build
mkdir -p "$(dirname "$out")"
rustup component add rust-src >/dev/null 2>&1 || true
(
    cd "$here/kernel"
    RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zunstable-options -Cpanic=immediate-abort" \
        cargo rustc --lib --release --target nvptx64-nvidia-cuda -Zbuild-std=core \
        --target-dir "$target_dir" -- --emit=asm -Ccodegen-units=1 \
        "-Ctarget-cpu=${MMSB_PTX_TARGET_CPU:-sm_70}"
)
ptx=$(ls -t "$target_dir"/nvptx64-nvidia-cuda/release/deps/example_kernel-*.s | head -1)
cp "$ptx" "$out"
grep -q '.entry mmsb_example_sum_u32' "$out" || { echo "build.sh: no entry point in $out" >&2; exit 1; }
echo "$out"

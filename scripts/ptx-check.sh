#!/usr/bin/env bash
# Assemble the embedded PTX with ptxas for sm_70 and sm_90 and check that
# every kernel the host loads is an `.entry` and that nothing is `.extern`.
# Needs no GPU. Installs ptxas from PyPI (nvidia-cuda-nvcc) when missing.
#
#   scripts/ptx-check.sh            # builds `mmsb`, then checks
#   PTXAS=/path/to/ptxas scripts/ptx-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# Every ptxas we can find: $PTXAS, the PATH, and the PyPI wheels
# (nvidia/cu13/bin for CUDA 13, nvidia/cuda_nvcc/bin for CUDA 12).
list_ptxas() {
    if [[ -n "${PTXAS:-}" && -x "${PTXAS}" ]]; then echo "$PTXAS"; fi
    if command -v ptxas >/dev/null 2>&1; then command -v ptxas; fi
    local py
    for py in python3 python; do
        command -v "$py" >/dev/null 2>&1 || continue
        "$py" - <<'PY' 2>/dev/null || true
import glob, os, site
roots = list(site.getsitepackages()) + [site.getusersitepackages()]
for r in roots:
    for p in sorted(glob.glob(os.path.join(r, "nvidia", "*", "bin", "ptxas"))):
        if os.access(p, os.X_OK):
            print(p)
PY
        break
    done
}

# The first ptxas that knows `arch` (CUDA 13 dropped sm_70, CUDA 12 has it).
ptxas_for() {
    local arch=$1 p probe
    probe=$(mktemp --suffix=.ptx)
    printf '.version 6.0\n.target sm_70\n.address_size 64\n' >"$probe"
    while read -r p; do
        [[ -n "$p" ]] || continue
        if "$p" -arch="$arch" "$probe" -o /dev/null >/dev/null 2>&1; then
            rm -f "$probe"; echo "$p"; return 0
        fi
    done < <(list_ptxas | awk '!seen[$0]++')
    rm -f "$probe"
    return 1
}

ensure_ptxas() {
    local arch=$1 pkg=$2
    if ! ptxas_for "$arch" >/dev/null; then
        echo "ptx-check: no ptxas for $arch; installing $pkg from PyPI" >&2
        python3 -m pip install --quiet --disable-pip-version-check "$pkg" >&2 || true
    fi
}
ensure_ptxas sm_90 nvidia-cuda-nvcc
ensure_ptxas sm_70 nvidia-cuda-nvcc-cu12

MMSB_REQUIRE_PTX=1 cargo build -p mmsb --quiet
PTX=$(ls -t target/*/build/mmsb-*/out/mmsb_kernels.ptx 2>/dev/null | head -1 || true)
if [[ -z "$PTX" ]]; then
    echo "ptx-check: FAIL: no target/*/build/mmsb-*/out/mmsb_kernels.ptx after the build" >&2
    exit 1
fi
echo "ptx-check: PTX = $PTX"

# Kernel names from gpu-kernels/src/lib.rs (the `names` module's consts).
mapfile -t NAMES < <(sed -n '/pub mod names/,/^}/p' gpu-kernels/src/lib.rs | grep -o '"mmsb_[a-z0-9_]*"' | tr -d '"')
if [[ ${#NAMES[@]} -eq 0 ]]; then
    echo "ptx-check: FAIL: no kernel names found in gpu-kernels/src/lib.rs" >&2
    exit 1
fi

status=0
for name in "${NAMES[@]}"; do
    if grep -Eq "^\s*(\.visible\s+)?\.entry\s+${name}\s*\(" "$PTX"; then
        echo "ptx-check: entry   $name"
    else
        echo "ptx-check: FAIL: $name is not an .entry" >&2
        status=1
    fi
done
if grep -nE '^\s*\.extern' "$PTX"; then
    echo "ptx-check: FAIL: unresolved .extern declarations above" >&2
    status=1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for arch in sm_70 sm_90; do
    bin=$(ptxas_for "$arch" || true)
    if [[ -z "$bin" ]]; then
        echo "ptx-check: FAIL: no ptxas that knows $arch (pip install nvidia-cuda-nvcc-cu12 / nvidia-cuda-nvcc, or set PTXAS)" >&2
        status=1
        continue
    fi
    # The PTX says `.target sm_70`; newer targets assemble it as is.
    if "$bin" -arch="$arch" -O3 -v "$PTX" -o "$tmp/k_$arch.cubin" >"$tmp/log_$arch" 2>&1; then
        echo "ptx-check: ptxas $arch ok with $bin ($("$bin" --version | tail -1))"
        grep -E "Compiling entry|registers|spill" "$tmp/log_$arch" | sed 's/^/    /' || true
    else
        echo "ptx-check: FAIL: ptxas $arch ($bin)" >&2
        cat "$tmp/log_$arch" >&2
        status=1
    fi
done
if [[ $status -eq 0 ]]; then
    echo "ptx-check: OK (${#NAMES[@]} kernels, sm_70 and sm_90)"
else
    echo "ptx-check: FAILED" >&2
fi
exit $status

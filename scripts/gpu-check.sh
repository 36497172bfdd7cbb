#!/usr/bin/env bash
# GPU check in two halves.
#
#   scripts/gpu-check.sh            # here (Rust machine): build everything the
#                                   # device needs into target/device/
#   scripts/gpu-check.sh --device   # on the device machine, from the repo root
#                                   # (no Rust there): tests, sanitizers,
#                                   # benchmarks, PyTorch peer, summary table
#
# The device half writes full logs under $OUT (default ./gpu-out), never stops
# at a failing step (each step's status is recorded) and prints the table last.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=target/device

build() {
    mkdir -p "$DEV"
    rm -f "$DEV"/tests.tar.zst "$DEV"/gpu_bench
    # Release, no debug info, stripped: the carried folder must stay small.
    export CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols
    cargo nextest archive --release -p mmsb -p mmsb-tests --archive-file "$DEV/tests.tar.zst"
    cargo build --release -p mmsb --example gpu_bench
    cp target/release/examples/gpu_bench "$DEV/"
    cp /usr/local/bin/cargo-nextest "$DEV/"
    echo "gpu-check: built $DEV:"
    ls -l "$DEV"
    du -sh "$DEV"
    echo "gpu-check: now run on the device, from the repo root, carrying $DEV:"
    echo "    bash scripts/gpu-check.sh --device"
}

device() {
    OUT=${OUT:-./gpu-out}
    mkdir -p "$OUT"
    local summary="$OUT/steps.txt"
    : >"$summary"
    local card
    card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
    card=${card:-unknown}
    {
        echo "card: $card"
        nvidia-smi 2>&1 || true
        compute-sanitizer --version 2>&1 | head -3 || true
    } >"$OUT/env.log" 2>&1

    # step NAME TIMEOUT CMD...: run, log to $OUT/NAME.log, record the status.
    # STEPS (space-separated names) picks a subset; all steps by default.
    local steps=" ${STEPS:-tests memcheck racecheck initcheck bench torch} "
    step() {
        local name=$1 limit=$2
        shift 2
        [[ "$steps" == *" $name "* ]] || return 0
        local t0=$SECONDS rc=0
        echo "== $name: $*" | tee "$OUT/$name.log"
        timeout --kill-after=10 "$limit" "$@" >>"$OUT/$name.log" 2>&1 || rc=$?
        local status=ok
        [[ $rc -eq 0 ]] || status="FAILED(rc=$rc)"
        [[ $rc -eq 124 || $rc -eq 137 ]] && status="TIMEOUT(${limit}s)"
        printf '%-12s %-18s %4ds  %s\n' "$name" "$status" $((SECONDS - t0)) "$OUT/$name.log" >>"$summary"
        tail -n 4 "$OUT/$name.log" | sed 's/^/   /'
    }

    local nt=(target/device/cargo-nextest nextest run --archive-file target/device/tests.tar.zst --workspace-remap . --no-fail-fast)
    # The sanitizers run the GPU tests without the two largest cases (their
    # kernels are the same; the plain run covers them at full size).
    local filt=(-E 'test(/gpu/) & not (test(gpu_hundred_thousand_small_deltas_match_cpu) | test(gpu_large_page_matches_cpu))')
    local st=${SANITIZER_TIMEOUT:-110}

    step tests 200 "${nt[@]}" --no-capture
    step memcheck "$st" compute-sanitizer --tool memcheck --error-exitcode 1 "${nt[@]}" "${filt[@]}"
    step racecheck "$st" compute-sanitizer --tool racecheck --error-exitcode 1 "${nt[@]}" "${filt[@]}"
    step initcheck "$st" compute-sanitizer --tool initcheck --error-exitcode 1 "${nt[@]}" "${filt[@]}"
    step bench 150 target/device/gpu_bench --mib "${BENCH_MIB:-256}" --iters 20
    step torch 120 python3 scripts/torch_peer.py --mib "${BENCH_MIB:-256}" --iters 20

    {
        echo
        echo "=== gpu-check summary ($card) ==="
        echo "steps:"
        cat "$summary"
        echo "skips in the test run: $(grep -c 'SKIPPED' "$OUT/tests.log" 2>/dev/null || echo 0)"
        grep -h "ERROR SUMMARY" "$OUT"/memcheck.log "$OUT"/racecheck.log "$OUT"/initcheck.log 2>/dev/null | sort | uniq -c | sed 's/^/sanitizer: /' || true
        grep -h "RACECHECK SUMMARY" "$OUT"/racecheck.log 2>/dev/null | sort | uniq -c | sed 's/^/sanitizer: /' || true
        echo
        printf '%-40s %10s %8s  %s\n' name GB/s ratio card
        grep -h '^BENCH ' "$OUT/bench.log" 2>/dev/null | while read -r _ name gbps ratio _; do
            printf '%-40s %10s %8s  %s\n' "$name" "$gbps" "$ratio" "$card"
        done || true
        grep -h '^PEER ' "$OUT/torch.log" 2>/dev/null | while read -r _ name gbps ratio; do
            printf '%-40s %10s %8s  %s\n' "$name" "$gbps" "$ratio" "$card"
        done || true
        echo "(ratio: to device-to-device copy measured in the same process; bytes read + written)"
        grep -h 'latency' "$OUT/bench.log" 2>/dev/null | grep -v '^BENCH' || true
    } | tee "$OUT/summary.txt"
}

case "${1:-}" in
    --device) device ;;
    "") build ;;
    *)
        echo "usage: $0 [--device]" >&2
        exit 2
        ;;
esac

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
    # The device build must carry the kernels: no rust-src is an error here.
    export MMSB_REQUIRE_PTX=1
    rm -f "$DEV"/tests.tar.zst "$DEV"/gpu_bench
    # GPU_BENCH_BASE=path carries an earlier build's bench for the ab step.
    rm -f "$DEV"/gpu_bench_base
    [[ -n "${GPU_BENCH_BASE:-}" ]] && cp "$GPU_BENCH_BASE" "$DEV/gpu_bench_base"
    # Release, no debug info, stripped: the carried folder must stay small.
    export CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols
    cargo nextest archive --release -p mmsb -p mmsb-tests --archive-file "$DEV/tests.tar.zst"
    cargo build --release -p mmsb-benches --example gpu_bench
    cp target/release/examples/gpu_bench "$DEV/"
    # The example device recompute function (Rust, built to PTX here) and
    # the program that checks it against the CPU.
    bash examples/device-function/build.sh "$DEV/example_kernel.ptx"
    cargo build --release -p mmsb --example device_function
    cp target/release/examples/device_function "$DEV/"
    # The CLI, for `mmsb bench --quick` on the device's host: CPU and GPU
    # rows of one run, on an idle machine.
    cargo build --release --bin mmsb
    cp target/release/mmsb "$DEV/"
    # The criterion suite (its `gpu` group times the kernels with
    # iter_custom and a stream synchronize).
    local exe
    exe=$(cargo bench -p mmsb-benches --bench mmsb --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    j = json.loads(line)
    if j.get("reason") == "compiler-artifact" and j.get("executable") and "bench" in j["target"]["kind"]:
        print(j["executable"])' | tail -1)
    [[ -n "$exe" ]] || { echo "gpu-check: no criterion executable" >&2; exit 1; }
    cp "$exe" "$DEV/criterion_mmsb"
    cp /usr/local/bin/cargo-nextest "$DEV/"
    # The Python package as a wheel (abi3: any CPython 3.9+), for the GPU
    # Python tests (python/tests/test_mmsb_gpu.py: PyTorch, CuPy, JAX
    # through DLPack). pip fetches maturin, the build backend, here.
    rm -f "$DEV"/mmsb-*.whl
    local py=python3
    [[ -x target/pyenv/bin/python ]] && py=target/pyenv/bin/python
    CARGO_TARGET_DIR="$(pwd)/target" "$py" -m pip wheel --quiet --disable-pip-version-check \
        --no-deps -w "$DEV" ./python
    # The two largest programs travel compressed (the carried folder must
    # stay under 60 MiB); the device half unpacks them with Python's lzma.
    xz -T0 -6 -f "$DEV/cargo-nextest" "$DEV/mmsb"
    echo "gpu-check: built $DEV:"
    ls -l "$DEV"
    du -sh "$DEV"
    local mib
    mib=$(du -sm "$DEV" | cut -f1)
    if ((mib >= 60)); then
        echo "gpu-check: $DEV is ${mib} MiB; it must stay under 60 MiB to travel" >&2
        exit 1
    fi
    echo "gpu-check: now run on the device, from the repo root, carrying $DEV:"
    echo "    bash scripts/gpu-check.sh --device"
}

device() {
    OUT=${OUT:-./gpu-out}
    mkdir -p "$OUT"
    local summary="$OUT/steps.txt"
    : >"$summary"
    local f
    for f in target/device/*.xz; do
        [[ -e "$f" ]] || continue
        python3 -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1]) as i, open(sys.argv[1][:-3], "wb") as o:
    shutil.copyfileobj(i, o)' "$f"
        chmod +x "${f%.xz}"
    done
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
    local steps=" ${STEPS:-tests example memcheck racecheck initcheck bench ab chunks torch bound floor mmsbbench mmsbgpu criterion python} "
    step() {
        local name=$1 limit=$2
        shift 2
        [[ "$steps" == *" $name "* ]] || return 0
        local t0=$SECONDS rc=0 note=""
        echo "== $name: $*" | tee "$OUT/$name.log"
        timeout --kill-after=10 "$limit" "$@" >>"$OUT/$name.log" 2>&1 || rc=$?
        # compute-sanitizer itself has crashed with SIGSEGV (exit 139) now
        # and then, at start-up or between tests, reporting nothing: such a
        # step runs once more, and the summary says so.
        if [[ $rc -eq 139 && "$name" == *check ]]; then
            echo "== $name: exit 139 (the tool crashed); running it once more" | tee -a "$OUT/$name.log"
            note=", rerun after exit 139"
            rc=0
            timeout --kill-after=10 "$limit" "$@" >>"$OUT/$name.log" 2>&1 || rc=$?
        fi
        local status=ok
        [[ $rc -eq 0 ]] || status="FAILED(rc=$rc)"
        [[ $rc -eq 124 || $rc -eq 137 ]] && status="TIMEOUT(${limit}s)"
        printf '%-12s %-18s %4ds  %s%s\n' "$name" "$status" $((SECONDS - t0)) "$OUT/$name.log" "$note" >>"$summary"
        tail -n 4 "$OUT/$name.log" | sed 's/^/   /'
    }

    local nt=(target/device/cargo-nextest nextest run --archive-file target/device/tests.tar.zst --workspace-remap . --no-fail-fast)
    # The sanitizers run the GPU tests without the two largest cases (their
    # kernels are the same; the plain run covers them at full size) and
    # without the out-of-memory test and the refused-PTX test, whose failing
    # cuMemAlloc and cuModuleLoadData are their point (memcheck reports
    # every failed API call).
    local filt=(-E 'test(/gpu/) & not (test(gpu_hundred_thousand_small_deltas_match_cpu) | test(gpu_large_page_matches_cpu) | test(gpu_memory_when_a_device_page_cannot_fit) | test(gpu_device_function_errors_change_nothing))')
    local st=${SANITIZER_TIMEOUT:-60}

    # Step limits add up to 6 x 60 (tests, bench, torch, bound, mmsb bench,
    # criterion) + 30 (example) + 3 x 40 (chunks, floor, python) + 90 (mmsb
    # bench of the GPU section) + 3 x 60 (sanitizers) = 780 s, 840 s with
    # the ab step: more than one 600 s device call, but the steps take far
    # less than their limits (on an H100, 2026-12-07: every step of a full
    # run in 239 s; tests 28-54 s, bench 3 s, torch 14 s, bound 5 s, mmsb
    # bench 15 s, each sanitizer under 40 s; a sanitizer that crashes runs
    # once more, which can add its limit once). STEPS splits a run into
    # two calls when one step hangs. Benchmarks run before the sanitizers
    # so that a slow sanitizer never costs the figures.
    local ab=0
    [[ -x target/device/gpu_bench_base ]] && ab=60
    echo "gpu-check: step limits total $((60 * 6 + 30 + 3 * 40 + 90 + ab + 3 * st)) s (a full run took 239 s on an H100)"
    # Every test of the archive except the kill loop, whose child binary is
    # not part of a nextest archive (CI runs it on the build machine).
    step tests 60 "${nt[@]}" --no-capture -E 'not test(acknowledged_commits_survive_sigkill)'
    step example 30 target/device/device_function target/device/example_kernel.ptx
    step bench 60 target/device/gpu_bench --mib "${BENCH_MIB:-256}" --iters 20
    # Old against new: when target/device/gpu_bench_base (the bench of an
    # earlier build) is carried too, the two alternate, twice each.
    if [[ -x target/device/gpu_bench_base ]]; then
        step ab 60 bash -c "for r in 1 2; do for b in gpu_bench_base gpu_bench; do echo \"run \$r \$b\"; target/device/\$b --mib ${BENCH_MIB:-256} --iters 20 | grep -E '^BENCH gpu_(apply|page|update_1k_delta)'; done; done"
    fi
    # The sparse rows again with longer run pieces than the packer's
    # RUN_CHUNK, in the same process as their copy: how the choice measures.
    step chunks 40 bash -c "for c in 512 1024 4096; do echo \"chunk \$c\"; target/device/gpu_bench --mib ${BENCH_MIB:-256} --iters 20 --chunk \$c | grep '^BENCH gpu_apply_sparse'; done"
    step torch 60 python3 scripts/torch_peer.py --mib "${BENCH_MIB:-256}" --iters 20
    # The memory system's share for the same sparse layouts: a search-free
    # CUDA C kernel (per-block byte masks precomputed on the host).
    step bound 60 bash -c "nvcc -O3 -arch=native scripts/sparse_bound.cu -o /tmp/sparse_bound && /tmp/sparse_bound --mib ${BENCH_MIB:-256}"
    # The least a 1 KiB apply can cost on this card and driver, in CUDA C
    # (copy + launch, parameters only, mapped host memory; each waited for).
    step floor 40 bash -c "nvcc -O3 -arch=native scripts/latency_floor.cu -o /tmp/latency_floor && /tmp/latency_floor"
    step mmsbbench 60 target/device/mmsb bench --quick --json "$OUT/mmsb-bench.json"
    # The GPU section at full size (the 64 MiB derived page of the device
    # recompute row).
    step mmsbgpu 90 target/device/mmsb bench --only gpu --json "$OUT/mmsb-bench-gpu.json"
    step criterion 60 env CRITERION_HOME=/tmp/mmsb-criterion target/device/criterion_mmsb --bench --quick --noplot gpu
    # The Python package's GPU tests against the wheel built here (no
    # network there: --no-index; numpy, torch, cupy, jax are the host's),
    # then the tutorial notebook with its GPU cells when nbclient is there.
    # Alone, with more time: STEPS=python PYTHON_TIMEOUT=300 ... --device.
    step python "${PYTHON_TIMEOUT:-40}" bash -c 'rm -rf /tmp/mmsb-py && python3 -m pip install --quiet --no-index --no-deps --target /tmp/mmsb-py target/device/mmsb-*.whl && PYTHONPATH=/tmp/mmsb-py python3 python/tests/test_mmsb_gpu.py; rc=$?; PYTHONPATH=/tmp/mmsb-py python3 scripts/run-notebook.py || rc=1; exit $rc'
    step memcheck "$st" compute-sanitizer --tool memcheck --error-exitcode 1 "${nt[@]}" "${filt[@]}"
    step racecheck "$st" compute-sanitizer --tool racecheck --error-exitcode 1 "${nt[@]}" "${filt[@]}"
    step initcheck "$st" compute-sanitizer --tool initcheck --error-exitcode 1 "${nt[@]}" "${filt[@]}"

    {
        echo
        echo "=== gpu-check summary ($card) ==="
        echo "steps:"
        cat "$summary"
        echo "skips in the test run: $(grep -c 'SKIPPED' "$OUT/tests.log" 2>/dev/null || true)"
        grep -h "ERROR SUMMARY" "$OUT"/memcheck.log "$OUT"/racecheck.log "$OUT"/initcheck.log 2>/dev/null | sort | uniq -c | sed 's/^/sanitizer: /' || true
        grep -h "RACECHECK SUMMARY" "$OUT"/racecheck.log 2>/dev/null | sort | uniq -c | sed 's/^/sanitizer: /' || true
        grep -h 'latency\|_e2e\|_alloc_\|_part_' "$OUT/bench.log" 2>/dev/null | grep -v '^BENCH' || true
        grep -h '^FLOOR ' "$OUT/floor.log" 2>/dev/null || true
        [[ -e "$OUT/ab.log" ]] && { echo "old (gpu_bench_base) against new (gpu_bench), alternated:"; grep -hE '^run |^BENCH' "$OUT/ab.log" | cut -d' ' -f1-4; }
        echo "sparse rows with longer run pieces (the bench step above used the packer's RUN_CHUNK):"
        grep -hE '^chunk |^BENCH gpu_apply_sparse' "$OUT/chunks.log" 2>/dev/null | cut -d' ' -f1-4 || true
        echo "mmsb bench --only gpu (full size):"
        sed -n '/^benchmark /,$p' "$OUT/mmsbgpu.log" 2>/dev/null | head -40 || true
        echo "python (DLPack: torch, cupy, jax):"
        grep -hE '^(PASS|FAIL|SKIP|BENCH) |^skipped the GPU|^same device memory|^CPU replay' "$OUT/python.log" 2>/dev/null | sed 's/^/   /' || true
        echo
        echo "mmsb bench --quick on this host ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs):"
        # The GPU kernels' rows are in the card's table below; the pooled
        # device allocation rows (a target of their own) stay here.
        sed -n '/^benchmark /,/^GPU rows/p' "$OUT/mmsbbench.log" 2>/dev/null | grep -Ev '^gpu_(apply|page|update|query)' || true
        echo
        echo "criterion, group gpu (iter_custom, stream synchronize before the clock stops):"
        grep -E "^gpu/|thrpt:|SKIPPED" "$OUT/criterion.log" 2>/dev/null | sed 's/  */ /g' | cut -c1-100 || true
        echo
        echo "card: $card"
        printf '%-40s %10s %8s\n' name GB/s ratio
        # (The allocation rows are times, shown with their notes above.)
        grep -h '^BENCH ' "$OUT/bench.log" 2>/dev/null | grep -v '_alloc_' | while read -r _ name gbps ratio _; do
            printf '%-40s %10s %8s\n' "$name" "$gbps" "$ratio"
        done || true
        grep -h '^PEER ' "$OUT/torch.log" 2>/dev/null | while read -r _ name gbps ratio; do
            printf '%-40s %10s %8s\n' "$name" "$gbps" "$ratio"
        done || true
        # Sparse: MMSB over PyTorch on the same run layouts and the same
        # byte formula (2 bytes per covered byte on both sides), and beside
        # the search-free CUDA C kernel's ratio to the copy (the bound step).
        for shape in mixed 64b 256b 4k; do
            local m p r x
            m=$(awk -v s="gpu_apply_sparse_${shape}_" '$1 == "BENCH" && index($2, s) == 1 { print $3 }' "$OUT/bench.log" 2>/dev/null | head -1)
            r=$(awk -v s="gpu_apply_sparse_${shape}_" '$1 == "BENCH" && index($2, s) == 1 { print $4 }' "$OUT/bench.log" 2>/dev/null | head -1)
            p=$(awk -v s="torch_sparse_${shape}" '$1 == "PEER" && $2 == s { print $3 }' "$OUT/torch.log" 2>/dev/null | head -1)
            x=$(awk -v s="sparse_${shape}" '$1 == "BOUND" && $2 == s { print $5 }' "$OUT/bound.log" 2>/dev/null | head -1)
            if [[ -n "$m" && -n "$p" ]]; then
                awk -v s="$shape" -v m="$m" -v p="$p" -v r="$r" -v x="${x:--}" 'BEGIN { printf "sparse %-6s mmsb %8.1f GB/s  torch %8.1f GB/s  mmsb/torch %.2fx  ratio %s, search-free CUDA C %s\n", s, m, p, m / p, r, x }'
            fi
        done
        echo "(ratio: to device-to-device copy measured in the same process, bytes read + written;"
        echo " sparse rows on both sides count 2 bytes per covered byte and the same run layouts)"
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

#!/usr/bin/env bash
# Run every fuzz target for FUZZ_SECONDS (default 60) with a 2 GiB RSS
# limit and a per-input timeout; exit non-zero on any crash, leak, OOM or
# timeout. Seeds are read from fuzz/seeds/<target> (read-only); new inputs
# go to a scratch corpus under fuzz/corpus/ (ignored by git). A crash leaves
# its input in fuzz/artifacts/<target>/: turn it into a test in tests/.
#   FUZZ_SECONDS  seconds per target     FUZZ_TARGETS  subset (space-separated)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${FUZZ_SECONDS:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
cd fuzz
targets="${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}"
cargo +nightly fuzz build 2>&1 | tail -n 3
fail=0
summary=""
for t in $targets; do
    mkdir -p "corpus/$t" "artifacts/$t" "seeds/$t"
    log="artifacts/$t/last-run.log"
    set +e
    cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 \
        -max_len=65536 -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*' || echo '?')
    if [ "$rc" -ne 0 ]; then
        fail=1
        echo "FAIL $t (rc $rc): see fuzz/$log"
        grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -n 20 || true
    fi
    line=$(printf '%-12s %6ss  %10s execs  cov %s  rc %s' "$t" "$secs" "$execs" "$cov" "$rc")
    echo "$line"
    summary="$summary$line"$'\n'
done
printf '\nfuzz smoke summary:\n%s' "$summary"
exit "$fail"

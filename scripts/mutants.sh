#!/usr/bin/env bash
# Mutation testing of the storage and delta code with cargo-mutants: how
# many deliberately planted bugs the test suite notices.
#
#   bash scripts/mutants.sh [AREA ...] [-- CARGO_MUTANTS_ARGS ...]
#
# AREA: reader, recovery, writer, checkpoint, codecs, image (state images:
# replay's apply, the events of a logged commit), delta, changes (the
# change tracking and checkpoint planning behind increments, and the
# checkpoint a clean stop writes), history (where the history on disk
# starts, and the replays that read it) (default: all).
# Extra arguments go to cargo-mutants, e.g. `-- --re 'fn read_frame'` to
# mutate only matching functions, or `-- --shard 0/4` to split a run.
#
# It runs on a clean copy of HEAD (committed code only), in place there
# (one build directory, reused between mutants and between runs:
# target/mutants of this checkout), one mutant at a time, with the test
# binaries that exercise these files (the host library's unit tests and
# the log, recovery and delta integration tests), bounded timeouts, and
# prints per file: caught, missed, timeout, unviable and the score
# (caught / (caught + missed + timeout)). The full listing is kept under
# target/mutants/out. Not a CI step: about two minutes a mutant on 2 cores
# (a rebuild of the library and the test binaries, then about 25 s of
# tests); docs/RELIABILITY.md has the figures of the last run.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

areas=()
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --) shift; extra=("$@"); break ;;
        *) areas+=("$1"); shift ;;
    esac
done
[ ${#areas[@]} -gt 0 ] || areas=(reader recovery writer checkpoint codecs image delta changes history)

files=()
for a in "${areas[@]}"; do
    case "$a" in
        reader) files+=(-f host/src/storage/log/reader.rs) ;;
        recovery) files+=(-f host/src/storage/recovery.rs) ;;
        writer) files+=(-f host/src/storage/log/writer.rs) ;;
        checkpoint) files+=(-f host/src/storage/checkpoint.rs) ;;
        codecs) files+=(-f 'host/src/storage/codec/*.rs') ;;
        image) files+=(-f host/src/storage/image.rs) ;;
        delta) files+=(-f host/src/delta/mod.rs) ;;
        changes) files+=(-f host/src/registry/page.rs -f host/src/engine/checkpoint.rs) ;;
        history) files+=(-f host/src/history/replay.rs) ;;
        *) echo "mutants: unknown area $a (reader, recovery, writer, checkpoint, codecs, image, delta, changes, history)" >&2; exit 2 ;;
    esac
done

command -v cargo-mutants >/dev/null || cargo install cargo-mutants --locked

work=$(mktemp -d /tmp/mmsb-mutants.XXXXXX)
trap 'rm -rf "$work"' EXIT
git clone -q "$root" "$work/src"
mkdir -p "$root/target/mutants"
out="$root/target/mutants/out"
rm -rf "$out"
mkdir -p "$out"

tests=(--lib --test log --test log_edges --test durability --test crash --test untrusted
    --test replay_paths --test graph_persist --test laws --test increments --test log_events
    --test stop_checkpoint)
start=$(date +%s)
cd "$work/src"
export CARGO_TARGET_DIR="$root/target/mutants/build"
# The baseline: the unmutated tree passes these tests. (cargo-mutants'
# own baseline would test the mutated package alone, which does not hold
# the integration tests.)
cargo test --workspace "${tests[@]}" -q >"$out/baseline.log" 2>&1 || {
    echo "mutants: the unmutated tree fails its tests: see $out/baseline.log" >&2
    exit 1
}
# Exit status 2 means mutants were missed: the summary below says which.
cargo mutants \
    --in-place --no-shuffle --baseline skip \
    --timeout 240 --build-timeout 900 \
    "${files[@]}" \
    --test-workspace=true \
    --output "$out" \
    "${extra[@]}" \
    -- "${tests[@]}" \
    || status=$?
end=$(date +%s)

python3 - "$out/mutants.out" "$((end - start))" <<'EOF'
import collections, os, sys
d, secs = sys.argv[1], int(sys.argv[2])
counts = collections.defaultdict(lambda: collections.Counter())
for kind in ("caught", "missed", "timeout", "unviable"):
    path = os.path.join(d, kind + ".txt")
    if not os.path.exists(path):
        continue
    for line in open(path):
        if line.strip():
            counts[line.split(":", 1)[0]][kind] += 1
print(f"{'file':34} {'caught':>6} {'missed':>6} {'timeout':>7} {'unviable':>8} {'score':>7}")
tot = collections.Counter()
for f in sorted(counts):
    c = counts[f]
    tot.update(c)
    tested = c["caught"] + c["missed"] + c["timeout"]
    score = f"{100 * c['caught'] / tested:.1f}%" if tested else "-"
    print(f"{f:34} {c['caught']:6} {c['missed']:6} {c['timeout']:7} {c['unviable']:8} {score:>7}")
tested = tot["caught"] + tot["missed"] + tot["timeout"]
if tested:
    print(f"{'all':34} {tot['caught']:6} {tot['missed']:6} {tot['timeout']:7} {tot['unviable']:8} {100 * tot['caught'] / tested:6.1f}%")
print(f"mutants: {secs // 60} min {secs % 60} s; missed mutants are listed in {d}/missed.txt")
EOF
exit "${status:-0}"

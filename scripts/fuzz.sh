#!/usr/bin/env bash
# Fuzzes the decoders with cargo-fuzz (libFuzzer): `decode` (the packet decoder, 3.1.1 and 5.0)
# and `connection` (a whole client connection against an in-process node, then a probe client).
#   scripts/fuzz.sh                 each target for 60 s, side by side (what CI runs)
#   scripts/fuzz.sh 3600            each target for an hour
#   scripts/fuzz.sh 600 connection  one target
# Runs on the stable toolchain: cargo-fuzz passes nightly-only flags, which RUSTC_BOOTSTRAP=1
# allows, and no sanitizer is used (-s none; a panic anywhere, tasks included, aborts).
# New inputs go to fuzz/target/corpus/TARGET (not committed); fuzz/corpus/TARGET is the seed
# corpus and fuzz/regressions/TARGET holds every input that once failed, replayed each run.
# A failure leaves its input in fuzz/artifacts/TARGET and exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(decode connection)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet \
        || { echo "FATAL: cannot install cargo-fuzz from crates.io" >&2; exit 1; }
fi
export RUSTC_BOOTSTRAP=1
cd fuzz
cargo fuzz build -s none -O
# The targets run side by side (libFuzzer uses one core each), each into its own log.
fuzz_one() {
    local t=$1 log=$2
    local work="target/corpus/$t"
    mkdir -p "$work" "regressions/$t"
    cargo fuzz run -s none -O "$t" "$work" "corpus/$t" "regressions/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1
}
declare -A pids logs
for t in "${targets[@]}"; do
    echo "== fuzzing $t for ${seconds}s"
    logs[$t]=$(mktemp)
    fuzz_one "$t" "${logs[$t]}" &
    pids[$t]=$!
done
failed=0
for t in "${targets[@]}"; do
    log=${logs[$t]}
    if ! wait "${pids[$t]}"; then
        grep -v '^\s*[0-9]*: \|^\s*at ' "$log" | tail -40
        echo "FAIL: fuzz target $t found a failing input (see fuzz/artifacts/$t)" >&2
        failed=1
    else
        runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
        echo "   $t: $runs executions in ${seconds}s, no failure"
    fi
    rm -f "$log"
done
exit "$failed"

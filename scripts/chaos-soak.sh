#!/usr/bin/env bash
# Soak run of the fault-tolerance suites (issue #11 item 4; not part of CI): the chaos
# suite (tests/chaos.rs) and the partition suite (tests/partition.rs) N times in a row
# while another test binary (tests/cluster/) runs beside them in a loop — the state
# CI is in when `cargo test --workspace` runs test binaries on a 2-core machine.
#
#   scripts/chaos-soak.sh [N]          # default N = 20; output under target/chaos-soak/
#   ONLY=p5 scripts/chaos-soak.sh 40   # only the tests whose names contain p5
#
# Each run keeps its nodes' logs (ASTRAMQ_TEST_LOGS) under target/chaos-soak/run-N-logs/
# when it fails, and deletes them when it passes.
#
# Prints one line per run and, at the end, per scenario: runs, failures, lost (total and
# worst run), duplicates. Every scenario's JSON line is kept in target/chaos-soak/. Needs
# root (iptables for the partition suite), redis-server and jq (scripts/test.sh and
# `apt-get install jq`).
set -uo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
n="${1:-20}"
out="$root/target/chaos-soak"
rm -rf "$out" && mkdir -p "$out"
command -v jq >/dev/null || { echo "chaos-soak: jq is required (apt-get install jq)" >&2; exit 2; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cd "$root"
exe() {
    cargo test -p astramq --test "$1" --no-run --message-format=json 2>/dev/null |
        jq -r "select(.executable != null and .target.name == \"$1\") | .executable" | tail -1
}
chaos="$(exe chaos)" partition="$(exe partition)" beside="$(exe cluster)"
for b in "$chaos" "$partition" "$beside"; do
    [[ -x "$b" ]] || { echo "chaos-soak: could not build the test binaries" >&2; exit 2; }
done
rev="$(git rev-parse --short HEAD)"
echo "chaos-soak: $n runs at $rev; beside them: tests/cluster/ in a loop" >&2

# The companion load: tests/cluster/ over and over until the soak ends.
( while :; do "$beside" --test-threads=2 >/dev/null 2>&1; done ) &
companion=$!
trap 'kill "$companion" 2>/dev/null; pkill -P "$companion" 2>/dev/null' EXIT

failed=0
for i in $(seq 1 "$n"); do
    start=$(date +%s)
    logs="$out/run-$i-logs"
    mkdir -p "$logs"
    ASTRAMQ_TEST_LOGS="$logs" ASTRAMQ_CHAOS_OUT="$out/run-$i.jsonl" "$chaos" ${ONLY:+"$ONLY"} \
        --test-threads=1 --nocapture >"$out/run-$i-chaos.log" 2>&1
    rc_c=$?
    ASTRAMQ_TEST_LOGS="$logs" ASTRAMQ_CHAOS_OUT="$out/run-$i.jsonl" "$partition" ${ONLY:+"$ONLY"} \
        --test-threads=1 --nocapture >"$out/run-$i-partition.log" 2>&1
    rc_p=$?
    [[ $rc_c -eq 0 && $rc_p -eq 0 ]] && rm -rf "$logs"
    lost=$(jq -s 'map(.lost) | add // 0' "$out/run-$i.jsonl" 2>/dev/null || echo "?")
    scenarios=$(jq -s 'length' "$out/run-$i.jsonl" 2>/dev/null || echo 0)
    [[ $rc_c -eq 0 && $rc_p -eq 0 ]] || failed=$((failed + 1))
    echo "run $i: chaos rc=$rc_c partition rc=$rc_p scenarios=$scenarios lost=$lost ($(( $(date +%s) - start )) s)"
done

echo
echo "| scenario | runs | lost (total) | lost (worst run) | duplicates (total) |"
echo "|---|---:|---:|---:|---:|"
cat "$out"/run-*.jsonl | jq -r -s 'group_by(.scenario)[] |
    "| \(.[0].scenario) | \(length) | \(map(.lost) | add) | \(map(.lost) | max) | \(map(.duplicates) | add) |"'
echo
echo "chaos-soak: $((n - failed)) of $n runs passed at $rev"
[[ $failed -eq 0 ]]

#!/usr/bin/env bash
# Runs the chaos suite (crates/astramq/tests/chaos.rs, issue #6 item 3) and the partition
# suite (tests/partition.rs, issue #11 item 3; needs root for iptables) and renders their
# table into docs/reliability.md between `<!-- chaos:begin -->` and `<!-- chaos:end -->`.
#
#   scripts/chaos-report.sh            # run the suite, update the table
#   scripts/chaos-report.sh --render F # only render an existing JSON-lines file F
#
# Each scenario appends one JSON line (its counts) to $ASTRAMQ_CHAOS_OUT before it
# asserts, so failing scenarios are in the table too; the script exits with the test
# run's status. Needs redis-server (scripts/test.sh installs it) and jq.
set -uo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
doc="$root/docs/reliability.md"
command -v jq >/dev/null || { echo "chaos-report: jq is required (apt-get install jq)" >&2; exit 2; }

status=0
if [[ "${1:-}" == "--render" ]]; then
    out="${2:?--render needs a file}"
else
    out="$(mktemp --suffix=.jsonl)"
    trap 'rm -f "$out"' EXIT
    cmd=(cargo test -p astramq --test chaos --test partition -- --test-threads=1 --nocapture)
    echo "chaos-report: ${cmd[*]}" >&2
    (cd "$root" && ASTRAMQ_CHAOS_OUT="$out" "${cmd[@]}")
    status=$?
fi
[[ -s "$out" ]] || { echo "chaos-report: no scenario reported (see the output above)" >&2; exit 1; }

rev="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
dirty="$(git -C "$root" status --porcelain -- crates 2>/dev/null | head -1)"
[[ -n "$dirty" ]] && rev="$rev+dirty"
table="$(
    printf '%s\n' "Produced by \`scripts/chaos-report.sh\` (\`cargo test -p astramq --test chaos --test partition -- --test-threads=1 --nocapture\`) at commit \`$rev\` on $(date -u +%Y-%m-%d), $(nproc) cores, debug build."
    printf '\n'
    printf '%s\n' '| scenario | acknowledged | received / expected | lost | duplicates | sessions lost | detect ms | recover ms | notes |'
    printf '%s\n' '|---|---:|---:|---:|---:|---:|---:|---:|---|'
    jq -r -s 'sort_by(.scenario)[] |
        "| \(.scenario) | \(.acknowledged) | \(.received) / \(.expected) | \(.lost) | \(.duplicates) | \(.sessions_lost) | \(.detect_ms // "—") | \(.recover_ms // "—") | \(.note | gsub("\\|"; "\\\\|")) |"' "$out"
)"

python3 - "$doc" "$table" <<'EOF'
import sys
path, table = sys.argv[1], sys.argv[2]
begin, end = "<!-- chaos:begin -->", "<!-- chaos:end -->"
text = open(path).read()
if begin not in text or end not in text:
    sys.exit(f"chaos-report: {path} lacks the {begin} / {end} markers")
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
open(path, "w").write(f"{head}{begin}\n{table}\n{end}{tail}")
EOF
echo "chaos-report: table written to docs/reliability.md" >&2
exit $status

#!/usr/bin/env bash
# Two builds of astramq side by side (a change's cost): QoS 1 pairs, memory only,
# the two brokers interleaved run by run, each run on a fresh broker pinned to
# BROKER_CPUS, the load generator (the NEW build's `bench`) pinned to BENCH_CPU.
#
#   bench/ab.sh OLD_BINARY NEW_BINARY                    # 6 runs each, 5 s, 200 pairs
#   BROKER_CPUS=0,1 bench/ab.sh OLD NEW                  # the brokers on both cores
#   REPEAT=3 QOS=0 bench/ab.sh OLD NEW
#   SYNC=periodic bench/ab.sh OLD NEW                    # persistent sessions on disk
#   SCENARIO=ingest bench/ab.sh OLD NEW                  # QoS 0 ingest, 100 publishers
#
# With SYNC (periodic or always) every run gets a fresh `--data-dir` with that
# `store.sync`, and the pairs are persistent sessions (`--clean false`).
#
# Build OLD from the commit before the change (`git worktree add`, `cargo build
# --release`), copy both binaries out of target/ first. Prints one line per run, then
# the mean of each and NEW/OLD.
set -euo pipefail

OLD=${1:?old binary}
NEW=${2:?new binary}
REPEAT=${REPEAT:-6}
DURATION=${DURATION:-5s}
PAIRS=${PAIRS:-200}
QOS=${QOS:-1}
SYNC=${SYNC:-}
SCENARIO=${SCENARIO:-pairs}
BROKER_CPUS=${BROKER_CPUS:-0}
BENCH_CPU=${BENCH_CPU:-1}
WORK=$(mktemp -d /tmp/astramq-ab.XXXXXX)
BROKER_PID=

stop_broker() {
    if [ -n "$BROKER_PID" ]; then
        kill "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
        BROKER_PID=
    fi
}
trap 'stop_broker; rm -rf "$WORK"' EXIT

# No limits in the way of a saturation run.
cat > "$WORK/broker.toml" <<'EOF'
log_level = "warn"
[limits]
max_publish_rate = 0
max_publish_bytes_rate = 0
max_connection_rate = 0
max_connections = 0
EOF
[ -z "$SYNC" ] || printf '[store]\nsync = "%s"\n' "$SYNC" >> "$WORK/broker.toml"

run() { # binary -> msg/s
    local bin=$1 port
    local -a data=() clean=()
    if [ -n "$SYNC" ]; then
        rm -rf "$WORK/data"
        data=(--data-dir "$WORK/data")
        clean=(--clean false)
    fi
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    taskset -c "$BROKER_CPUS" "$bin" --listen "127.0.0.1:$port" --config "$WORK/broker.toml" \
        "${data[@]}" > "$WORK/broker.out" 2>&1 &
    BROKER_PID=$!
    # Ready once it prints its address.
    for _ in $(seq 100); do
        grep -q "listening on" "$WORK/broker.out" && break
        sleep 0.05
    done
    grep -q "listening on" "$WORK/broker.out" || { cat "$WORK/broker.out" >&2; exit 1; }
    local -a load field
    case $SCENARIO in
    pairs) load=(pairs -n "$PAIRS" --qos "$QOS" "${clean[@]}") field=received_per_s ;;
    # As bench/compare.sh's ingest-qos0: counted to each publisher's PINGREQ barrier.
    ingest) load=(pub -n 100 --qos 0 --payload 64 --drain 60s) field=ingested_per_s ;;
    *) echo "unknown SCENARIO $SCENARIO (pairs or ingest)" >&2; exit 2 ;;
    esac
    # "msg/s lost peak-RSS-MiB" (every run reports what it lost and its peak memory).
    taskset -c "$BENCH_CPU" "$NEW" bench "${load[@]}" --duration "$DURATION" \
        --hosts "127.0.0.1:$port" --broker-pid "$BROKER_PID" --no-progress 2>/dev/null | tail -1 |
        python3 -c "import json,sys; r = json.loads(sys.stdin.read()); print(round(r['$field']), '-' if r['lost'] is None else r['lost'], round(r['broker']['rss_peak'] / 1048576, 1))"
    stop_broker
}

declare -a old_runs new_runs
for i in $(seq "$REPEAT"); do
    read -r o o_lost o_rss <<<"$(run "$OLD")"
    read -r n n_lost n_rss <<<"$(run "$NEW")"
    old_runs+=("$o"); new_runs+=("$n")
    echo "run $i: old $o msg/s (lost $o_lost, peak RSS $o_rss MiB), new $n msg/s (lost $n_lost, peak RSS $n_rss MiB)"
done
python3 - "${old_runs[*]}" "${new_runs[*]}" <<'EOF'
import sys
old = [int(x) for x in sys.argv[1].split()]
new = [int(x) for x in sys.argv[2].split()]
mo, mn = sum(old) / len(old), sum(new) / len(new)
print(f"mean: old {mo:,.0f} msg/s, new {mn:,.0f} msg/s, new/old {mn / mo:.3f}")
EOF

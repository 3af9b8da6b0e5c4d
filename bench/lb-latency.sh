#!/usr/bin/env bash
# What `astramq lb` adds to latency at a fixed moderate rate, and how much of it is
# placement (issue #17 item 3): one node on core 0, `astramq bench pairs` (500 QoS 1
# pairs at RATE msg/s each) on core 1, through no balancer (`direct`), through
# `astramq lb` pinned to the load generator's core (`lb-bench-core`), to the node's
# core (`lb-node-core`), or left to the scheduler (`lb-unpinned`). Interleaved,
# REPEAT times; one line per run (msgs/s received, p50 and p99 in ms, lost, the node's
# peak RSS; through the balancer, also its peak RSS).
#
#   bench/lb-latency.sh                 # RATE=10 (5,000 msgs/s), REPEAT=2
#   RATE=50 bench/lb-latency.sh         # 25,000 msgs/s
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RATE=${RATE:-10}
REPEAT=${REPEAT:-2}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
A=$CARGO_TARGET_DIR/release/astramq
WORK=$(mktemp -d /tmp/astramq-lblat.XXXXXX)
NODE_PORT=$((20000 + RANDOM % 10000)) LB_PORT=$((NODE_PORT + 1))
NODE=
trap '[[ -n $NODE ]] && kill "$NODE" 2>/dev/null; rm -rf "$WORK"' EXIT
(cd "$ROOT" && cargo build --release -q -p astramq) || exit 1
ulimit -n "$(ulimit -Hn)"
printf 'log_level = "warn"\n[limits]\nmax_publish_rate = 0\nmax_connection_rate = 0\nmax_connections = 0\n' >"$WORK/a.toml"
taskset -c 0 "$A" broker --config "$WORK/a.toml" --listen "127.0.0.1:$NODE_PORT" >"$WORK/node.log" 2>&1 &
NODE=$!
sleep 1
run() { # name port
    taskset -c 1 "$A" bench pairs -n 500 --qos 1 --rate "$RATE" --duration 10s \
        --hosts "127.0.0.1:$2" --broker-pid "$NODE" --no-progress 2>/dev/null | tail -n 1 |
        python3 -c 'import json,sys; r=json.load(sys.stdin); l=r["latency_ms"]; print("%-14s %7d msg/s  p50 %7.3f ms  p99 %7.3f ms  lost %s  node peak RSS %.1f MiB" % (sys.argv[1], r["received_per_s"], l["p50"], l["p99"], r["lost"], r["broker"]["rss_peak"] / 1048576))' "$1"
}
for rep in $(seq 1 "$REPEAT"); do
    for cfg in direct lb-bench-core lb-node-core lb-unpinned; do
        if [[ $cfg == direct ]]; then
            run direct "$NODE_PORT"
            continue
        fi
        case $cfg in
        lb-bench-core) pin=(taskset -c 1) ;;
        lb-node-core) pin=(taskset -c 0) ;;
        *) pin=() ;;
        esac
        "${pin[@]}" "$A" lb --listen "127.0.0.1:$LB_PORT" --backends "127.0.0.1:$NODE_PORT" \
            --proxy-protocol false >"$WORK/lb.log" 2>&1 &
        lb=$!
        sleep 0.5
        run "$cfg" "$LB_PORT"
        awk '/^VmHWM/ {printf "%14s balancer peak RSS %.1f MiB\n", "", $2 / 1024}' "/proc/$lb/status"
        kill "$lb"
        wait "$lb" 2>/dev/null
    done
done

#!/usr/bin/env bash
# What durable sessions cost (issue #6): the same cross-node `pairs` QoS 1 load on a
# three-node cluster, with clean sessions (nothing written to Redis per message but the
# inbox entry) and with persistent sessions (every delivery journaled in Redis before
# it is queued, and deleted on PUBACK). Runs interleaved (clean, persistent, clean, ...)
# and prints one line per run (rate, lost, peak memory of the nodes and of Redis) and
# the median ratio persistent/clean.
#
#   bench/journal.sh                       # 3 repetitions of 6 s, 200 pairs
#   REPEAT=1 DURATION=3s bench/journal.sh  # a quick look
#   VERBOSE=1 ...                          # also each run's JSON report
#
# Nodes and redis-server are pinned to BROKER_CPU, the load generator to BENCH_CPU
# (as bench/cluster.sh does). Needs redis-server and a release build (built here).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPEAT=${REPEAT:-3}
DURATION=${DURATION:-6s}
PAIRS=${PAIRS:-200}
# Long enough for everything acknowledged to arrive: this measures throughput and loss,
# and a backlog in the inbox streams is not a loss.
DRAIN=${DRAIN:-60s}
BROKER_CPU=${BROKER_CPU:-0}
BENCH_CPU=${BENCH_CPU:-1}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
ASTRAMQ=$CARGO_TARGET_DIR/release/astramq
WORK=$(mktemp -d /tmp/astramq-journal.XXXXXX)
PIDS=()

log() { printf '[journal] %s\n' "$*" >&2; }
stop_all() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}
trap 'stop_all; rm -rf "$WORK"' EXIT

command -v redis-server >/dev/null || { log "redis-server missing (apt-get install redis-server)"; exit 1; }
log "building astramq (release)"
(cd "$ROOT" && cargo build --release -q -p astramq)
ulimit -n "$(ulimit -Hn)"

BASE=$((30000 + RANDOM % 10000))
P1=$BASE P2=$((BASE + 1)) P3=$((BASE + 2)) RP=$((BASE + 5))
printf 'log_level = "warn"\n[limits]\nmax_inflight = 100\nmax_queued_messages = 1000\nmax_publish_rate = 0\nmax_publish_bytes_rate = 0\nmax_connection_rate = 0\nmax_connections = 0\n[shutdown]\ngrace_period_secs = 1\n' >"$WORK/astramq.toml"

wait_line() { # file pattern
    for _ in $(seq 1 200); do
        grep -m1 "$2" "$1" 2>/dev/null && return 0
        sleep 0.05
    done
    log "no '$2' in $1: $(tail -n 3 "$1")"
    return 1
}

start_cluster() {
    taskset -c "$BROKER_CPU" redis-server --port "$RP" --bind 127.0.0.1 --save '' \
        --appendonly no --loglevel warning >"$WORK/redis.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 100); do redis-cli -p "$RP" PING >/dev/null 2>&1 && break; sleep 0.05; done
    local g port id join=()
    for id in 1 2 3; do
        port=$((BASE + id - 1))
        (cd "$WORK" && exec taskset -c "$BROKER_CPU" "$ASTRAMQ" broker --listen "127.0.0.1:$port" \
            --config astramq.toml --node-id "n$id" --redis "redis://127.0.0.1:$RP" \
            --gossip-listen 127.0.0.1:0 "${join[@]}" >"$WORK/n$id.out" 2>"$WORK/n$id.err") &
        PIDS+=($!)
        g=$(wait_line "$WORK/n$id.out" '^gossip on ' | sed 's/^gossip on //')
        ((id == 1)) && join=(--join "$g")
    done
    sleep 1 # membership converges
}

results=()
for rep in $(seq 1 "$REPEAT"); do
    for mode in clean persistent; do
        start_cluster
        case $mode in
        clean) flags=(--clean true) ;;
        persistent) flags=(--clean false --session-expiry 300) ;;
        esac
        src="127.2.$rep.1,127.2.$rep.2"
        taskset -c "$BENCH_CPU" "$ASTRAMQ" bench pairs -n "$PAIRS" --qos 1 --payload 64 \
            --protocol 5 "${flags[@]}" --duration "$DURATION" --drain "$DRAIN" --hosts "127.0.0.1:$P1,127.0.0.1:$P2" \
            --source-addrs "$src" --no-progress >"$WORK/out.json" 2>"$WORK/out.err" ||
            { log "bench failed: $(tail -n 3 "$WORK/out.err")"; exit 1; }
        line=$(tail -n 1 "$WORK/out.json")
        rate=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["received_per_s"])' "$line")
        lost=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["lost"])' "$line")
        # Peak memory: each node's (VmHWM) and Redis's, which holds what waits in the
        # inbox streams and journals.
        rss=$(for pid in "${PIDS[@]:1}"; do awk '/^VmHWM/ {printf "%d ", $2 / 1024}' "/proc/$pid/status"; done)
        redis_peak=$(redis-cli -p "$RP" INFO memory | tr -d '\r' | awk -F: '/^used_memory_peak:/ {printf "%d", $2 / 1048576}')
        log "rep $rep $mode: $rate msg/s, lost $lost, peak RSS of n1 n2 n3: ${rss% }MiB, Redis peak ${redis_peak} MiB"
        results+=("$mode $rate $lost")
        [[ -n ${VERBOSE:-} ]] && echo "$line" >&2
        stop_all
    done
done
printf '%s\n' "${results[@]}" | python3 -c '
import statistics, sys
runs = {}
for line in sys.stdin:
    mode, rate, lost = line.split()
    runs.setdefault(mode, []).append((float(rate), lost))
for mode, rs in runs.items():
    print(f"{mode:10s} median {statistics.median(r for r, _ in rs):10.0f} msg/s  runs {[round(r) for r, _ in rs]}  lost {[l for _, l in rs]}")
c, p = (statistics.median(r for r, _ in runs[m]) for m in ("clean", "persistent"))
print(f"persistent/clean = {p / c:.2f}")
'

#!/usr/bin/env bash
# What a single node's disk store costs (issue #14): persistent-session QoS 1 pairs
# (`pairs --clean false`, MQTT 3.1.1 persistent sessions: every delivery written before it is
# queued and deleted on PUBACK) against Mosquitto with `persistence true`, which keeps
# messages in memory and saves them every `autosave_interval` — like for like with
# `store.sync = "periodic"`. Also shown: `sync = "always"` (every PUBACK after fsync,
# group commit) and AstraMQ without a data directory (memory only, the ceiling).
#
#   bench/persist.sh                        # 3 interleaved repetitions of 6 s, 200 pairs
#   REPEAT=1 DURATION=3s bench/persist.sh   # a quick look
#
# Brokers are pinned to BROKER_CPU, the load generator to BENCH_CPU; every run starts
# a fresh broker on a fresh data directory (DATA, default a directory under /tmp: use
# one on the disk you want measured). Prints one line per run, then the medians and
# the ratios to Mosquitto.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPEAT=${REPEAT:-3}
DURATION=${DURATION:-6s}
PAIRS=${PAIRS:-200}
BROKER_CPU=${BROKER_CPU:-0}
BENCH_CPU=${BENCH_CPU:-1}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
ASTRAMQ=$CARGO_TARGET_DIR/release/astramq
WORK=$(mktemp -d "${DATA:-/tmp}/astramq-persist.XXXXXX")
BROKER_PID=

log() { printf '[persist] %s\n' "$*" >&2; }
stop_broker() {
    [[ -n $BROKER_PID ]] || return 0
    kill -TERM "$BROKER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$BROKER_PID" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=
}
trap 'stop_broker; rm -rf "$WORK"' EXIT

MOSQUITTO=$(command -v mosquitto || true)
[[ -z $MOSQUITTO && -x /usr/sbin/mosquitto ]] && MOSQUITTO=/usr/sbin/mosquitto
if [[ -z $MOSQUITTO ]]; then
    log "installing mosquitto"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto
    MOSQUITTO=/usr/sbin/mosquitto
fi
log "building astramq (release)"
(cd "$ROOT" && cargo build --release -q -p astramq)
ulimit -n "$(ulimit -Hn)"
PORT=$((20000 + RANDOM % 10000))

# Equivalent limits: 100 in flight and 1000 queued per client.
astramq_conf() { # sync|memory
    printf 'log_level = "warn"\n[limits]\nmax_inflight = 100\nmax_queued_messages = 1000\nmax_publish_rate = 0\nmax_publish_bytes_rate = 0\nmax_connection_rate = 0\nmax_connections = 0\n[shutdown]\ngrace_period_secs = 1\n'
    [[ $1 == memory ]] || printf '[store]\nsync = "%s"\n' "$1"
}

wait_port() {
    for _ in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    log "broker did not listen on $PORT"; return 1
}

start() { # periodic|always|memory|mosquitto
    local data="$WORK/data-$1"
    rm -rf "$data"; mkdir -p "$data"
    case $1 in
        mosquitto)
            printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 100\nmax_queued_messages 1000\nset_tcp_nodelay true\npersistence true\npersistence_location %s/\nlog_type error\n' \
                "$PORT" "$data" >"$WORK/mosquitto.conf"
            taskset -c "$BROKER_CPU" "$MOSQUITTO" -c "$WORK/mosquitto.conf" >>"$WORK/broker.log" 2>&1 &
            ;;
        memory)
            astramq_conf memory >"$WORK/astramq.toml"
            taskset -c "$BROKER_CPU" "$ASTRAMQ" --listen "127.0.0.1:$PORT" --config "$WORK/astramq.toml" >>"$WORK/broker.log" 2>&1 &
            ;;
        *)
            astramq_conf "$1" >"$WORK/astramq.toml"
            taskset -c "$BROKER_CPU" "$ASTRAMQ" --listen "127.0.0.1:$PORT" --config "$WORK/astramq.toml" --data-dir "$data" >>"$WORK/broker.log" 2>&1 &
            ;;
    esac
    BROKER_PID=$!
    wait_port
}

BROKERS=(periodic always memory mosquitto)
results=()
for rep in $(seq 1 "$REPEAT"); do
    # Rotate the order every repetition so no broker always runs first.
    order=("${BROKERS[@]:$((rep % 4))}" "${BROKERS[@]:0:$((rep % 4))}")
    for b in "${order[@]}"; do
        start "$b"
        if line=$(taskset -c "$BENCH_CPU" "$ASTRAMQ" bench pairs -n "$PAIRS" --qos 1 --payload 64 \
            --clean false --duration "$DURATION" --drain 30s \
            --hosts "127.0.0.1:$PORT" --broker-pid "$BROKER_PID" --no-progress 2>"$WORK/bench.err" | tail -n 1); then
            rate=$(python3 -c 'import json,sys; print(round(json.loads(sys.argv[1])["received_per_s"]))' "$line")
            lost=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["lost"])' "$line")
            p99=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(r["latency_ms"]["p99"])' "$line" 2>/dev/null || echo "?")
            peak=$(python3 -c 'import json,sys; print(round(json.loads(sys.argv[1])["broker"]["rss_peak"] / 1048576, 1))' "$line" 2>/dev/null || echo "?")
            log "rep $rep $b: $rate msg/s, p99 $p99 ms, lost $lost, peak RSS $peak MiB"
            results+=("$b $rate $lost")
        else
            log "rep $rep $b: bench failed: $(tail -n 3 "$WORK/bench.err")"
        fi
        stop_broker
    done
done

printf '%s\n' "${results[@]}" | python3 -c '
import sys, statistics
rates, lost = {}, {}
for line in sys.stdin:
    b, r, l = line.split()
    rates.setdefault(b, []).append(float(r))
    lost[b] = lost.get(b, 0) + (int(l) if l.isdigit() else 0)
m = {b: statistics.median(v) for b, v in rates.items()}
print("| broker | median msg/s | runs | lost | ratio to mosquitto |")
print("|---|---|---|---|---|")
for b in ["periodic", "always", "memory", "mosquitto"]:
    if b in m:
        ratio = m[b] / m["mosquitto"] if m.get("mosquitto") else float("nan")
        name = {"periodic": "astramq sync=periodic", "always": "astramq sync=always", "memory": "astramq (no data_dir)"}.get(b, b)
        print(f"| {name} | {m[b]:.0f} | {len(rates[b])} | {lost[b]} | {ratio:.2f} |")
'

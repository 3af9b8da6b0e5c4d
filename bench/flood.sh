#!/usr/bin/env bash
# The flood benchmark (issue #11): what one set of flooding clients does to everyone
# else in a cluster.
#
#   bench/flood.sh                                    # the current build ("after")
#   BEFORE_BIN=/path/to/old/astramq bench/flood.sh    # the same run on an older build
#                                                     # first ("before"), then "after"
#   DURATION=5s FLOOD=20 bench/flood.sh               # a quick look
#
# redis-server and three clustered nodes n1, n2, n3 (release build), all pinned to
# BROKER_CPU; the load generator `astramq bench flood` pinned to BENCH_CPU. FLOOD QoS 0
# publishers on n1 publish as fast as TCP allows to their subscribers on n2; at the
# same time PROBES QoS 1 pairs (n1 -> n2) publish PROBE_RATE messages a second each.
# Printed per run: the probe's latency p50/p99 and loss (acknowledged, never received),
# what the flood got through, and each node's peak RSS (VmHWM) with its RSS growth over
# the second half of the flood (a bounded node stops growing). For the current build,
# also n1's and n2's drop and throttle counters from /metrics.
#
# The nodes run with the project's defaults for every bound (no [limits] rate keys in
# the configuration), plus the benchmark's usual max_inflight = 100 and
# max_queued_messages = 1000. The "before" build must accept that configuration.
#
# Environment: DURATION (10s), FLOOD (50), PROBES (20), PROBE_RATE (10), PAYLOAD (64),
# BROKER_CPU (0), BENCH_CPU (1), BEFORE_BIN (unset), NO_BUILD (0), CARGO_TARGET_DIR,
# AFTER_LIMITS (extra `[limits]` lines for the current build only, e.g.
# "max_publish_rate = 1000"; the older build may not know the keys).
# Every process is started fresh per run and stopped by PID afterwards.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-10s}
FLOOD=${FLOOD:-50}
PROBES=${PROBES:-20}
PROBE_RATE=${PROBE_RATE:-10}
PAYLOAD=${PAYLOAD:-64}
BROKER_CPU=${BROKER_CPU:-0}
BENCH_CPU=${BENCH_CPU:-1}
BEFORE_BIN=${BEFORE_BIN:-}
NO_BUILD=${NO_BUILD:-0}
AFTER_LIMITS=${AFTER_LIMITS:-}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
ASTRAMQ=$CARGO_TARGET_DIR/release/astramq
WORK=$(mktemp -d /tmp/astramq-flood.XXXXXX)
PIDS=()
REDIS_PID=
SAMPLER_PID=

log() { printf '[flood] %s\n' "$*" >&2; }

stop_pid() { # pid: TERM, wait up to 3 s, then KILL
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

stop_all() {
    local pid
    [[ -n $SAMPLER_PID ]] && stop_pid "$SAMPLER_PID"
    SAMPLER_PID=
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    PIDS=()
    [[ -n $REDIS_PID ]] && stop_pid "$REDIS_PID"
    REDIS_PID=
}

cleanup() {
    stop_all
    rm -rf "$WORK"
}
trap cleanup EXIT

command -v redis-server >/dev/null || { log "redis-server missing"; exit 1; }
command -v taskset >/dev/null || { log "taskset missing (util-linux)"; exit 1; }
if [[ $NO_BUILD != 1 ]]; then
    log "building astramq (release)"
    (cd "$ROOT" && cargo build --release -q -p astramq)
fi
ulimit -n "$(ulimit -Hn)"

# Below the ephemeral port range, where other processes' connections could take them.
BASE=$((20000 + RANDOM % 10000))
P1=$BASE P2=$((BASE + 1)) P3=$((BASE + 2)) RP=$((BASE + 3))
H1=$((BASE + 4)) H2=$((BASE + 5)) H3=$((BASE + 6))
config() { # extra [limits] lines
    printf 'log_level = "warn"\n[limits]\nmax_inflight = 100\nmax_queued_messages = 1000\n%s\n[shutdown]\ngrace_period_secs = 1\n' "$1" \
        >"$WORK/astramq.toml"
}

wait_port() {
    for _ in $(seq 1 1200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    log "nothing listens on $1"
    return 1
}

wait_line() { # file pattern: the line, once it appears
    for _ in $(seq 1 1200); do
        if grep -m1 "$2" "$1" 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    log "no '$2' in $1: $(tail -n 3 "$1") $(tail -n 3 "${1%.out}.err" 2>/dev/null)"
    return 1
}

kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

start_node() { # binary port health id [join]
    local bin=$1 port=$2 health=$3 id=$4 join=${5:-}
    local args=(broker --listen "127.0.0.1:$port" --config astramq.toml --node-id "$id"
        --redis "redis://127.0.0.1:$RP" --gossip-listen 127.0.0.1:0 --health-listen "127.0.0.1:$health")
    [[ -n $join ]] && args+=(--join "$join")
    (cd "$WORK" && exec taskset -c "$BROKER_CPU" "$bin" "${args[@]}" \
        >"$WORK/$id.out" 2>"$WORK/$id.err") &
    PIDS+=($!)
}

run() { # label node-binary
    local label=$1 bin=$2
    log "$label: starting redis-server and n1, n2, n3 ($bin)"
    taskset -c "$BROKER_CPU" redis-server --port "$RP" --bind 127.0.0.1 --save '' \
        --appendonly no --loglevel warning >"$WORK/redis.log" 2>&1 &
    REDIS_PID=$!
    wait_port "$RP"
    start_node "$bin" "$P1" "$H1" n1
    local g
    g=$(wait_line "$WORK/n1.out" '^gossip on ' | sed 's/^gossip on //')
    start_node "$bin" "$P2" "$H2" n2 "$g"
    start_node "$bin" "$P3" "$H3" n3 "$g"
    wait_line "$WORK/n2.out" '^gossip on ' >/dev/null
    wait_line "$WORK/n3.out" '^gossip on ' >/dev/null
    wait_port "$P2"
    wait_port "$P3"
    sleep 1 # membership converges (SWIM rounds)
    local pids=("${PIDS[@]}" "$REDIS_PID")
    # RSS of every process each second: peak and growth over the flood's second half.
    (
        while :; do
            line=$(date +%s.%N)
            for p in "${pids[@]}"; do line+=" $(kib "$p" VmRSS)"; done
            echo "$line"
            sleep 1
        done
    ) >"$WORK/rss-$label" &
    SAMPLER_PID=$!
    log "$label: flood ($FLOOD QoS 0 pairs) with $PROBES QoS 1 probe pairs at $PROBE_RATE msg/s, $DURATION"
    local ok=1
    taskset -c "$BENCH_CPU" "$ASTRAMQ" bench flood -n "$FLOOD" --probes "$PROBES" \
        --probe-rate "$PROBE_RATE" --payload "$PAYLOAD" -d "$DURATION" --drain 10s -V 5 \
        --hosts "127.0.0.1:$P2,127.0.0.1:$P1" --broker-pid "${PIDS[0]}" --no-progress \
        >"$WORK/out-$label.json" 2>"$WORK/out-$label.err" || ok=0
    stop_pid "$SAMPLER_PID"
    SAMPLER_PID=
    local hwm=()
    for p in "${pids[@]}"; do hwm+=("$(kib "$p" VmHWM)"); done
    : >"$WORK/metrics-$label"
    for h in "$H1" "$H2"; do
        curl -s "http://127.0.0.1:$h/metrics" 2>/dev/null |
            grep -E '^astramq_(dropped_total|publish_throttled_total|redis_dropped_qos0_total)' |
            sed "s/^/  n$((h - H1 + 1)) /" >>"$WORK/metrics-$label" || true
    done
    stop_all
    if ((!ok)); then
        log "$label: bench failed: $(tail -n 5 "$WORK/out-$label.err")"
        return 1
    fi
    python3 - "$label" "$WORK/out-$label.json" "$WORK/rss-$label" "${hwm[@]}" <<'PY'
import json, sys
label, out, rss_file = sys.argv[1:4]
hwm = [int(x or 0) for x in sys.argv[4:]]
r = json.loads(open(out).read().strip().splitlines()[-1])
flood, probe = r["flood"], r["probe"]
def get(d, *path):
    for p in path:
        d = d.get(p) if isinstance(d, dict) else None
    return d
lat = probe.get("latency_ms") or {}
rows = [l.split() for l in open(rss_file) if l.strip()]
names = ["n1", "n2", "n3", "redis"]
growth = []
if len(rows) >= 4:
    mid, last = rows[len(rows) // 2], rows[-1]
    growth = [(int(b) - int(a)) / 1024 for a, b in zip(mid[1:], last[1:])]
print(f"== {label}")
print(f"probe: p50 {lat.get('p50', float('nan')):.1f} ms  p99 {lat.get('p99', float('nan')):.1f} ms  "
      f"max {lat.get('max', float('nan')):.1f} ms  lost {probe.get('lost')}  "
      f"acknowledged {probe['acknowledged']}  received {probe['received']}  rejected {probe['rejected']}")
print(f"flood: sent {flood['sent_per_s']:.0f}/s  received {flood['received_per_s']:.0f}/s  "
      f"not received {flood.get('not_received')} of {flood['sent']}")
print("peak RSS MiB: " + "  ".join(f"{n} {h / 1024:.0f}" for n, h in zip(names, hwm)))
if growth:
    print("RSS growth over the second half MiB: " + "  ".join(f"{n} {g:+.1f}" for n, g in zip(names, growth)))
PY
    [[ -s $WORK/metrics-$label ]] && { echo "counters:"; cat "$WORK/metrics-$label"; }
    return 0
}

log "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
if [[ -n $BEFORE_BIN ]]; then
    config ""
    run before "$BEFORE_BIN"
fi
config "$AFTER_LIMITS"
run after "$ASTRAMQ"
log "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "command: ${AFTER_LIMITS:+AFTER_LIMITS='$AFTER_LIMITS' }DURATION=$DURATION FLOOD=$FLOOD PROBES=$PROBES PROBE_RATE=$PROBE_RATE PAYLOAD=$PAYLOAD BROKER_CPU=$BROKER_CPU BENCH_CPU=$BENCH_CPU${BEFORE_BIN:+ BEFORE_BIN=$BEFORE_BIN} bench/flood.sh"

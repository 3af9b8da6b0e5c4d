#!/usr/bin/env bash
# AstraMQ against Mosquitto on this machine, in one run, interleaved (A B A B ...).
#
#   bench/compare.sh            # full run (about 10 minutes), rewrites docs/benchmarks.md
#   REPEAT=1 DURATION=3s MICRO=0 bench/compare.sh   # a quick look
#
# The broker is pinned to one core and the load generator (`astramq bench`) to another
# with taskset; each broker is started fresh for every run, so RSS starts from zero
# connections. Every scenario runs REPEAT times per broker; docs/benchmarks.md gets the
# medians, the AstraMQ/Mosquitto ratios, the exact commands, the machine and a chart
# (docs/benchmarks.svg). Raw JSON lines go to docs/benchmarks/results.jsonl.
#
# Environment: REPEAT (3), DURATION (8s), BROKER_CPU (0), BENCH_CPU (1), MICRO (1: run the
# codec and topic criterion benchmarks briefly), CONNS (19000), CARGO_TARGET_DIR,
# RENDER_ONLY (1: skip the runs and rewrite the docs from docs/benchmarks/*, e.g. after
# editing bench/notes.md, the hand-written findings included in the page). The other
# sections are kept in files of their own and included as they are: cluster and load
# balancer in docs/benchmarks/cluster.md (rendered by bench/cluster.sh, whose
# hand-written findings are bench/notes-cluster.md and notes-lb.md), flood in
# flood.md, and round 2 (persistence, TLS, arrival order, the seam, the allocator,
# scale) in round2.md. Edit those, never docs/benchmarks.md: a run rewrites it.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPEAT=${REPEAT:-3}
DURATION=${DURATION:-8s}
BROKER_CPU=${BROKER_CPU:-0}
BENCH_CPU=${BENCH_CPU:-1}
MICRO=${MICRO:-1}
CONNS=${CONNS:-19000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
DOCS=$ROOT/docs
RAW=$DOCS/benchmarks/results.jsonl
MICRO_OUT=$DOCS/benchmarks/micro.txt
MACHINE=$DOCS/benchmarks/machine.txt
RENDER_ONLY=${RENDER_ONLY:-0}
WORK=$(mktemp -d /tmp/astramq-compare.XXXXXX)
BROKER_PID=

log() { printf '[compare] %s\n' "$*" >&2; }

cleanup() {
    if [[ -n $BROKER_PID ]]; then kill -KILL "$BROKER_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT

# --- tools -------------------------------------------------------------------------
MOSQUITTO=$(command -v mosquitto || true)
[[ -z $MOSQUITTO && -x /usr/sbin/mosquitto ]] && MOSQUITTO=/usr/sbin/mosquitto
if [[ -z $MOSQUITTO ]]; then
    log "installing mosquitto"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto
    MOSQUITTO=/usr/sbin/mosquitto
fi
command -v taskset >/dev/null || { log "taskset missing (util-linux)"; exit 1; }
ASTRAMQ=$CARGO_TARGET_DIR/release/astramq
if [[ $RENDER_ONLY != 1 ]]; then
    log "building astramq (release)"
    (cd "$ROOT" && cargo build --release -q -p astramq)
fi
ulimit -n "$(ulimit -Hn)"

# --- brokers -------------------------------------------------------------------------
# Equivalent limits: 100 messages in flight and 1000 queued per client, no persistence,
# Nagle off, quiet logs.
PORT_A=$((20000 + RANDOM % 10000))
PORT_M=$((PORT_A + 1))
cat >"$WORK/astramq.toml" <<EOF
log_level = "warn"
[limits]
max_inflight = 100
max_queued_messages = 1000
# Like Mosquitto's defaults: no per-client rate or connection limits.
max_publish_rate = 0
max_publish_bytes_rate = 0
max_connection_rate = 0
max_connections = 0
[shutdown]
grace_period_secs = 1
EOF
cat >"$WORK/mosquitto.conf" <<EOF
listener $PORT_M 127.0.0.1
allow_anonymous true
max_inflight_messages 100
max_queued_messages 1000
set_tcp_nodelay true
persistence false
log_type error
EOF
A_CMD="taskset -c $BROKER_CPU $ASTRAMQ --listen 127.0.0.1:$PORT_A --config astramq.toml"
M_CMD="taskset -c $BROKER_CPU $MOSQUITTO -c mosquitto.conf"

wait_port() {
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    log "broker did not listen on $1"
    return 1
}

start_broker() { # astramq|mosquitto
    cd "$WORK"
    if [[ $1 == astramq ]]; then
        $A_CMD >>"$WORK/astramq.log" 2>&1 &
        BROKER_PID=$!
        wait_port "$PORT_A"
    else
        $M_CMD >>"$WORK/mosquitto.log" 2>&1 &
        BROKER_PID=$!
        wait_port "$PORT_M"
    fi
    cd - >/dev/null
}

stop_broker() {
    kill -TERM "$BROKER_PID" 2>/dev/null || true
    for _ in $(seq 1 60); do
        kill -0 "$BROKER_PID" 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=
}

# --- scenarios ------------------------------------------------------------------------
# name|bench arguments (hosts, broker pid and source addresses are added per run)
SCENARIOS=(
    "ingest-qos0|pub -n 100 --qos 0 --payload 64 --duration $DURATION --drain 60s"
    "pairs-qos1|pairs -n 500 --qos 1 --payload 64 --duration $DURATION"
    "pairs-qos1-10mps|pairs -n 500 --qos 1 --payload 64 --rate 10 --duration $DURATION"
    "fanout-100-qos1|fanout -n 100 --qos 1 --payload 64 --rate 1000 --duration $DURATION"
    "fanin-100-qos1|fanin -n 100 --qos 1 --payload 64 --rate 100 --duration $DURATION"
    "conn-$CONNS|conn -n $CONNS --keep-alive 60 --duration 5s"
)

mkdir -p "$DOCS/benchmarks"
printf '%s\n' "${SCENARIOS[@]}" >"$WORK/scenarios.txt"
[[ $RENDER_ONLY == 1 ]] && REPEAT_RUNS=0 || REPEAT_RUNS=$REPEAT
[[ $RENDER_ONLY == 1 ]] || : >"$RAW"
run_no=0
for rep in $(seq 1 "$REPEAT_RUNS"); do
    for entry in "${SCENARIOS[@]}"; do
        name=${entry%%|*}
        args=${entry#*|}
        # Alternate which broker goes first, so neither always runs on a warmer machine.
        order="astramq mosquitto"
        ((rep % 2 == 0)) && order="mosquitto astramq"
        for broker in $order; do
            run_no=$((run_no + 1))
            port=$PORT_A
            [[ $broker == mosquitto ]] && port=$PORT_M
            # Fresh source addresses for every run: the previous run's closed sockets
            # sit in TIME_WAIT on the old ones.
            src="127.0.$((run_no % 250 + 1)).1,127.0.$((run_no % 250 + 1)).2"
            start_broker "$broker"
            cmd="taskset -c $BENCH_CPU astramq bench $args --hosts 127.0.0.1:$port --source-addrs $src --broker-pid $BROKER_PID --no-progress"
            log "rep $rep $name $broker"
            if taskset -c "$BENCH_CPU" "$ASTRAMQ" bench $args --hosts "127.0.0.1:$port" \
                --source-addrs "$src" --broker-pid "$BROKER_PID" --no-progress \
                >"$WORK/out.json" 2>"$WORK/out.err"; then
                printf '{"broker":"%s","name":"%s","rep":%d,"report":%s}\n' \
                    "$broker" "$name" "$rep" "$(tail -n 1 "$WORK/out.json")" >>"$RAW"
            else
                log "bench failed: $(tail -n 3 "$WORK/out.err")"
            fi
            grep -v '^{' "$WORK/out.err" | sed 's/^/    /' >&2 || true
            stop_broker
        done
    done
done

# --- micro-benchmarks -------------------------------------------------------------------
if [[ $MICRO == 1 && $RENDER_ONLY != 1 ]]; then
    log "criterion: codec and topic (short measurement)"
    (cd "$ROOT" && cargo bench -q -p astramq-mqtt --bench codec --bench topic -- \
        --warm-up-time 1 --measurement-time 2 --noplot 2>/dev/null) | tee "$MICRO_OUT" >&2 || true
elif [[ $RENDER_ONLY != 1 ]]; then
    : >"$MICRO_OUT"
fi

# --- report -------------------------------------------------------------------------------
[[ $RENDER_ONLY == 1 ]] || {
    echo "lscpu: $(lscpu | grep -E 'Model name' | sed 's/.*: *//')," \
        "$(nproc) CPUs available, $(free -g | awk '/Mem:/ {print $2}') GiB RAM"
    echo "uname: $(uname -srmo)"
    echo "mosquitto: $($MOSQUITTO -h 2>/dev/null | head -n 1)"
    echo "astramq: $(cd "$ROOT" && git rev-parse --short HEAD) ($(rustc -V))"
    echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
} >"$MACHINE"
python3 "$ROOT/bench/render.py" --results "$RAW" --machine "$MACHINE" \
    --micro "$MICRO_OUT" --scenarios "$WORK/scenarios.txt" \
    --astramq-conf "$WORK/astramq.toml" --mosquitto-conf <(sed "s/$PORT_M/PORT/" "$WORK/mosquitto.conf") \
    --astramq-cmd "$(echo "${A_CMD//$PORT_A/PORT}" | sed "s|$ASTRAMQ|astramq|")" --mosquitto-cmd "$M_CMD" \
    --notes "$ROOT/bench/notes.md" --extra "$DOCS/benchmarks/cluster.md" --extra "$DOCS/benchmarks/flood.md" --extra "$DOCS/benchmarks/round2.md" --repeat "$REPEAT" --md "$DOCS/benchmarks.md" --svg "$DOCS/benchmarks.svg"
log "wrote docs/benchmarks.md, docs/benchmarks.svg, $RAW"
rm -rf "$WORK"

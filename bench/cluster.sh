#!/usr/bin/env bash
# Cluster and load-balancer rows for docs/benchmarks.md, in one run, interleaved.
#
#   bench/cluster.sh                                  # full run (about 10 minutes)
#   REPEAT=1 DURATION=3s bench/cluster.sh             # a quick look
#   RENDER_ONLY=1 bench/cluster.sh                    # rewrite the docs from the raw results
#
# Part "cluster" (issue #4): the same `pairs` load against
#   - single:  one plain node (no Redis), and
#   - cluster: three clustered nodes n1, n2, n3 sharing one redis-server, the load
#              generator given `--hosts n1,n2`, so every subscriber sits on one node and
#              its publisher on the other: every message crosses nodes through Redis.
#   All broker-side processes (the node, or the three nodes and redis-server) are pinned
#   to BROKER_CPU and the load generator to BENCH_CPU: the cluster gets the same one
#   core the single node gets, so the ratio is the cost of crossing nodes, not the
#   gain of more hardware. Redis commands are counted with CONFIG RESETSTAT right
#   before the load generator starts and INFO commandstats right after it ends.
#
# Part "lb" (issue #5): the same `pairs` load against one plain node
#   - direct:         to the node,
#   - lb:             through `astramq lb --backends NODE --proxy-protocol false`,
#   - haproxy:        through HAProxy in TCP mode, round robin, no inspection,
#   - lb-proxy:       through `astramq lb` with PROXY v2 to the node's --proxy-listen,
#   - haproxy-proxy:  through HAProxy configured as deploy/haproxy.cfg (PROXY v2,
#                     MQTT validation, client-id stick table, MQTT health check).
#   The node is pinned to BROKER_CPU, the load balancer to BENCH_CPU with the load
#   generator (the node keeps its core to itself in every configuration).
#
# Every process is started fresh for every run and stopped (by PID) after it. Raw JSON
# lines go to docs/benchmarks/cluster.jsonl; bench/render_cluster.py turns them into
# docs/benchmarks/cluster.md, which bench/render.py includes in docs/benchmarks.md
# (re-rendered here with `RENDER_ONLY=1 bench/compare.sh`).
#
# Environment: REPEAT (3), DURATION (6s), BROKER_CPU (0), BENCH_CPU (1), PAIRS (500),
# PARTS ("cluster lb"), LB_CONFIGS ("direct lb haproxy lb-proxy haproxy-proxy"),
# CARGO_TARGET_DIR, RENDER_ONLY (1: skip the runs and rewrite the docs, e.g. after editing
# the hand-written findings bench/notes-cluster.md and bench/notes-lb.md).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPEAT=${REPEAT:-3}
DURATION=${DURATION:-6s}
BROKER_CPU=${BROKER_CPU:-0}
BENCH_CPU=${BENCH_CPU:-1}
PAIRS=${PAIRS:-500}
PARTS=${PARTS:-cluster lb}
LB_CONFIGS=${LB_CONFIGS:-direct lb haproxy lb-proxy haproxy-proxy}
RENDER_ONLY=${RENDER_ONLY:-0}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
DOCS=$ROOT/docs
RAW=$DOCS/benchmarks/cluster.jsonl
WORK=$(mktemp -d /tmp/astramq-cluster.XXXXXX)
ASTRAMQ=$CARGO_TARGET_DIR/release/astramq
PIDS=()       # everything started for the current run
REDIS_PID=

log() { printf '[cluster] %s\n' "$*" >&2; }

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
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    PIDS=()
}

cleanup() {
    stop_all
    [[ -n $REDIS_PID ]] && stop_pid "$REDIS_PID"
    rm -rf "$WORK"
}
trap cleanup EXIT

render() {
    python3 "$ROOT/bench/render_cluster.py" --results "$RAW" --notes "$ROOT/bench/notes-cluster.md" \
        --lb-notes "$ROOT/bench/notes-lb.md" \
        --repeat "$REPEAT" --duration "$DURATION" --pairs "$PAIRS" \
        --broker-cpu "$BROKER_CPU" --bench-cpu "$BENCH_CPU" --out "$DOCS/benchmarks/cluster.md"
    RENDER_ONLY=1 "$ROOT/bench/compare.sh"
}
if [[ $RENDER_ONLY == 1 ]]; then
    render
    exit 0
fi

# --- tools -------------------------------------------------------------------------
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || need+=(haproxy)
if ((${#need[@]})); then
    log "installing ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
command -v taskset >/dev/null || { log "taskset missing (util-linux)"; exit 1; }
log "building astramq (release)"
(cd "$ROOT" && cargo build --release -q -p astramq)
ulimit -n "$(ulimit -Hn)"
CLK_TCK=$(getconf CLK_TCK)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# --- configuration ----------------------------------------------------------------------
BASE=$((20000 + RANDOM % 10000))
P1=$BASE P2=$((BASE + 1)) P3=$((BASE + 2))   # node MQTT ports
PP=$((BASE + 3))                             # node PROXY v2 port (lb part)
LBP=$((BASE + 4))                            # astramq lb / HAProxy port
RP=$((BASE + 5))                             # redis
# Same limits as bench/compare.sh.
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
# HAProxy, like for like with `astramq lb --proxy-protocol false`: TCP, round robin,
# no inspection, no health check (astramq lb --backends has none either), one thread.
cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread 1
defaults
    mode tcp
    timeout connect 2s
    timeout client 10m
    timeout server 10m
    retries 2
    option redispatch
frontend mqtt
    bind 127.0.0.1:$LBP
    default_backend astramq
backend astramq
    balance roundrobin
    server node1 127.0.0.1:$P1
EOF
# HAProxy as deployed: deploy/haproxy.cfg with this machine's addresses, one thread,
# no logging (the template logs every connection to stdout).
sed -e "s|^    bind :1883|    bind 127.0.0.1:$LBP|" \
    -e '/^    server node[23] /d' \
    -e "s|^    server node1 .*|    server node1 127.0.0.1:$PP|" \
    -e 's|^    log stdout.*|    nbthread 1|' \
    -e '/^    log global/d' -e '/^    option tcplog/d' -e '/^    log-format/d' \
    "$ROOT/deploy/haproxy.cfg" >"$WORK/haproxy-proxy.cfg"
grep -q "server node1 127.0.0.1:$PP" "$WORK/haproxy-proxy.cfg" || { log "haproxy template edit failed"; exit 1; }
"$HAPROXY" -c -q -f "$WORK/haproxy.cfg"
"$HAPROXY" -c -q -f "$WORK/haproxy-proxy.cfg"
mkdir -p "$DOCS/benchmarks"
for f in haproxy haproxy-proxy; do
    sed -e "s/127.0.0.1:$LBP/127.0.0.1:L/" -e "s/127.0.0.1:$P1\$/127.0.0.1:P/" -e "s/127.0.0.1:$PP\$/127.0.0.1:PP/" \
        "$WORK/$f.cfg" >"$DOCS/benchmarks/$f.cfg"
done

wait_port() {
    for _ in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    log "nothing listens on $1"
    return 1
}

wait_line() { # file pattern: the line, once it appears
    for _ in $(seq 1 200); do
        if grep -m1 "$2" "$1" 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    log "no '$2' in $1: $(tail -n 3 "$1")"
    return 1
}

cpu_ticks() { # pid...: utime + stime of all, in clock ticks
    local total=0 pid f
    for pid in "$@"; do
        f=$(cut -d' ' -f14,15 "/proc/$pid/stat" 2>/dev/null || echo "0 0")
        total=$((total + ${f% *} + ${f#* }))
    done
    echo "$total"
}

rcli() { redis-cli -p "$RP" "$@"; }

start_redis() {
    taskset -c "$BROKER_CPU" redis-server --port "$RP" --bind 127.0.0.1 --save '' \
        --appendonly no --loglevel warning >"$WORK/redis.log" 2>&1 &
    REDIS_PID=$!
    wait_port "$RP"
}

start_node() { # port [cluster args...]: starts a node, echoes nothing, appends to PIDS
    local port=$1
    shift
    (cd "$WORK" && exec taskset -c "$BROKER_CPU" "$ASTRAMQ" broker --listen "127.0.0.1:$port" \
        --config astramq.toml "$@" >"$WORK/node-$port.out" 2>>"$WORK/node-$port.err") &
    PIDS+=($!)
}

# Started per run; sets BROKER_SIDE (PIDs whose CPU is the broker side), PROXY_PID,
# NODE_PIDS, TARGET (the --hosts argument).
setup() { # part config
    BROKER_SIDE=() PROXY_PID= NODE_PIDS=()
    case $1/$2 in
    cluster/single | lb/direct)
        start_node "$P1"
        wait_port "$P1"
        NODE_PIDS=("${PIDS[@]}")
        TARGET=127.0.0.1:$P1
        ;;
    cluster/cluster)
        rcli FLUSHALL >/dev/null
        local g
        start_node "$P1" --node-id n1 --redis "redis://127.0.0.1:$RP" --gossip-listen 127.0.0.1:0
        g=$(wait_line "$WORK/node-$P1.out" '^gossip on ' | sed 's/^gossip on //')
        start_node "$P2" --node-id n2 --redis "redis://127.0.0.1:$RP" --gossip-listen 127.0.0.1:0 --join "$g"
        start_node "$P3" --node-id n3 --redis "redis://127.0.0.1:$RP" --gossip-listen 127.0.0.1:0 --join "$g"
        wait_line "$WORK/node-$P2.out" '^gossip on ' >/dev/null
        wait_line "$WORK/node-$P3.out" '^gossip on ' >/dev/null
        sleep 1 # membership converges (SWIM rounds)
        NODE_PIDS=("${PIDS[@]}")
        TARGET=127.0.0.1:$P1,127.0.0.1:$P2
        ;;
    lb/lb | lb/lb-proxy | lb/haproxy | lb/haproxy-proxy)
        if [[ $2 == *-proxy ]]; then
            start_node "$P1" --proxy-listen "127.0.0.1:$PP"
            wait_port "$PP"
        else
            start_node "$P1"
            wait_port "$P1"
        fi
        NODE_PIDS=("${PIDS[@]}")
        case $2 in
        lb) taskset -c "$BENCH_CPU" "$ASTRAMQ" lb --listen "127.0.0.1:$LBP" --backends "127.0.0.1:$P1" \
                --proxy-protocol false --log-level warn >"$WORK/lb.out" 2>"$WORK/lb.err" & ;;
        lb-proxy) taskset -c "$BENCH_CPU" "$ASTRAMQ" lb --listen "127.0.0.1:$LBP" --backends "127.0.0.1:$PP" \
                --proxy-protocol true --log-level warn >"$WORK/lb.out" 2>"$WORK/lb.err" & ;;
        haproxy) taskset -c "$BENCH_CPU" "$HAPROXY" -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.out" 2>&1 & ;;
        haproxy-proxy)
            taskset -c "$BENCH_CPU" "$HAPROXY" -db -f "$WORK/haproxy-proxy.cfg" >"$WORK/haproxy.out" 2>&1 &
            ;;
        esac
        PROXY_PID=$!
        PIDS+=("$PROXY_PID")
        wait_port "$LBP"
        # HAProxy with health checks: wait for the server to be up (rise 2, inter 1s).
        [[ $2 == haproxy-proxy ]] && sleep 2.5
        TARGET=127.0.0.1:$LBP
        ;;
    *)
        log "unknown configuration $1/$2"
        exit 1
        ;;
    esac
}

# --- scenarios ------------------------------------------------------------------------
# part|name|bench arguments (hosts and source addresses are added per run)
SCENARIOS=(
    "cluster|pairs-qos0|pairs -n $PAIRS --qos 0 --payload 64 --duration $DURATION"
    "cluster|pairs-qos0-100mps|pairs -n $PAIRS --qos 0 --payload 64 --rate 100 --duration $DURATION"
    "cluster|pairs-qos1|pairs -n $PAIRS --qos 1 --payload 64 --duration $DURATION"
    "cluster|pairs-qos1-10mps|pairs -n $PAIRS --qos 1 --payload 64 --rate 10 --duration $DURATION"
    "lb|pairs-qos1|pairs -n $PAIRS --qos 1 --payload 64 --duration $DURATION"
    "lb|pairs-qos1-10mps|pairs -n $PAIRS --qos 1 --payload 64 --rate 10 --duration $DURATION"
)
configs_of() { [[ $1 == cluster ]] && echo "single cluster" || echo "$LB_CONFIGS"; }

mkdir -p "$DOCS/benchmarks"
: >"$RAW"
[[ " $PARTS " == *" cluster "* ]] && start_redis
run_no=0
for rep in $(seq 1 "$REPEAT"); do
    for entry in "${SCENARIOS[@]}"; do
        part=${entry%%|*}
        rest=${entry#*|}
        name=${rest%%|*}
        args=${rest#*|}
        [[ " $PARTS " == *" $part "* ]] || continue
        # Rotate the order of the configurations each repetition.
        read -r -a order <<<"$(configs_of "$part")"
        k=$(((rep - 1) % ${#order[@]}))
        order=("${order[@]:k}" "${order[@]:0:k}")
        for config in "${order[@]}"; do
            run_no=$((run_no + 1))
            src="127.1.$((run_no % 250 + 1)).1,127.1.$((run_no % 250 + 1)).2"
            setup "$part" "$config"
            side=("${NODE_PIDS[@]}")
            [[ $part == cluster && $config == cluster ]] && side+=("$REDIS_PID")
            [[ $part == cluster && $config == cluster ]] && rcli CONFIG RESETSTAT >/dev/null
            t0=$(date +%s.%N)
            c_nodes0=$(cpu_ticks "${NODE_PIDS[@]}")
            c_redis0=$(cpu_ticks "$REDIS_PID")
            c_proxy0=$([[ -n $PROXY_PID ]] && cpu_ticks "$PROXY_PID" || echo 0)
            log "rep $rep $part $name $config"
            ok=1
            taskset -c "$BENCH_CPU" "$ASTRAMQ" bench $args --hosts "$TARGET" --source-addrs "$src" \
                --broker-pid "${NODE_PIDS[0]}" --no-progress >"$WORK/out.json" 2>"$WORK/out.err" || ok=0
            t1=$(date +%s.%N)
            c_nodes1=$(cpu_ticks "${NODE_PIDS[@]}")
            c_redis1=$(cpu_ticks "$REDIS_PID")
            c_proxy1=$([[ -n $PROXY_PID ]] && cpu_ticks "$PROXY_PID" || echo 0)
            redis_json=null
            if [[ $part == cluster && $config == cluster ]]; then
                redis_json=$(rcli INFO commandstats | tr -d '\r' | python3 -c '
import json, re, sys
calls = {}
for line in sys.stdin:
    m = re.match(r"cmdstat_([^:]+):calls=(\d+)", line)
    if m and not m.group(1).startswith(("info", "config")):
        calls[m.group(1)] = int(m.group(2))
print(json.dumps(calls, sort_keys=True))')
            fi
            if ((ok)); then
                wall=$(awk "BEGIN {print $t1 - $t0}")
                cpu() { awk "BEGIN {printf \"%.1f\", 100 * ($2 - $1) / $CLK_TCK / $wall}"; }
                printf '{"part":"%s","config":"%s","name":"%s","rep":%d,"cpu":{"nodes":%s,"redis":%s,"proxy":%s,"wall_s":%s},"redis_calls":%s,"report":%s}\n' \
                    "$part" "$config" "$name" "$rep" "$(cpu "$c_nodes0" "$c_nodes1")" \
                    "$([[ $config == cluster ]] && cpu "$c_redis0" "$c_redis1" || echo null)" \
                    "$([[ -n $PROXY_PID ]] && cpu "$c_proxy0" "$c_proxy1" || echo null)" \
                    "$(printf '%.2f' "$wall")" "$redis_json" "$(tail -n 1 "$WORK/out.json")" >>"$RAW"
            else
                log "bench failed: $(tail -n 3 "$WORK/out.err")"
            fi
            grep -v '^{' "$WORK/out.err" | sed 's/^/    /' >&2 || true
            stop_all
        done
    done
done
if [[ -n $REDIS_PID ]]; then
    stop_pid "$REDIS_PID"
    REDIS_PID=
fi
# Warnings the processes logged, most frequent first (timestamps cut), for the run log.
for f in "$WORK"/node-*.err "$WORK"/lb.err; do
    [[ -s $f ]] || continue
    log "$(basename "$f"), $(wc -l <"$f") lines:"
    { cut -c28- "$f" | sed 's/[0-9][0-9]*/N/g' | sort | uniq -c | sort -rn | head -n 8 >&2; } || true
done

{
    echo "lscpu: $(lscpu | grep -E 'Model name' | sed 's/.*: *//')," \
        "$(nproc) CPUs available, $(free -g | awk '/Mem:/ {print $2}') GiB RAM"
    echo "uname: $(uname -srmo)"
    echo "redis: $(redis-server --version | cut -d' ' -f3)"
    echo "haproxy: $("$HAPROXY" -v | head -n 1 | cut -d' ' -f1-3)"
    echo "astramq: $(cd "$ROOT" && git rev-parse --short HEAD) ($(rustc -V))"
    echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "load average before: $LOAD_BEFORE; after: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$DOCS/benchmarks/cluster-machine.txt"
render
log "wrote docs/benchmarks.md, docs/benchmarks/cluster.md, $RAW"

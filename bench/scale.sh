#!/usr/bin/env bash
# Scale on this machine (issue #17): a three-node cluster sharing one redis-server,
# within the 20,000-files-per-process limit.
#
#   1. idle connections: CONNS per node (default 19,000; 57,000 in all), each node
#      loaded by its own `astramq bench conn` process (one process could not hold them
#      all), persistent MQTT 5 sessions (Clean Start 0, 10 min expiry) so each has its
#      session key in Redis. Reported: connect rate per node, RSS per connection per
#      node, Redis memory per session.
#   2. subscriptions: SUBS in all (default 1,000,000; half exact filters, half with a
#      `+` level), FILTERS per connection in one SUBSCRIBE, connections spread over
#      the nodes (bench/subs_scale.py). Reported: subscriptions per second, RSS per
#      subscription per node (every node holds every route), Redis memory per route,
#      how long the last route took to reach another node, and QoS 1 pairs throughput
#      across nodes while they exist.
#
#   bench/scale.sh                       # both parts
#   CONNS=5000 SUBS=100000 bench/scale.sh  # a quick look
#
# Needs redis-server, python3 and a release build (built here). Prints the results as
# one JSON object per part.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CONNS=${CONNS:-19000}
SUBS=${SUBS:-1000000}
FILTERS=${FILTERS:-1000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
ASTRAMQ=$CARGO_TARGET_DIR/release/astramq
WORK=$(mktemp -d /tmp/astramq-scale.XXXXXX)
PIDS=()

log() { printf '[scale] %s\n' "$*" >&2; }
cleanup() {
    rm -f "$WORK/hold"
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
ulimit -n 20000

(cd "$ROOT" && cargo build --release -q -p astramq)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_line() { # file pattern
    for _ in $(seq 1 400); do
        if grep -m1 "$2" "$1" 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    log "no '$2' in $1: $(tail -n 3 "$1")"
    return 1
}
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
redis_mem() { redis-cli -p "$RP" info memory | awk -F: '/^used_memory:/ {print $2+0}'; }

cat >"$WORK/astramq.toml" <<'EOF'
log_level = "warn"
[limits]
max_publish_rate = 0
max_publish_bytes_rate = 0
max_connection_rate = 0
max_connections = 0
max_subscriptions = 0
EOF

RP=$(free_port)
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --loglevel warning \
    >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do redis-cli -p "$RP" ping >/dev/null 2>&1 && break; sleep 0.05; done

PORTS=() NODES=()
start_node() { # name [args...]
    local name=$1 port
    shift
    port=$(free_port)
    (cd "$WORK" && exec "$ASTRAMQ" broker --listen "127.0.0.1:$port" --config astramq.toml \
        --node-id "$name" --redis "redis://127.0.0.1:$RP" --gossip-listen 127.0.0.1:0 "$@" \
        >"$WORK/$name.out" 2>"$WORK/$name.err") &
    PIDS+=($!) NODES+=($!) PORTS+=("$port")
    GOSSIP=$(wait_line "$WORK/$name.out" '^gossip on ' | sed 's/^gossip on //')
}
start_node n1
g=$GOSSIP
start_node n2 --join "$g"
start_node n3 --join "$g"
HOSTS=$(printf '127.0.0.1:%s,' "${PORTS[@]}")
HOSTS=${HOSTS%,}
log "nodes on $HOSTS, redis on $RP"

# Part 1: idle connections, one load generator per node.
declare -a rss0
for i in 0 1 2; do rss0[i]=$(rss_kib "${NODES[i]}"); done
mem0=$(redis_mem)
# Held long enough for a slow ramp (persistent sessions are claimed in Redis one by
# one): the measurement below waits for every connection, not for a fixed time.
hold=$(( CONNS / 200 + 30 ))
fds() { ls "/proc/$1/fd" | wc -l; }
declare -a fd0
for i in 0 1 2; do fd0[i]=$(fds "${NODES[i]}"); done
BENCHES=()
for i in 0 1 2; do
    "$ASTRAMQ" bench conn -n "$CONNS" --conn-rate 3000 --keep-alive 300 --protocol 5 --clean false \
        --session-expiry 600 --client-id-prefix "idle-n$i-" --duration "${hold}s" \
        --hosts "127.0.0.1:${PORTS[i]}" --no-progress >"$WORK/conn-$i.json" 2>"$WORK/conn-$i.err" &
    BENCHES+=($!)
done
# Measured once every node holds all its connections (one socket each), and a moment
# later, when the last sessions' writes are done.
for _ in $(seq 1 $(( hold * 10 ))); do
    up=0
    for i in 0 1 2; do (( $(fds "${NODES[i]}") - fd0[i] >= CONNS )) && up=$((up + 1)); done
    [ "$up" = 3 ] && break
    sleep 0.1
done
[ "$up" = 3 ] || log "not every connection came up within ${hold}s"
sleep 3
declare -a rss1
for i in 0 1 2; do rss1[i]=$(rss_kib "${NODES[i]}"); done
mem1=$(redis_mem)
keys=$(redis-cli -p "$RP" dbsize)
for b in "${BENCHES[@]}"; do wait "$b"; done
python3 - "$WORK" "$CONNS" "$mem0" "$mem1" "$keys" "${rss0[*]}" "${rss1[*]}" <<'EOF'
import json, sys
work, conns, mem0, mem1, keys = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rss0 = [int(x) for x in sys.argv[6].split()]
rss1 = [int(x) for x in sys.argv[7].split()]
nodes = []
for i in range(3):
    r = json.loads(open(f"{work}/conn-{i}.json").read().strip().splitlines()[-1])
    c = r["connections"]
    nodes.append({
        "node": f"n{i + 1}",
        "connected": c["connected"],
        "failed": c["failed"],
        "connect_rate_per_s": round(c["rate_per_s"]),
        "rss_before_mib": round(rss0[i] / 1024, 1),
        "rss_idle_mib": round(rss1[i] / 1024, 1),
        "rss_per_connection_b": round((rss1[i] - rss0[i]) * 1024 / max(c["connected"], 1)),
    })
total = sum(n["connected"] for n in nodes)
print(json.dumps({
    "part": "idle connections",
    "connections": total,
    "nodes": nodes,
    "redis_keys": keys,
    "redis_bytes_per_session": round((mem1 - mem0) / max(total, 1)),
}))
EOF

# Part 2: subscriptions.
for i in 0 1 2; do rss0[i]=$(rss_kib "${NODES[i]}"); done
mem0=$(redis_mem)
touch "$WORK/hold"
python3 "$ROOT/bench/subs_scale.py" --hosts "$HOSTS" --total "$SUBS" --filters "$FILTERS" \
    --hold-file "$WORK/hold" >"$WORK/subs.json" 2>"$WORK/subs.err" &
SUBS_PID=$!
for _ in $(seq 1 6000); do
    [ -s "$WORK/subs.json" ] && break
    kill -0 "$SUBS_PID" 2>/dev/null || { log "subs_scale.py failed: $(tail -3 "$WORK/subs.err")"; exit 1; }
    sleep 0.1
done
# Every node holds every route: wait until their memory stops growing.
sleep 5
for i in 0 1 2; do rss1[i]=$(rss_kib "${NODES[i]}"); done
mem1=$(redis_mem)
"$ASTRAMQ" bench pairs -n 200 --qos 1 --payload 64 --duration 6s --hosts "$HOSTS" \
    --client-id-prefix scale-pairs- --no-progress >"$WORK/pairs.json" 2>"$WORK/pairs.err"
rm -f "$WORK/hold"
wait "$SUBS_PID"
python3 - "$WORK" "$SUBS" "$mem0" "$mem1" "${rss0[*]}" "${rss1[*]}" <<'EOF'
import json, sys
work, subs, mem0, mem1 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rss0 = [int(x) for x in sys.argv[5].split()]
rss1 = [int(x) for x in sys.argv[6].split()]
s = json.loads(open(f"{work}/subs.json").read())
p = json.loads(open(f"{work}/pairs.json").read().strip().splitlines()[-1])
print(json.dumps({
    "part": "subscriptions",
    **s,
    "nodes": [{
        "node": f"n{i + 1}",
        "rss_before_mib": round(rss0[i] / 1024, 1),
        "rss_after_mib": round(rss1[i] / 1024, 1),
        "rss_per_subscription_b": round((rss1[i] - rss0[i]) * 1024 / subs),
    } for i in range(3)],
    "redis_bytes_per_subscription": round((mem1 - mem0) / subs),
    "pairs_qos1_msgs_per_s_meanwhile": round(p["received_per_s"]),
    "pairs_lost": p["lost"],
}))
EOF

#!/usr/bin/env bash
# MQTT over TLS and WebSocket, AstraMQ against Mosquitto in the same run (issue #15
# item 6): the
# same certificates (a CA and a localhost server certificate, ECDSA P-256, made here
# with openssl), the same limits as bench/compare.sh (100 in flight, 1,000 queued,
# no persistence), each broker pinned to BROKER_CPU and `astramq bench --tls-ca` to
# BENCH_CPU. Scenarios, interleaved broker by broker, REPEAT times:
#   - tls-pairs-qos1: 500 QoS 1 pairs as fast as they go, msgs/s received;
#   - tls-conn: 2,000 connections at once (TCP + TLS handshake + CONNECT/CONNACK),
#     connections per second, and the broker's RSS per connection once they are idle;
#   - ws-pairs-qos1: the pairs over WebSocket (`/mqtt`, subprotocol mqtt), against
#     Mosquitto's websockets listener (skipped, and said so, if it does not start).
# Prints one line per run and the medians with the ratio astramq/mosquitto.
#
#   bench/tls.sh                         # 3 repetitions, 6 s runs
#   REPEAT=1 DURATION=3s bench/tls.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPEAT=${REPEAT:-3}
DURATION=${DURATION:-6s}
CONNS=${CONNS:-2000}
BROKER_CPU=${BROKER_CPU:-0}
BENCH_CPU=${BENCH_CPU:-1}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
ASTRAMQ=$CARGO_TARGET_DIR/release/astramq
WORK=$(mktemp -d /tmp/astramq-tls.XXXXXX)
PID=

log() { printf '[tls] %s\n' "$*" >&2; }
stop() { [[ -n $PID ]] && { kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }; PID=; }
trap 'stop; rm -rf "$WORK"' EXIT
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
[[ -x $MOSQUITTO ]] || { log "mosquitto missing (apt-get install mosquitto)"; exit 1; }
log "building astramq (release)"
(cd "$ROOT" && cargo build --release -q -p astramq)
ulimit -n "$(ulimit -Hn)"

cd "$WORK"
chmod 755 "$WORK" # Mosquitto, started as root, reads its files as user mosquitto
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=bench-ca -keyout ca.key -out ca.pem 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
    -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >ext.cnf
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile ext.cnf -out server.pem 2>/dev/null
chmod 644 server.key

PORT_A=$((20000 + RANDOM % 10000)) PORT_M=$((PORT_A + 1)) PLAIN_A=$((PORT_A + 2))
WS_A=$((PORT_A + 3)) WS_M=$((PORT_A + 4)) PLAIN_M=$((PORT_A + 5))
cat >astramq.toml <<EOF
log_level = "warn"
[limits]
max_inflight = 100
max_queued_messages = 1000
max_publish_rate = 0
max_publish_bytes_rate = 0
max_connection_rate = 0
max_connections = 0
[shutdown]
grace_period_secs = 1
EOF
cat >mosquitto.conf <<EOF
listener $PORT_M 127.0.0.1
cafile $WORK/ca.pem
certfile $WORK/server.pem
keyfile $WORK/server.key
allow_anonymous true
max_inflight_messages 100
max_queued_messages 1000
set_tcp_nodelay true
persistence false
log_type error
EOF
# Mosquitto 2.0's websockets listener (libwebsockets) does not start alone ("Unable to
# start any listening sockets", eclipse-mosquitto/mosquitto#2284, #2578: this
# libwebsockets is built without LWS_WITH_EXTERNAL_POLL), nor on an IP address
# (#555, #3045): it gets an unused plain listener beside it and binds to the
# interface `lo`.
sed -e "s|^listener .*|listener $PLAIN_M 127.0.0.1\nlistener $WS_M lo\nprotocol websockets|" \
    -e '/^cafile\|^certfile\|^keyfile/d' mosquitto.conf >mosquitto-ws.conf

wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    log "nothing listens on $1"; return 1
}
start() { # astramq|mosquitto|mosquitto-ws; sets PID and PORT
    case $1 in
    astramq)
        taskset -c "$BROKER_CPU" "$ASTRAMQ" --config astramq.toml --listen "127.0.0.1:$PLAIN_A" \
            --tls-listen "127.0.0.1:$PORT_A" --ws-listen "127.0.0.1:$WS_A" \
            --tls-cert server.pem --tls-key server.key >>astramq.log 2>&1 &
        PID=$! PORT=$PORT_A ;;
    mosquitto)
        taskset -c "$BROKER_CPU" "$MOSQUITTO" -c mosquitto.conf >>mosquitto.log 2>&1 &
        PID=$! PORT=$PORT_M ;;
    mosquitto-ws)
        taskset -c "$BROKER_CPU" "$MOSQUITTO" -c mosquitto-ws.conf >>mosquitto-ws.log 2>&1 &
        PID=$! PORT=$WS_M ;;
    esac
    wait_port "$PORT"
}
field() { python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(eval(sys.argv[2], {}, r))' "$1" "$2"; }

results=()
for rep in $(seq 1 "$REPEAT"); do
    order="astramq mosquitto"
    ((rep % 2 == 0)) && order="mosquitto astramq"
    for broker in $order; do
        start "$broker"
        line=$(taskset -c "$BENCH_CPU" "$ASTRAMQ" bench pairs -n 500 --qos 1 --payload 64 \
            --duration "$DURATION" --hosts "127.0.0.1:$PORT" --tls-ca ca.pem --broker-pid "$PID" \
            --no-progress 2>/dev/null | tail -n 1)
        rate=$(field "$line" 'round(received_per_s)')
        lost=$(field "$line" 'lost')
        log "rep $rep $broker tls-pairs-qos1: $rate msg/s, lost $lost"
        results+=("tls-pairs-qos1 $broker $rate")
        stop
        start "$broker"
        line=$(taskset -c "$BENCH_CPU" "$ASTRAMQ" bench conn -n "$CONNS" --keep-alive 60 \
            --duration 3s --hosts "127.0.0.1:$PORT" --tls-ca ca.pem --broker-pid "$PID" \
            --no-progress 2>/dev/null | tail -n 1)
        cps=$(field "$line" 'round(connections["rate_per_s"])')
        failed=$(field "$line" 'connections["failed"]')
        per_conn=$(field "$line" 'round((broker["rss_end"] - broker["rss_start"]) / connections["connected"])')
        log "rep $rep $broker tls-conn: $cps conn/s (failed $failed), $per_conn B per idle connection"
        results+=("tls-conn $broker $cps" "tls-idle-bytes $broker $per_conn")
        stop
        if [[ $broker == astramq ]]; then
            start astramq && port=$WS_A
        elif start mosquitto-ws 2>/dev/null; then
            port=$WS_M
        else
            log "rep $rep mosquitto ws-pairs-qos1: its websockets listener did not start: $(tail -n 1 mosquitto-ws.log)"
            stop; continue
        fi
        line=$(taskset -c "$BENCH_CPU" "$ASTRAMQ" bench pairs -n 500 --qos 1 --payload 64 \
            --duration "$DURATION" --hosts "127.0.0.1:$port" --ws-path /mqtt --broker-pid "$PID" \
            --no-progress 2>/dev/null | tail -n 1)
        rate=$(field "$line" 'round(received_per_s)')
        log "rep $rep $broker ws-pairs-qos1: $rate msg/s, lost $(field "$line" 'lost')"
        results+=("ws-pairs-qos1 $broker $rate")
        stop
    done
done
printf '%s\n' "${results[@]}" | python3 -c '
import statistics, sys
runs = {}
for line in sys.stdin:
    scenario, broker, value = line.split()
    runs.setdefault(scenario, {}).setdefault(broker, []).append(float(value))
print("| scenario | astramq | mosquitto | ratio | runs (astramq / mosquitto) |")
print("|---|---:|---:|---:|---|")
for scenario, by in runs.items():
    a = statistics.median(by["astramq"])
    ra = [round(x) for x in by["astramq"]]
    if "mosquitto" not in by:
        print(f"| {scenario} | {a:,.0f} | – | – | {ra} / – |")
        continue
    m = statistics.median(by["mosquitto"])
    rm = [round(x) for x in by["mosquitto"]]
    print(f"| {scenario} | {a:,.0f} | {m:,.0f} | {a / m:.2f}x | {ra} / {rm} |")
'

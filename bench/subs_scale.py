#!/usr/bin/env python3
"""Many subscriptions on a cluster (issue #17): opens connections spread over the
nodes, each subscribing to FILTERS topic filters in one SUBSCRIBE (half exact, half
with a `+` level), holds them, and measures how long the last route takes to reach
another node (a probe published there until the subscriber receives it).

    subs_scale.py --hosts 127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3 --total 1000000 \
        --filters 1000 --hold-file /tmp/hold

Prints one JSON line when the subscriptions are in and the probe arrived, then holds
the connections until --hold-file disappears (so the caller can measure memory and
run load meanwhile). Plain sockets and hand-encoded MQTT 3.1.1: no client library
subscribes 1,000 filters per packet at this rate.
"""

import argparse
import json
import os
import socket
import struct
import sys
import time


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(s):
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def packet(kind, body):
    return bytes([kind]) + varint(len(body)) + body


def connect_packet(client_id):
    body = utf8("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 600) + utf8(client_id)
    return packet(0x10, body)


def subscribe_packet(packet_id, filters):
    body = struct.pack("!H", packet_id)
    for f in filters:
        body += utf8(f) + bytes([0])
    return packet(0x82, body)


def publish_packet(topic, payload):
    return packet(0x30, utf8(topic) + payload)


def read_packet(sock):
    """One packet: (first byte, body)."""
    head = recv_exact(sock, 1)
    mult, length = 1, 0
    while True:
        b = recv_exact(sock, 1)[0]
        length += (b & 0x7F) * mult
        if not b & 0x80:
            break
        mult *= 128
    return head[0], recv_exact(sock, length)


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed by the broker")
        buf += chunk
    return bytes(buf)


def open_client(host, client_id):
    h, p = host.rsplit(":", 1)
    s = socket.create_connection((h, int(p)))
    s.sendall(connect_packet(client_id))
    kind, body = read_packet(s)
    if kind != 0x20 or body[1] != 0:
        raise RuntimeError(f"{client_id}: CONNACK {body!r}")
    return s


def filters_for(node, conn, n):
    half = n // 2
    exact = [f"scale/{node}/{conn}/{i}" for i in range(half)]
    wild = [f"scale/{node}/{conn}/+/{i}" for i in range(n - half)]
    return exact + wild


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", required=True)
    ap.add_argument("--total", type=int, default=1_000_000)
    ap.add_argument("--filters", type=int, default=1000, help="filters per connection")
    ap.add_argument("--hold-file", required=True)
    args = ap.parse_args()
    hosts = args.hosts.split(",")
    conns = args.total // args.filters
    socks = []
    started = time.monotonic()
    last = None
    for c in range(conns):
        node = c % len(hosts)
        s = open_client(hosts[node], f"scale-{c}")
        fs = filters_for(node, c, args.filters)
        s.sendall(subscribe_packet(1, fs))
        kind, body = read_packet(s)
        if kind != 0x90:
            raise RuntimeError(f"scale-{c}: expected SUBACK, got {kind:#x}")
        refused = sum(1 for b in body[2:] if b == 0x80)
        if refused:
            raise RuntimeError(f"scale-{c}: {refused} filters refused")
        socks.append(s)
        last = (node, fs[-1])
    subscribed_s = time.monotonic() - started
    # The last route added: published on another node until it arrives. The feed is
    # ordered, so once it is there every route before it is.
    node, last_filter = last
    topic = last_filter.replace("+", "x")
    probe_sub = socks[-1]
    pub = open_client(hosts[(node + 1) % len(hosts)], "scale-probe-pub")
    t0 = time.monotonic()
    probe_sub.settimeout(0.005)
    arrived = None
    while time.monotonic() - t0 < 120:
        pub.sendall(publish_packet(topic, b"probe"))
        try:
            kind, _ = read_packet(probe_sub)
            if kind & 0xF0 == 0x30:
                arrived = time.monotonic() - t0
                break
        except socket.timeout:
            continue
    probe_sub.settimeout(None)
    print(
        json.dumps(
            {
                "connections": conns,
                "subscriptions": conns * args.filters,
                "subscribe_s": round(subscribed_s, 2),
                "subscriptions_per_s": round(conns * args.filters / subscribed_s),
                "last_route_reached_other_node_ms": None if arrived is None else round(arrived * 1000, 1),
            }
        ),
        flush=True,
    )
    while os.path.exists(args.hold_file):
        time.sleep(0.2)
    for s in socks + [pub]:
        s.close()
    return 0 if arrived is not None else 1


if __name__ == "__main__":
    sys.exit(main())

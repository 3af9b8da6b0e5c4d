"""MQTT over WebSocket with paho-mqtt (PyPI), for tests/websocket.rs.

Connects over ws:// or wss://, subscribes to TOPIC, publishes one message of each
size given with --sizes (QoS 1) to it, and waits for them to come back. Prints
`received N SIZE,SIZE,...` and exits 0, or prints why it failed and exits 1.

    python3 paho_ws.py --port P [--tls --ca CA [--cert C --key K]] [--path /mqtt]
                       [--protocol 311|31|5] [--subprotocol NAME|none] [--topic T]
                       [--sizes 10,100000]
"""

import argparse
import ssl
import sys
import threading

import paho.mqtt.client as mqtt


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--tls", action="store_true")
    a.add_argument("--ca")
    a.add_argument("--cert")
    a.add_argument("--key")
    a.add_argument("--path", default="/mqtt")
    a.add_argument("--protocol", default="311")
    a.add_argument("--subprotocol", default=None)
    a.add_argument("--topic", default="ws/test")
    a.add_argument("--sizes", default="10")
    a.add_argument("--client-id", default="paho-ws")
    a.add_argument("--timeout", type=float, default=10.0)
    args = a.parse_args()

    protocol = {"31": mqtt.MQTTv31, "311": mqtt.MQTTv311, "5": mqtt.MQTTv5}[args.protocol]
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=args.client_id,
        transport="websockets",
        protocol=protocol,
    )
    headers = None
    if args.subprotocol == "none":
        def headers(h):
            h.pop("Sec-Websocket-Protocol", None)
            return h
    elif args.subprotocol:
        headers = {"Sec-Websocket-Protocol": args.subprotocol}
    c.ws_set_options(path=args.path, headers=headers)
    if args.tls:
        c.tls_set(ca_certs=args.ca, certfile=args.cert, keyfile=args.key,
                  tls_version=ssl.PROTOCOL_TLS_CLIENT)

    sizes = [int(s) for s in args.sizes.split(",") if s]
    got = []
    done = threading.Event()
    subscribed = threading.Event()

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        subscribed.set()

    def on_message(client, userdata, msg):
        got.append(len(msg.payload))
        if len(got) >= len(sizes):
            done.set()

    c.on_subscribe = on_subscribe
    c.on_message = on_message
    try:
        c.connect("localhost", args.port, keepalive=30)
    except Exception as e:  # the upgrade or the TLS handshake was refused
        print(f"connect failed: {type(e).__name__}: {e}")
        sys.exit(1)
    c.loop_start()
    c.subscribe(args.topic, qos=1)
    if not subscribed.wait(args.timeout):
        print("no SUBACK")
        sys.exit(1)
    for i, n in enumerate(sizes):
        c.publish(args.topic, bytes([65 + i % 26]) * n, qos=1)
    ok = done.wait(args.timeout)
    print("received", len(got), ",".join(str(n) for n in got))
    c.disconnect()
    c.loop_stop()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

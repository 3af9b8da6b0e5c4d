// MQTT over WebSocket with MQTT.js (npm), the client browser apps use, run by
// Node for tests/websocket.rs. Same contract as paho_ws.py: connects over ws:// or
// wss://, subscribes to TOPIC, publishes one QoS 1 message of each size in --sizes
// and waits for them to come back; prints `received N SIZE,...` and exits 0, or
// prints why it failed and exits 1.
//
//   node mqttjs_ws.mjs --port P [--tls --ca CA [--cert C --key K]] [--path /mqtt]
//                      [--protocol 4|5] [--topic T] [--sizes 10,100000]
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import mqtt from "mqtt";

const { values: a } = parseArgs({
  options: {
    port: { type: "string" },
    tls: { type: "boolean", default: false },
    ca: { type: "string" },
    cert: { type: "string" },
    key: { type: "string" },
    path: { type: "string", default: "/mqtt" },
    protocol: { type: "string", default: "4" },
    topic: { type: "string", default: "js/test" },
    sizes: { type: "string", default: "10" },
    "client-id": { type: "string", default: "mqttjs-ws" },
    timeout: { type: "string", default: "10" },
  },
});

const sizes = a.sizes.split(",").filter(Boolean).map(Number);
const url = `${a.tls ? "wss" : "ws"}://localhost:${a.port}${a.path}`;
const opts = {
  clientId: a["client-id"],
  protocolVersion: Number(a.protocol),
  reconnectPeriod: 0,
  connectTimeout: Number(a.timeout) * 1000,
};
if (a.ca) opts.ca = readFileSync(a.ca);
if (a.cert) opts.cert = readFileSync(a.cert);
if (a.key) opts.key = readFileSync(a.key);

const fail = (why) => {
  console.log(why);
  process.exit(1);
};
setTimeout(() => fail("timed out"), Number(a.timeout) * 1000).unref();

const got = [];
let done = false;
const c = mqtt.connect(url, opts);
c.on("error", (e) => done || fail(`connect failed: ${e.message}`));
c.on("close", () => done || fail("connect failed: closed"));
c.on("message", (_topic, payload) => {
  got.push(payload.length);
  if (got.length >= sizes.length && !done) {
    done = true;
    console.log(`received ${got.length} ${got.join(",")}`);
    // After this handler MQTT.js sends the PUBACK; DISCONNECT goes after it.
    setImmediate(() => c.end(false, () => process.exit(0)));
  }
});
c.on("connect", () => {
  c.subscribe(a.topic, { qos: 1 }, (err) => {
    if (err) fail(`subscribe failed: ${err.message}`);
    sizes.forEach((n, i) => c.publish(a.topic, Buffer.alloc(n, 65 + (i % 26)), { qos: 1 }));
  });
});

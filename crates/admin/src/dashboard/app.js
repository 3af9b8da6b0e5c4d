// The AstraMQ dashboard: a page per admin API resource, no dependencies, no build
// step. Everything it shows comes from /api/v1 with the key the operator typed
// (kept in sessionStorage: this tab only). Data from clients (ids, topics, payloads)
// is only ever set as text, never parsed as HTML.
"use strict";

const KEY = "astramq-key";
const POLL_MS = 2000;
const HISTORY = 90;

const $ = (id) => document.getElementById(id);

/// The key in use, if any.
function key() {
  return sessionStorage.getItem(KEY);
}

function status(text, isError) {
  const s = $("status");
  s.textContent = text || "";
  s.className = isError ? "error" : "";
}

/// Calls the admin API; resolves to the JSON body, rejects with the API's reason.
async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + key() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch("/api/v1" + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  let json = null;
  try {
    json = await res.json();
  } catch (_) {
    // not JSON: reported below by status
  }
  if (res.status === 401) {
    sessionStorage.removeItem(KEY);
    show();
    throw new Error("the key was refused: " + ((json && json.reason) || "unauthorized"));
  }
  if (!res.ok) {
    throw new Error((json && json.reason) || "HTTP " + res.status);
  }
  return json;
}

/// A table row of text cells; `attrs` are set on the row.
function row(cells, attrs) {
  const tr = document.createElement("tr");
  for (const [k, v] of Object.entries(attrs || {})) tr.setAttribute(k, v);
  for (const c of cells) {
    const td = document.createElement("td");
    if (c instanceof Node) td.appendChild(c);
    else td.textContent = c === null || c === undefined ? "" : String(c);
    tr.appendChild(td);
  }
  return tr;
}

function link(text, href) {
  const a = document.createElement("a");
  a.textContent = text;
  a.href = href;
  return a;
}

/// A button that asks for a second click before it acts (no dialogs: they block
/// the page and automation alike).
function confirmButton(label, action, attrs) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "danger";
  b.textContent = label;
  for (const [k, v] of Object.entries(attrs || {})) b.setAttribute(k, v);
  b.addEventListener("click", async () => {
    if (b.dataset.armed !== "1") {
      b.dataset.armed = "1";
      b.textContent = "Confirm " + label.toLowerCase();
      return;
    }
    b.disabled = true;
    try {
      await action();
    } catch (e) {
      status(e.message, true);
      b.disabled = false;
    }
  });
  return b;
}

function duration(secs) {
  if (secs === undefined || secs === null) return "";
  const d = Math.floor(secs / 86400), h = Math.floor((secs % 86400) / 3600);
  const m = Math.floor((secs % 3600) / 60);
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : `${m}m ${secs % 60}s`;
}

function enc(s) {
  return encodeURIComponent(s);
}

// ---------------------------------------------------------------- overview

const samples = []; // {t, clients, received, sent}
let pollTimer = null;

async function pollNodes() {
  try {
    const r = await api("GET", "/nodes");
    renderNodes(r.nodes);
    let clients = 0, received = 0, sent = 0;
    for (const n of r.nodes) {
      clients += n.clients || 0;
      received += n.messages_received || 0;
      sent += n.messages_sent || 0;
    }
    samples.push({ t: Date.now(), clients, received, sent });
    while (samples.length > HISTORY) samples.shift();
    drawCharts();
    status("");
  } catch (e) {
    status(e.message, true);
  }
}

function renderNodes(nodes) {
  const body = $("nodes");
  body.replaceChildren();
  for (const n of nodes) {
    const state = n.error ? "no answer" : n.healthy === false ? n.status + " (unhealthy)" : n.status;
    body.appendChild(
      row(
        [
          n.node_id + (n.self ? " (this node)" : ""),
          state,
          n.mode,
          n.redis,
          n.clients,
          n.sessions,
          n.retained,
          n.messages_received,
          n.messages_sent,
          duration(n.uptime_secs),
          n.version,
          n.admin,
        ],
        { "data-node": n.node_id, class: n.error || n.healthy === false ? "bad" : "" },
      ),
    );
  }
}

/// Line chart of `series` ({values, cls}) on a canvas, y from 0 to the maximum.
function chart(canvas, series) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 28;
  ctx.clearRect(0, 0, w, h);
  let max = 1;
  for (const s of series) for (const v of s.values) max = Math.max(max, v);
  ctx.strokeStyle = "#ccc";
  ctx.fillStyle = "#666";
  ctx.font = "11px sans-serif";
  ctx.beginPath();
  ctx.moveTo(pad, 4);
  ctx.lineTo(pad, h - 14);
  ctx.lineTo(w - 4, h - 14);
  ctx.stroke();
  ctx.fillText(String(Math.round(max)), 2, 12);
  ctx.fillText("0", 2, h - 14);
  ctx.fillText(`last ${Math.round((HISTORY * POLL_MS) / 60000)} min`, pad, h - 2);
  const colors = { in: "#2a6fdb", out: "#d9822b", clients: "#2a9d5b" };
  for (const s of series) {
    if (s.values.length < 2) continue;
    ctx.strokeStyle = colors[s.cls];
    ctx.lineWidth = 2;
    ctx.beginPath();
    const offset = HISTORY - s.values.length; // newest at the right edge
    s.values.forEach((v, i) => {
      const x = pad + ((w - pad - 6) * (offset + i)) / (HISTORY - 1);
      const y = h - 14 - ((h - 20) * v) / max;
      if (i === 0) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
}

function drawCharts() {
  chart($("chart-clients"), [{ cls: "clients", values: samples.map((s) => s.clients) }]);
  const rate = (field) =>
    samples.slice(1).map((s, i) => {
      const prev = samples[i];
      const secs = (s.t - prev.t) / 1000;
      return secs > 0 ? Math.max(0, (s[field] - prev[field]) / secs) : 0;
    });
  chart($("chart-rates"), [
    { cls: "in", values: rate("received") },
    { cls: "out", values: rate("sent") },
  ]);
}

// ---------------------------------------------------------------- clients

let clientsNext = null;

async function listClients(more) {
  const q = new URLSearchParams();
  const prefix = $("clients-prefix").value, user = $("clients-user").value;
  if (prefix) q.set("prefix", prefix);
  if (user) q.set("user", user);
  if (more && clientsNext !== null) q.set("after", clientsNext);
  const body = $("clients");
  if (!more) body.replaceChildren(); // no stale rows while the new list loads
  try {
    const r = await api("GET", "/clients?" + q);
    for (const c of r.clients) {
      const kick = c.connected
        ? confirmButton("Kick", async () => {
            await api("POST", `/clients/${enc(c.client_id)}/kick`);
            await listClients(false);
            status(`kicked ${c.client_id}`);
          }, { "data-kick": c.client_id })
        : "";
      body.appendChild(
        row(
          [
            link(c.client_id, "#/client/" + enc(c.client_id)),
            c.node,
            c.connected ? "yes" : "no (session kept)",
            c.protocol,
            c.peer,
            c.username,
            c.connected_at,
            kick,
          ],
          { "data-client": c.client_id },
        ),
      );
    }
    clientsNext = r.next;
    $("clients-more").hidden = r.next === null;
    status(r.errors ? "partial: " + r.errors.map((e) => `${e.node}: ${e.reason}`).join("; ") : "", !!r.errors);
  } catch (e) {
    status(e.message, true);
  }
}

async function showClient(id) {
  $("client-id").textContent = id;
  $("client-fields").replaceChildren();
  $("client-subs").replaceChildren();
  try {
    const c = await api("GET", "/clients/" + enc(id));
    for (const k of ["node", "connected", "protocol", "peer", "username", "keep_alive_secs", "connected_at", "session_expiry_secs", "inflight", "queued"]) {
      if (c[k] !== undefined) $("client-fields").appendChild(row([k, c[k]]));
    }
    for (const s of c.subscriptions || []) $("client-subs").appendChild(row([s.filter, s.qos]));
    const kick = $("client-kick");
    const fresh = confirmButton("Kick", async () => {
      await api("POST", `/clients/${enc(id)}/kick`);
      await showClient(id);
      status(`kicked ${id}`);
    }, { id: "client-kick", "data-kick": id });
    fresh.hidden = !c.connected;
    kick.replaceWith(fresh);
    status("");
  } catch (e) {
    status(e.message, true);
  }
}

// ---------------------------------------------------------------- subscriptions

async function findSubscriptions() {
  const topic = $("subs-topic").value;
  try {
    const r = await api("GET", "/subscriptions?topic=" + enc(topic));
    const body = $("subs");
    body.replaceChildren();
    for (const s of r.subscriptions) {
      body.appendChild(
        row(
          [link(s.client_id, "#/client/" + enc(s.client_id)), s.node, s.filter, s.qos, s.no_local ? "yes" : "", s.connected ? "yes" : "no"],
          { "data-sub": s.client_id },
        ),
      );
    }
    const none = r.subscriptions.length === 0 ? `nobody subscribes to ${topic}` : "";
    status(r.errors ? "partial: " + r.errors.map((e) => `${e.node}: ${e.reason}`).join("; ") : none, !!r.errors);
  } catch (e) {
    status(e.message, true);
  }
}

// ---------------------------------------------------------------- retained

let retainedNext = null;

async function listRetained(more) {
  const q = new URLSearchParams({ filter: $("retained-filter").value || "#" });
  if (more && retainedNext !== null) q.set("after", retainedNext);
  const body = $("retained");
  if (!more) body.replaceChildren(); // no stale rows while the new list loads
  try {
    const r = await api("GET", "/retained?" + q);
    for (const m of r.retained) {
      const del = confirmButton("Delete", async () => {
        await api("DELETE", "/retained?topic=" + enc(m.topic));
        await listRetained(false);
        status(`cleared ${m.topic}`);
      }, { "data-delete": m.topic });
      const payload = m.encoding === "base64" ? "(binary, base64) " + m.payload : m.payload;
      body.appendChild(row([m.topic, m.qos, m.bytes, payload, del], { "data-topic": m.topic }));
    }
    retainedNext = r.next;
    $("retained-more").hidden = r.next === null;
    status("");
  } catch (e) {
    status(e.message, true);
  }
}

// ---------------------------------------------------------------- publish

async function publish() {
  try {
    const r = await api("POST", "/publish", {
      topic: $("publish-topic").value,
      payload: $("publish-payload").value,
      qos: Number($("publish-qos").value),
      retain: $("publish-retain").checked,
    });
    $("publish-result").textContent = JSON.stringify(r, null, 2);
    status("published");
  } catch (e) {
    $("publish-result").textContent = "";
    status(e.message, true);
  }
}

// ---------------------------------------------------------------- navigation

function show() {
  const loggedIn = !!key();
  $("login").hidden = loggedIn;
  $("logout").hidden = !loggedIn;
  for (const p of document.querySelectorAll(".page")) p.hidden = true;
  clearInterval(pollTimer);
  pollTimer = null;
  if (!loggedIn) return;
  const [, page, arg] = (location.hash || "#/overview").split("/");
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("current", a.dataset.page === page || (page === "client" && a.dataset.page === "clients"));
  }
  const section = $("page-" + page) || $("page-overview");
  section.hidden = false;
  switch (section.id) {
    case "page-overview":
      pollNodes();
      pollTimer = setInterval(pollNodes, POLL_MS);
      break;
    case "page-clients":
      listClients(false);
      break;
    case "page-client":
      showClient(decodeURIComponent(arg || ""));
      break;
    case "page-retained":
      listRetained(false);
      break;
  }
}

function onSubmit(id, f) {
  $(id).addEventListener("submit", (e) => {
    e.preventDefault();
    f();
  });
}

onSubmit("login-form", () => {
  sessionStorage.setItem(KEY, $("login-key").value.trim());
  $("login-key").value = "";
  show();
});
onSubmit("clients-form", () => listClients(false));
onSubmit("subs-form", findSubscriptions);
onSubmit("retained-form", () => listRetained(false));
onSubmit("publish-form", publish);
$("clients-more").addEventListener("click", () => listClients(true));
$("retained-more").addEventListener("click", () => listRetained(true));
$("logout").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  show();
});
window.addEventListener("hashchange", show);
show();

#!/usr/bin/env python3
"""Turns bench/compare.sh results into docs/benchmarks.md and an SVG chart.

Input: JSON lines {"broker", "name", "rep", "report": <astramq bench JSON>}. Output:
medians per scenario and broker, AstraMQ/Mosquitto ratios against the targets of
issue #3, the commands, the machine, the criterion numbers, and a plain-SVG chart of
throughput and p99 latency (no plotting library needed).
"""

import argparse
import json
import math
import re
import statistics
from collections import defaultdict

BROKERS = ["astramq", "mosquitto"]
COLORS = {"astramq": "#2b6cb0", "mosquitto": "#c05621"}

# scenario -> (what is compared, target ratio text, check(ratio, medians) -> bool|None)
TARGETS = {
    "ingest-qos0": ("msgs/s", "≥ 4×", lambda r, m: r >= 4),
    "pairs-qos1": ("msgs/s", "≥ 6×", lambda r, m: r >= 6),
    "pairs-qos1-10mps": ("p99 latency", "≤ 1.0×", lambda r, m: r <= 1.0),
    "fanout-100-qos1": ("p99 latency", "≤ 0.1×", lambda r, m: r <= 0.1),
}


def throughput(rep):
    if rep["scenario"] == "conn":
        return rep["connections"]["rate_per_s"]
    if rep["subscribers"]:
        return rep["received_per_s"]
    # Publishers alone: what the broker read, not what waited in socket buffers
    # (`sent_per_s` counts those too, and loopback buffers hold seconds of traffic).
    ingested = rep.get("ingested_per_s")
    return ingested if ingested is not None else rep["sent_per_s"]


def p(rep, q):
    lat = rep.get("latency_ms")
    return lat[q] if lat else None


def mem_per_conn(rep):
    b = rep.get("broker")
    n = rep["connections"]["connected"]
    if not b or not n:
        return None
    return (b["rss_end"] - b["rss_start"]) / n


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, unit=""):
    if v is None:
        return "–"
    if isinstance(v, float) and not v.is_integer() or abs(v) < 10:
        if abs(v) >= 100:
            s = f"{v:,.0f}"
        elif abs(v) >= 1:
            s = f"{v:.2f}"
        else:
            s = f"{v:.3f}"
    else:
        s = f"{v:,.0f}"
    return s + unit


def pct(v):
    return "–" if v is None else f"{v:.0f} %"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def parse_micro(text):
    """criterion lines `name  time: [lo mid hi]` (name may sit on the line above)."""
    out, prev = [], ""
    for line in text.splitlines():
        m = re.search(r"time:\s*\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", line)
        if m:
            name = line[: line.index("time:")].strip() or prev
            out.append((name, f"{m.group(1)} {m.group(2)}"))
        elif line.strip() and not line.strip().startswith(("thrpt:", "change:", "Found", "Benchmarking")):
            prev = line.strip()
    return out


def svg_chart(names, med_tp, med_p99):
    """Two log-scale grouped bar panels: throughput and p99 latency per scenario."""
    w, h, top, bottom, left = 980, 380, 50, 110, 70
    panel_w = (w - 2 * left) / 2
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'font-family="sans-serif" font-size="11">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
    ]

    def panel(x0, title, values, unit):
        vals = [v for n in names for v in (values[n].get(b) for b in BROKERS) if v]
        if not vals:
            return
        lo = 10 ** math.floor(math.log10(min(vals)))
        hi = 10 ** math.ceil(math.log10(max(vals)))
        if hi <= lo:
            hi = lo * 10
        plot_h = h - top - bottom
        y = lambda v: top + plot_h * (1 - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)))
        parts.append(f'<text x="{x0 + panel_w / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{title}</text>')
        dec = lo
        while dec <= hi:
            parts.append(f'<line x1="{x0}" x2="{x0 + panel_w - 20}" y1="{y(dec):.1f}" y2="{y(dec):.1f}" stroke="#ddd"/>')
            parts.append(f'<text x="{x0 - 4}" y="{y(dec) + 4:.1f}" text-anchor="end">{fmt(float(dec))}{unit}</text>')
            dec *= 10
        group_w = (panel_w - 20) / max(len(names), 1)
        bar_w = group_w * 0.35
        for i, n in enumerate(names):
            gx = x0 + i * group_w + group_w * 0.15
            for j, b in enumerate(BROKERS):
                v = values[n].get(b)
                if not v:
                    continue
                bx = gx + j * bar_w
                parts.append(f'<rect x="{bx:.1f}" y="{y(v):.1f}" width="{bar_w - 2:.1f}" height="{top + plot_h - y(v):.1f}" fill="{COLORS[b]}"><title>{b} {n}: {fmt(v)}{unit}</title></rect>')
                parts.append(f'<text x="{bx + bar_w / 2 - 1:.1f}" y="{y(v) - 3:.1f}" text-anchor="middle" font-size="9">{fmt(v)}</text>')
            lx, ly = gx + bar_w, top + plot_h + 12
            parts.append(f'<text x="{lx:.1f}" y="{ly}" text-anchor="end" transform="rotate(-35 {lx:.1f} {ly})">{n}</text>')

    panel(left, "Throughput (msgs/s, log scale)", med_tp, "")
    panel(left + panel_w + left / 2, "p99 end-to-end latency (ms, log scale)", med_p99, "")
    for j, b in enumerate(BROKERS):
        parts.append(f'<rect x="{left + j * 110}" y="{h - 18}" width="12" height="12" fill="{COLORS[b]}"/>')
        parts.append(f'<text x="{left + j * 110 + 16}" y="{h - 8}">{b}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main():
    ap = argparse.ArgumentParser()
    for a in ["results", "machine", "micro", "scenarios", "astramq-conf", "mosquitto-conf",
              "astramq-cmd", "mosquitto-cmd", "md", "svg"]:
        ap.add_argument("--" + a, required=True)
    ap.add_argument("--repeat", type=int, required=True)
    ap.add_argument("--notes", help="hand-written findings to include (Markdown)")
    ap.add_argument("--extra", action="append", default=[],
                    help="Markdown sections to include before the commands (e.g. the "
                         "cluster and load-balancer rows of bench/cluster.sh)")
    args = ap.parse_args()

    runs = defaultdict(list)  # (name, broker) -> [report]
    order = []
    with open(args.results) as f:
        for line in f:
            r = json.loads(line)
            if r["name"] not in order:
                order.append(r["name"])
            runs[(r["name"], r["broker"])].append(r["report"])
    scenario_args = dict(l.rstrip("\n").split("|", 1) for l in open(args.scenarios) if "|" in l)

    medians = {}
    for (name, broker), reps in runs.items():
        medians[(name, broker)] = {
            "tp": med([throughput(r) for r in reps]),
            "p50": med([p(r, "p50") for r in reps]),
            "p99": med([p(r, "p99") for r in reps]),
            "lost": sum(r["lost"] or 0 for r in reps) if any(r["lost"] is not None for r in reps) else None,
            "not_received": sum(r["not_received"] or 0 for r in reps) if any(r["not_received"] is not None for r in reps) else None,
            "dups": sum(r["duplicates"] for r in reps),
            "failed": sum(r["connections"]["failed"] + r["connections"]["dropped"] for r in reps),
            "bcpu": med([(r.get("broker") or {}).get("cpu_percent") for r in reps]),
            "gcpu": med([r["bench_cpu_percent"] for r in reps]),
            "rss": med([(r.get("broker") or {}).get("rss_peak") for r in reps]),
            "mem_conn": med([mem_per_conn(r) for r in reps]),
            "n": len(reps),
        }
    get = lambda n, b, k: medians.get((n, b), {}).get(k)

    md = []
    md.append("# Benchmarks: AstraMQ against Mosquitto\n")
    md.append("Generated by `bench/compare.sh` (do not edit by hand; rerun the script). "
              f"Every scenario ran {args.repeat}× per broker, interleaved (A B, then B A, …), "
              "each run on a freshly started broker; numbers are medians. The broker is pinned "
              "to one core and the load generator (`astramq bench`) to another with `taskset`, "
              "so both brokers get exactly one core. Chart: `benchmarks.svg`; raw JSON lines: "
              "`benchmarks/results.jsonl`.\n")
    md.append("![throughput and p99 latency per scenario](benchmarks.svg)\n")
    if args.extra:
        md.append("Cluster (three nodes and Redis against one node) and load-balancer "
                  "(`astramq lb` and HAProxy against direct) rows: sections "
                  "[Cluster](#cluster) and [Load balancer](#load-balancer), from "
                  "`bench/cluster.sh`.\n")

    md.append("## Targets (issue #3)\n")
    md.append("| scenario | compared | AstraMQ | Mosquitto | ratio | target | met |")
    md.append("|---|---|---:|---:|---:|---|---|")
    for name, (what, target, check) in TARGETS.items():
        key = "tp" if what == "msgs/s" else "p99"
        unit = "" if key == "tp" else " ms"
        a, m = get(name, "astramq", key), get(name, "mosquitto", key)
        r = ratio(a, m)
        ok = "–" if r is None else ("yes" if check(r, None) else "**no**")
        md.append(f"| {name} | {what} | {fmt(a, unit)} | {fmt(m, unit)} | {fmt(r, '×')} | {target} | {ok} |")
    conn = next((n for n in order if n.startswith("conn")), None)
    if conn:
        a, m = get(conn, "astramq", "mem_conn"), get(conn, "mosquitto", "mem_conn")
        ok = "–" if a is None else ("yes" if a <= 2048 else "**no**")
        md.append(f"| {conn} | broker RSS per idle connection | {fmt(a, ' B')} | {fmt(m, ' B')} | "
                  f"{fmt(ratio(a, m), '×')} | ≤ 2 KiB | {ok} |")
    lost_a = [get(n, "astramq", "lost") for n in order if get(n, "astramq", "lost") is not None]
    lost_m = [get(n, "mosquitto", "lost") for n in order if get(n, "mosquitto", "lost") is not None]
    md.append(f"| all QoS ≥ 1 | messages lost (sum of all runs) | {sum(lost_a)} | {sum(lost_m)} | | 0 | "
              f"{'yes' if sum(lost_a) == 0 else '**no**'} |")
    md.append("")

    if args.notes:
        try:
            md.append(open(args.notes).read().rstrip() + "\n")
        except FileNotFoundError:
            pass

    md.append("## Results per scenario (medians)\n")
    md.append("Throughput is messages received per second by subscribers (for `ingest`, "
              "PUBLISHes the broker read per second: the run's messages over the time until the "
              "broker answered a PINGREQ each publisher sent after its last PUBLISH, so what "
              "still sat in socket buffers does not count; connections per second for `conn`). Lost = QoS ≥ 1 messages the broker "
              "acknowledged to the publisher that never reached a subscriber that should have "
              "them, summed over all runs; `–` where not applicable. CPU is percent of one core "
              "over the measured window; a load generator near 100 % would be the bottleneck.\n")
    md.append("| scenario | broker | throughput | ratio | p50 ms | p99 ms | lost | dups | conn. failed | broker CPU | bench CPU | broker RSS peak |")
    md.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in order:
        for b in BROKERS:
            if (n, b) not in medians:
                continue
            r = ratio(get(n, b, "tp"), get(n, "mosquitto", "tp")) if b == "astramq" else None
            rss = get(n, b, "rss")
            lost = get(n, b, "lost")
            if lost is None and get(n, b, "not_received") is not None:
                lost = f"({get(n, b, 'not_received')} QoS 0 not received)"
            md.append(
                f"| {n} | {b} | {fmt(get(n, b, 'tp'))} | {fmt(r, '×') if r else ''} | {fmt(get(n, b, 'p50'))} | "
                f"{fmt(get(n, b, 'p99'))} | {'–' if lost is None else lost} | {get(n, b, 'dups')} | "
                f"{get(n, b, 'failed')} | {pct(get(n, b, 'bcpu'))} | {pct(get(n, b, 'gcpu'))} | "
                f"{'–' if rss is None else fmt(rss / 2**20, ' MiB')} |")
    md.append("")

    for extra in args.extra:
        try:
            md.append(open(extra).read().rstrip() + "\n")
        except FileNotFoundError:
            pass

    md.append("## Exact commands (single node against Mosquitto)\n")
    md.append(f"The whole run: `REPEAT={args.repeat} bench/compare.sh` (release build of `astramq`, "
              "which is both the broker and, as `astramq bench`, the load generator).\n")
    md.append("Brokers (one fresh process per run, from a scratch directory holding these files):\n")
    md.append("```sh\n" + args.astramq_cmd + "\n" + args.mosquitto_cmd + "\n```\n")
    md.append("`astramq.toml`:\n\n```toml\n" + open(args.astramq_conf).read().rstrip() + "\n```\n")
    md.append("`mosquitto.conf`:\n\n```\n" + open(args.mosquitto_conf).read().rstrip() + "\n```\n")
    md.append("Load generator, per scenario (`--hosts` is the broker's port, `--broker-pid` its "
              "PID, `--source-addrs` two fresh loopback addresses per run so that the sockets "
              "left in TIME_WAIT by the previous run do not exhaust the ephemeral ports):\n")
    md.append("```sh")
    for n in order:
        md.append(f"# {n}\ntaskset -c 1 astramq bench {scenario_args.get(n, '?')} "
                  "--hosts 127.0.0.1:PORT --source-addrs 127.0.K.1,127.0.K.2 --broker-pid PID --no-progress")
    md.append("```\n")

    micro = parse_micro(open(args.micro).read())
    md.append("## Micro-benchmarks (criterion, `crates/mqtt/benches`)\n")
    if micro:
        md.append("Short runs (`--warm-up-time 1 --measurement-time 2`), median estimate per iteration; "
                  "`cargo bench -p astramq-mqtt` for the full version.\n")
        md.append("| benchmark | time |")
        md.append("|---|---:|")
        for name, t in micro:
            md.append(f"| {name} | {t} |")
    else:
        md.append("Not run this time (`MICRO=0`).")
    md.append("")

    md.append("## Machine\n")
    md.append("```\n" + open(args.machine).read().rstrip() + "\n```\n")

    with open(args.md, "w") as f:
        f.write("\n".join(md))
    names = [n for n in order if not n.startswith("conn")]
    tp = {n: {b: get(n, b, "tp") for b in BROKERS} for n in names}
    p99 = {n: {b: get(n, b, "p99") for b in BROKERS} for n in names}
    with open(args.svg, "w") as f:
        f.write(svg_chart(names, tp, p99))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The report of scripts/bench/proxy: a markdown table and two SVG plots.

    proxy-report.py META RESULTS [--docs docs/benchmarks.md --plots docs/bench]

META and RESULTS hold one "key value" pair a line, written by the script.
With --docs, the table replaces what is between the proxy-bench markers of
that file; with --plots, the plots are written there. The table is printed
in every case. Plain python3: the SVG is written by hand.
"""

import argparse
import os
import re
import statistics
import sys

PROXIES = ["direct", "nio", "nginx", "haproxy"]
LABEL = {"direct": "direct", "nio": "Nio", "nginx": "nginx", "haproxy": "HAProxy"}
COLOR = {"direct": "#9e9e9e", "nio": "#d9480f", "nginx": "#2f9e44", "haproxy": "#1c7ed6"}
START, END = "<!-- proxy-bench:start -->", "<!-- proxy-bench:end -->"


def read(path):
    out = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition(" ")
            if k:
                out[k] = v
    return out


class Results:
    def __init__(self, rows):
        self.rows = rows

    def num(self, key):
        v = self.rows.get(key)
        return float(v) if v is not None else None

    def median(self, prefix, suffix):
        """Median over rounds of `prefix.<round>.suffix`."""
        pat = re.compile(re.escape(prefix) + r"\.\d+\." + re.escape(suffix) + "$")
        vals = [float(v) for k, v in self.rows.items() if pat.match(k)]
        return statistics.median(vals) if vals else None


def fmt(v, digits=0):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def ratio(a, b):
    return f"{a / b:.2f}×" if a and b else "–"


def table(meta, r):
    rounds, dur = meta["rounds"], meta["duration"]
    a = {p: r.median(f"a.{p}", "rps") for p in PROXIES}
    cpu = {p: r.median(f"a.{p}", "cpu") for p in PROXIES}
    user = {p: r.median(f"a.{p}", "user") for p in PROXIES}
    kernel = {p: r.median(f"a.{p}", "kernel") for p in PROXIES}
    p50 = {p: r.median(f"a.{p}", "p50") for p in PROXIES}
    p99 = {p: r.median(f"a.{p}", "p99") for p in PROXIES}
    c = {p: r.median(f"c.{p}", "rps") for p in PROXIES}
    f = {p: r.num(f"f.{p}.rps") for p in PROXIES}
    g = {p: r.num(f"g.{p}.rps") for p in PROXIES}
    big, plugins = r.median("a.big", "rps"), r.median("a.plugins", "rps")
    big_cpu, plugins_cpu = r.median("a.big", "cpu"), r.median("a.plugins", "cpu")
    rate = r.num("b.rate")
    lines = []
    add = lines.append
    add(
        f"Measured {meta['date']} by `scripts/bench/proxy`"
        + (" (QUICK=1: a smoke run, not figures to quote)" if meta.get("quick") == "1" else "")
        + f". Machine: {meta['nproc']} × {meta['cpu']}; load average before the report "
        f"{meta['load']}. nginx {meta['nginx']}, HAProxy {meta['haproxy']}, rustc {meta['rustc']}, "
        f"wrk {meta['wrk']}, oha {meta['oha']}, h2load {meta['h2load']}."
    )
    add("")
    add(
        f"Each proxy: one worker on CPU 0 (`taskset`); wrk/oha/h2load and the backend "
        f"(`nio-bench-backend`, one thread) on CPU 1. {meta['connections']} keep-alive "
        f"connections; saturation figures are the median of {rounds} rounds of {dur} s, and "
        f"(b)'s of {rounds} rounds of {meta['rate_duration']} s, the proxies alternating "
        f"within each round. Request: `GET /api/orders/42`, 13-byte answer."
    )
    add("")
    add("| scenario | direct | Nio | nginx | HAProxy | Nio/nginx | Nio/HAProxy |")
    add("| --- | --- | --- | --- | --- | --- | --- |")

    def row(name, vals, digits=0, skip=(), better="higher"):
        cells = [fmt(vals.get(p), digits) if p not in skip else "n/a" for p in PROXIES]
        n = vals.get("nio")
        add(
            f"| {name} | " + " | ".join(cells) + f" | {ratio(n, vals.get('nginx'))} | "
            f"{ratio(n, vals.get('haproxy'))} |"
        )

    row("(a) small GET, req/s", a)
    row("(a) proxy CPU per request, µs (lower is better)", cpu, 1, skip=("direct",))
    row("(a) of which in user space, µs", user, 1, skip=("direct",))
    row("(a) of which in the kernel, µs", kernel, 1, skip=("direct",))
    row("(a) p50 at saturation, ms (wrk)", p50, 2)
    row("(a) p99 at saturation, ms (wrk)", p99, 2)
    for q in ("p50", "p90", "p99", "p99.9"):
        vals = {p: r.median(f"b.{p}", q) for p in PROXIES}
        row(f"(b) {q} at {fmt(rate)} req/s, ms (oha, CO-corrected; lower is better)", vals, 3)
    row("(c) 100 KiB answers, req/s", c)
    row("(c) 100 KiB answers, MiB/s", {p: v * 100 / 1024 if v else None for p, v in c.items()}, 0)
    row("(f) HTTP/2 h2c, req/s (h2load, 16 connections × 10 streams)", f, skip=("direct",))
    g_row = dict(g)
    tls_note = ""
    if r.num("g.nio.skipped"):
        tls_note = " — Nio skipped: this data plane does not serve TLS yet"
    row(f"(g) new TLS connection per request, req/s (oha, 16 connections){tls_note}", g_row,
        skip=("direct",))
    add("")
    add(floor(r, a, cpu, user, kernel))
    add("")
    add("| Nio, same rounds as (a) | req/s | of (a) | CPU per request |")
    add("| --- | --- | --- | --- |")
    add(f"| (a) one route | {fmt(a['nio'])} | 1.00 | {fmt(cpu['nio'], 1)} µs |")
    add(
        f"| (d) {int(meta['table_routes']):,} routes, the measured one among them | {fmt(big)} | "
        f"{ratio(big, a['nio'])} | {fmt(big_cpu, 1)} µs |"
    )
    add(
        f"| (e) apiKey + jwt (HS256) + cors on the route | {fmt(plugins)} | "
        f"{ratio(plugins, a['nio'])} | {fmt(plugins_cpu, 1)} µs |"
    )
    add("")
    add("| through the proxy, of direct | Nio | nginx | HAProxy |")
    add("| --- | --- | --- | --- |")
    for name, vals in (("(a) small GET", a), ("(c) 100 KiB", c)):
        add(
            f"| {name} | "
            + " | ".join(ratio(vals[p], vals["direct"]) for p in ("nio", "nginx", "haproxy"))
            + " |"
        )
    add("")
    add("| routes loaded | data-plane RSS (median of 5 starts) | per route |")
    add("| --- | --- | --- |")
    base = r.num("rss.0")
    for n in sorted(int(k.split(".")[1]) for k in r.rows if k.startswith("rss.")):
        kib = r.num(f"rss.{n}")
        per = f"{(kib - base) * 1024 / n:,.0f} bytes" if n else "–"
        add(f"| {n:,} | {kib / 1024:.1f} MiB | {per} |")
    add("")
    add("| target | measured | |")
    add("| --- | --- | --- |")

    def target(name, value, goal):
        if value is None:
            add(f"| {name} | – | not measured |")
        else:
            add(f"| {name} | {value:.2f} | {'met' if value >= goal else f'missed by {(goal - value) / goal:.0%}'} |")

    target("(a) Nio ≥ 1.1 × nginx", a["nio"] / a["nginx"] if a["nginx"] else None, 1.1)
    target("(a) Nio ≥ 1.0 × HAProxy", a["nio"] / a["haproxy"] if a["haproxy"] else None, 1.0)
    bn, bg = r.median("b.nio", "p99"), r.median("b.nginx", "p99")
    target("(b) Nio p99 ≤ nginx p99 (nginx p99 ÷ Nio p99 ≥ 1)", bg / bn if bn and bg else None, 1.0)
    target("(d) ≥ 0.95 × (a)", big / a["nio"] if big and a["nio"] else None, 0.95)
    target("(e) ≥ 0.85 × (a)", plugins / a["nio"] if plugins and a["nio"] else None, 0.85)
    add("")
    add("![throughput](bench/throughput.svg) ![latency](bench/latency.svg)")
    return "\n".join(lines), {"a": a, "c": c, "f": f, "g": g}


def floor(r, a, cpu, user, kernel):
    """(a) against nio-bench-relay, a TCP relay that does no HTTP but makes
    the same four system calls per request: what each proxy's own work
    costs above that floor, and what 1.1 × nginx's throughput asks of a
    proxy's CPU time. (Its req/s is given, not compared: like every
    proxy's, it also depends on the load generator's CPU.)"""
    relay = {k: r.median("a.relay", k) for k in ("rps", "cpu", "user", "kernel")}
    if not relay["cpu"]:
        return "(the relay was not measured)"
    names = ("nio", "nginx", "haproxy")
    lines = [
        "| (a) proxy CPU per request, µs | relay (no HTTP) | Nio | nginx | HAProxy |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, vals, key in (("total", cpu, "cpu"), ("user space", user, "user"), ("kernel", kernel, "kernel")):
        lines.append(f"| {name} | {fmt(relay[key], 1)} | " + " | ".join(fmt(vals[p], 1) for p in names) + " |")
    above = {p: cpu[p] - relay["cpu"] if cpu[p] else None for p in names}
    lines.append("| above the relay (the proxy's own work) | – | " + " | ".join(fmt(above[p], 1) for p in names) + " |")
    lines.append(f"| req/s | {fmt(relay['rps'])} | " + " | ".join(fmt(a[p]) for p in names) + " |")
    if cpu["nginx"]:
        need = cpu["nginx"] / 1.1
        lines.append("")
        lines.append(
            f"1.1 × nginx's throughput on the same CPU asks for at most {need:.1f} µs per request: "
            f"{need - relay['cpu']:.1f} µs above the relay, against nginx's {fmt(above['nginx'], 1)} "
            f"and Nio's {fmt(above['nio'], 1)}."
        )
    return "\n".join(lines)


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def throughput_svg(groups, meta):
    """One panel per scenario, a horizontal bar per proxy, each panel scaled
    to its own largest value."""
    panels = [
        ("(a) small GET, req/s", groups["a"]),
        ("(c) 100 KiB answers, req/s", groups["c"]),
        ("(f) HTTP/2 h2c, req/s", groups["f"]),
        ("(g) new TLS connection per request, req/s", groups["g"]),
    ]
    w, bar_h, gap, left, right = 640, 18, 4, 90, 90
    out, y = [], 40
    for title, vals in panels:
        out.append(f'<text x="10" y="{y}" font-weight="bold">{esc(title)}</text>')
        y += 8
        top = max((v for v in vals.values() if v), default=0) or 1
        for p in PROXIES:
            v = vals.get(p)
            out.append(f'<text x="{left - 6}" y="{y + 13}" text-anchor="end">{LABEL[p]}</text>')
            if v:
                bw = (w - left - right) * v / top
                out.append(f'<rect x="{left}" y="{y}" width="{bw:.1f}" height="{bar_h}" fill="{COLOR[p]}"/>')
                out.append(f'<text x="{left + bw + 6:.1f}" y="{y + 13}">{v:,.0f}</text>')
            else:
                out.append(f'<text x="{left + 6}" y="{y + 13}" fill="#888">not measured</text>')
            y += bar_h + gap
        y += 22
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{y}" '
        f'font-family="sans-serif" font-size="12">'
        f'<rect width="100%" height="100%" fill="white"/>'
        f'<text x="10" y="20" font-size="14" font-weight="bold">Throughput, one worker each '
        f'({esc(meta["date"])}, higher is better)</text>'
    )
    return head + "".join(out) + "</svg>\n"


def latency_svg(r, meta):
    """(b): latency by percentile, the percentile axis spread as -log10(1-p)."""
    import math

    qs = [("p50", 0.5), ("p75", 0.75), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99),
          ("p99.9", 0.999), ("p99.99", 0.9999)]
    series = {}
    for p in PROXIES:
        pts = [(math.log10(1 / (1 - q)), r.median(f"b.{p}", k)) for k, q in qs]
        pts = [(x, v) for x, v in pts if v is not None]
        if pts:
            series[p] = pts
    w, h, left, bottom, top, right = 640, 360, 60, 40, 40, 110
    xmax = math.log10(1 / (1 - qs[-1][1]))
    ymax = max((v for pts in series.values() for _, v in pts), default=1) or 1
    # A round axis maximum.
    step = 10 ** math.floor(math.log10(ymax))
    ymax = math.ceil(ymax / step) * step
    X = lambda x: left + (w - left - right) * (x - math.log10(2)) / (xmax - math.log10(2))
    Y = lambda v: h - bottom - (h - bottom - top) * v / ymax
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="10" y="20" font-size="14" font-weight="bold">(b) latency at '
        f'{fmt(r.num("b.rate"))} req/s, corrected for coordinated omission ({esc(meta["date"])})</text>',
        f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="#333"/>',
    ]
    for k, q in qs:
        x = X(math.log10(1 / (1 - q)))
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{h - bottom}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{h - bottom + 16}" text-anchor="middle">{k}</text>')
    for i in range(6):
        v = ymax * i / 5
        y = Y(v)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{w - right}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v:g}</text>')
    out.append(f'<text x="14" y="{top - 10}">ms</text>')
    for i, (p, pts) in enumerate(series.items()):
        d = " ".join(f"{X(x):.1f},{Y(v):.1f}" for x, v in pts)
        out.append(f'<polyline points="{d}" fill="none" stroke="{COLOR[p]}" stroke-width="2"/>')
        for x, v in pts:
            out.append(f'<circle cx="{X(x):.1f}" cy="{Y(v):.1f}" r="3" fill="{COLOR[p]}"/>')
        ly = top + 10 + i * 18
        out.append(f'<rect x="{w - right + 14}" y="{ly - 9}" width="12" height="12" fill="{COLOR[p]}"/>')
        out.append(f'<text x="{w - right + 32}" y="{ly + 1}">{LABEL[p]}</text>')
    out.append("</svg>\n")
    return "".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("meta")
    ap.add_argument("results")
    ap.add_argument("--docs")
    ap.add_argument("--plots")
    args = ap.parse_args()
    meta, r = read(args.meta), Results(read(args.results))
    text, groups = table(meta, r)
    if args.plots:
        os.makedirs(args.plots, exist_ok=True)
        with open(os.path.join(args.plots, "throughput.svg"), "w") as f:
            f.write(throughput_svg(groups, meta))
        with open(os.path.join(args.plots, "latency.svg"), "w") as f:
            f.write(latency_svg(r, meta))
    if args.docs:
        doc = open(args.docs).read()
        if START not in doc or END not in doc:
            sys.exit(f"{args.docs} has no {START} ... {END} section to replace; add the two markers")
        head, rest = doc.split(START, 1)
        _, tail = rest.split(END, 1)
        with open(args.docs, "w") as f:
            f.write(head + START + "\n" + text + "\n" + END + tail)
    print()
    print(text)


if __name__ == "__main__":
    main()

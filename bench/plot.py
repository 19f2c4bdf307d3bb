"""Draw bench/run.sh farm's output against the number of miners, as one SVG.

    FARM_MINERS="1000 2500 5000 10000 19900" FARM_RATES=0.2 BENCH_OUT=farm.jsonl bench/run.sh farm
    python3 bench/plot.py farm.jsonl docs/farm.svg

Four panels, each against miners: submit p99 and notify fan-out p99 (direct to the pool and
through the proxy, ms), proxy RSS per miner (bytes) and proxy CPU (% of one core; both cores = 200 %).
Plain SVG written here (no plotting library to install), so the figure in BENCHMARKS.md is
redrawn from the JSON lines by anyone.
"""
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
out = sys.argv[2]
rate = sorted({r["shares_per_miner_per_s"] for r in rows if "miners" in r})[0]
rows = [r for r in rows if r.get("shares_per_miner_per_s") == rate and "established" in r]


def series(prefix, key):
    pts = sorted((r["miners"], r[key]) for r in rows
                 if r["scenario"].startswith(prefix) and r.get(key) is not None)
    return pts


panels = [
    ("submit p99 (ms)", [("direct", series("direct", "submit_p99_ms"), "#888"),
                         ("proxy", series("proxy (SQLite storage)", "submit_p99_ms"), "#c33")]),
    ("notify fan-out p99 (ms)", [("direct", series("direct", "fanout_p99_ms"), "#888"),
                                 ("proxy", series("proxy (SQLite storage)", "fanout_p99_ms"), "#c33")]),
    ("proxy RSS per miner (bytes)", [("proxy", series("proxy (SQLite storage)", "rss_bytes_per_miner"), "#36c")]),
    ("proxy CPU (% of one core)", [("proxy", series("proxy (SQLite storage)", "proxy_cpu_percent_of_200"), "#393")]),
]
W, H, PAD = 440, 260, 56
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * W}" height="{2 * H + 30}" '
       'font-family="sans-serif" font-size="11">',
       f'<rect width="100%" height="100%" fill="white"/>',
       f'<text x="{W}" y="18" text-anchor="middle" font-size="13">loka-proxy, {rate} shares/s '
       'per miner, SQLite storage, against the number of miners</text>']
for i, (title, lines) in enumerate(panels):
    ox, oy = (i % 2) * W, 30 + (i // 2) * H
    pts = [p for _, s, _ in lines for p in s]
    if not pts:
        continue
    xmax = max(x for x, _ in pts)
    ymax = max(y for _, y in pts) * 1.1 or 1
    sx = lambda x: ox + PAD + (x / xmax) * (W - 2 * PAD)
    sy = lambda y: oy + H - PAD + 10 - (y / ymax) * (H - 2 * PAD)
    svg.append(f'<text x="{ox + W / 2}" y="{oy + 16}" text-anchor="middle">{title}</text>')
    svg.append(f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(xmax)}" y2="{sy(0)}" stroke="black"/>')
    svg.append(f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(0)}" y2="{sy(ymax)}" stroke="black"/>')
    for k in range(5):
        y = ymax * k / 4
        label = f"{y:,.0f}" if ymax >= 20 else f"{y:.2g}"
        svg.append(f'<text x="{sx(0) - 4}" y="{sy(y) + 4}" text-anchor="end">{label}</text>')
    for x in sorted({x for x, _ in pts}):
        svg.append(f'<text x="{sx(x)}" y="{sy(0) + 14}" text-anchor="middle">{x}</text>')
    for j, (label, s, colour) in enumerate(lines):
        if not s:
            continue
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s)
        svg.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y in s:
            svg.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>')
        svg.append(f'<text x="{ox + W - PAD}" y="{oy + 32 + 13 * j}" text-anchor="end" '
                   f'fill="{colour}">{label}</text>')
svg.append("</svg>")
open(out, "w").write("\n".join(svg) + "\n")
print(f"wrote {out}: {len(rows)} runs at {rate} shares/s per miner")

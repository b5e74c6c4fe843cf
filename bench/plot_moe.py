#!/usr/bin/env python3
"""GFLOP/s against tokens for Moira and its peer, from `moira bench moe --json`.

Usage: build/moira bench moe --json > moe.json
       python3 bench/plot_moe.py OUT.svg TITLE moe.json [more.json=LABEL ...]

Further files add Moira's bf16 line of another run under LABEL (for example the same bench with
MOIRA_CPU_BF16_MATH=bf16); the peer's line comes from the first file.

Moira's GFLOP/s is the row's "gflops"; the peer's is the same FLOP count over its own time,
gflops * moira_us / peer_us. The peer always runs f32 weights, so its line is drawn from the f32
rows (the bf16 rows time the same loop again; their figures are drawn as open markers). Plain
SVG, standard library only, so the plot can be remade anywhere the bench runs.
"""
import json
import math
import sys

WIDTH, HEIGHT = 820, 460
LEFT, RIGHT, TOP, BOTTOM = 70, 270, 50, 60
COLORS = {"moira f32": "#1f77b4", "moira bf16": "#2ca02c", "peer": "#d62728"}
EXTRA_COLORS = ["#9467bd", "#ff7f0e", "#8c564b"]


def series(rows, label=None):
    """(tokens, GFLOP/s) lists per line, from the moe rows; with a label only Moira's bf16 line
    (what a math mode such as MOIRA_CPU_BF16_MATH changes)."""
    lines = {}
    for row in rows:
        if row["bench"] != "moe" or not row["moira_us"] or (label and row["dtype"] != "bf16"):
            continue
        tokens, gflops = row["tokens"], row["gflops"]
        name = "moira " + row["dtype"] + (", " + label if label else "")
        lines.setdefault(name, []).append((tokens, gflops))
        if row["peer_us"] and not label:
            peer = gflops * row["moira_us"] / row["peer_us"]
            key = "peer" if row["dtype"] == "f32" else "peer (bf16 rounds)"
            lines.setdefault(key, []).append((tokens, peer))
    return {k: sorted(v) for k, v in lines.items()}


def main():
    target, title, source = sys.argv[1], sys.argv[2], sys.argv[3]
    with open(source) as f:
        rows = json.load(f)["rows"]
    lines = series(rows)
    labels = {}
    for i, extra in enumerate(sys.argv[4:]):
        path, _, label = extra.partition("=")
        with open(path) as f:
            more = series(json.load(f)["rows"], label or path)
        for key, line in more.items():
            lines[key] = line
            COLORS[key] = EXTRA_COLORS[(i + len(labels)) % len(EXTRA_COLORS)]
            labels[key] = "Moira, bf16 weights, " + (label or path)
    peer_name = next((r["peer"] for r in rows if r.get("peer")), "peer")
    peer_name = {"openblas": "OpenBLAS", "clblast": "CLBlast"}.get(peer_name, peer_name)
    points = [p for line in lines.values() for p in line]
    x_lo, x_hi = min(p[0] for p in points), max(p[0] for p in points)
    y_lo = 10 ** math.floor(math.log10(min(p[1] for p in points)))
    y_hi = 10 ** math.ceil(math.log10(max(p[1] for p in points)))
    if x_hi == x_lo:
        x_hi = x_lo * 2

    def x(v):
        return LEFT + (math.log(v) - math.log(x_lo)) / (math.log(x_hi) - math.log(x_lo)) * (
            WIDTH - LEFT - RIGHT)

    def y(v):
        return HEIGHT - BOTTOM - (math.log(v) - math.log(y_lo)) / (
            math.log(y_hi) - math.log(y_lo)) * (HEIGHT - TOP - BOTTOM)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
           f'<text x="{WIDTH / 2 - RIGHT / 2}" y="24" text-anchor="middle" font-size="14">'
           f'{title}</text>']
    # Axes: tokens on a log scale at the measured counts, GFLOP/s on decades.
    for t in sorted({p[0] for p in points}):
        out.append(f'<line x1="{x(t):.1f}" y1="{TOP}" x2="{x(t):.1f}" y2="{HEIGHT - BOTTOM}" '
                   f'stroke="#ddd"/>')
        out.append(f'<text x="{x(t):.1f}" y="{HEIGHT - BOTTOM + 18}" text-anchor="middle">{t}'
                   f'</text>')
    decade = y_lo
    while decade <= y_hi * 1.0001:
        for m in (1, 2, 5):
            v = decade * m
            if y_lo <= v <= y_hi * 1.0001:
                out.append(f'<line x1="{LEFT}" y1="{y(v):.1f}" x2="{WIDTH - RIGHT}" '
                           f'y2="{y(v):.1f}" stroke="{"#bbb" if m == 1 else "#eee"}"/>')
                out.append(f'<text x="{LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end">'
                           f'{v:g}</text>')
        decade *= 10
    out.append(f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 18}" '
               f'text-anchor="middle">tokens per batch (log scale)</text>')
    out.append(f'<text x="18" y="{(TOP + HEIGHT - BOTTOM) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 18 {(TOP + HEIGHT - BOTTOM) / 2})">GFLOP/s (log scale)'
               f'</text>')
    labels.update({"moira f32": "Moira, f32 weights", "moira bf16": "Moira, bf16 weights",
              "peer": f"{peer_name} loop, f32 weights",
              "peer (bf16 rounds)": "  same loop, timed in bf16 rounds"})
    order = ["moira f32", "moira bf16"] + [k for k in lines if k.startswith("moira ") and
                                           k not in ("moira f32", "moira bf16")]
    order += ["peer", "peer (bf16 rounds)"]
    for i, key in enumerate(k for k in order if k in lines):
        line = lines[key]
        color = COLORS.get(key, COLORS["peer"])
        dashed = ' stroke-dasharray="5,4"' if key.startswith("peer") else ""
        if key != "peer (bf16 rounds)":
            path = " ".join(f"{x(t):.1f},{y(g):.1f}" for t, g in line)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" '
                       f'stroke-width="2"{dashed}/>')
        for t, g in line:
            fill = "white" if key == "peer (bf16 rounds)" else color
            out.append(f'<circle cx="{x(t):.1f}" cy="{y(g):.1f}" r="3.5" fill="{fill}" '
                       f'stroke="{color}"/>')
        ly = TOP + 10 + 22 * i
        if key == "peer (bf16 rounds)":
            out.append(f'<circle cx="{WIDTH - RIGHT + 27}" cy="{ly}" r="3.5" fill="white" '
                       f'stroke="{color}"/>')
        else:
            out.append(f'<line x1="{WIDTH - RIGHT + 14}" y1="{ly}" x2="{WIDTH - RIGHT + 40}" '
                       f'y2="{ly}" stroke="{color}" stroke-width="2"{dashed}/>')
        out.append(f'<text x="{WIDTH - RIGHT + 46}" y="{ly + 4}">{labels[key]}</text>')
    out.append("</svg>")
    with open(target, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()

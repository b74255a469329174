#!/usr/bin/env python3
"""plot_bench.py - plots what build/bin/bench_engine measured.

bench_engine prints one JSON object per line ({"bench": "machine", ...} once, then
{"bench": "engine", "model", "batch", "prefill_tokens_per_s", "decode_tokens_per_s",
"roofline_tokens_per_s", ...} per model and batch size) and then a table; this reads those
lines (anything that is not a JSON object is skipped, so the whole output may be piped in)
and draws throughput against batch size, decode and prefill side by side, log-scale batch
axis, one line per model, each model's batch-1 roofline (memory bandwidth / weight bytes per
step) dashed. Objects with "bench": "latency" ("p50_ms", "p99_ms", plus whatever names the
case: "model", "batch", "sessions", "name", ...) add a bar chart of those percentiles.

usage: plot_bench.py [FILE ...] [-o bench.png]       (no FILE or '-': standard input)
       build/bin/bench_engine --models 15M,110M | python3 scripts/plot_bench.py -o bench.png

With several files, each file's models are labelled with the file's name, to compare runs.
"""
import argparse
import json
import os
import subprocess
import sys
from collections import defaultdict

# Keys that name a latency case rather than measure it, in the order they label a bar.
LATENCY_LABEL_KEYS = ("name", "model", "phase", "batch", "sessions", "prompt", "gen")


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, installed with pip when missing."""
    try:
        import matplotlib
    except ImportError:
        print("plot_bench: installing matplotlib (python3 -m pip install matplotlib)", file=sys.stderr)
        subprocess.check_call([sys.executable, "-m", "pip", "install", "matplotlib"])
        import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def read_objects(stream, source):
    """The JSON objects of a stream's lines, each tagged with its source; other lines are
    skipped (the table bench_engine prints after the JSON)."""
    out = []
    for line in stream:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "bench" in obj:
            obj["_source"] = source
            out.append(obj)
    return out


def label_of(obj, multi):
    model = str(obj.get("model", "?"))
    return f"{model} ({obj['_source']})" if multi else model


def series(engine_rows, multi):
    """{label: {batch: row}}, a later measurement of the same model and batch winning."""
    by = defaultdict(dict)
    for r in engine_rows:
        if "batch" in r:
            by[label_of(r, multi)][int(r["batch"])] = r
    return by


def draw_throughput(ax, by, key, title):
    for i, (label, rows) in enumerate(sorted(by.items())):
        batches = sorted(b for b in rows if key in rows[b])
        if not batches:
            continue
        line, = ax.plot(batches, [rows[b][key] for b in batches], marker="o", label=label)
        if key == "decode_tokens_per_s":
            roof = next((rows[b]["roofline_tokens_per_s"] for b in sorted(rows)
                         if "roofline_tokens_per_s" in rows[b]), None)
            if roof:
                ax.axhline(roof, ls="--", color=line.get_color(), alpha=0.8,
                           label=f"{label}: batch-1 roofline {roof:.0f}/s")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size (sessions)")
    ax.set_ylabel("tokens/s")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    all_b = sorted({b for rows in by.values() for b in rows})
    if all_b:
        ax.set_xticks(all_b)
        ax.set_xticklabels([str(b) for b in all_b])


def draw_latency(ax, rows, multi):
    import numpy as np
    labels = []
    for r in rows:
        parts = [f"{k} {r[k]}" if k in ("batch", "sessions", "prompt", "gen") else str(r[k])
                 for k in LATENCY_LABEL_KEYS if k in r]
        if multi:
            parts.append(f"({r['_source']})")
        labels.append("\n".join(parts) or "?")
    x = np.arange(len(rows))
    width = 0.38
    p50 = [r.get("p50_ms", float("nan")) for r in rows]
    p99 = [r.get("p99_ms", float("nan")) for r in rows]
    b1 = ax.bar(x - width / 2, p50, width, label="p50")
    b2 = ax.bar(x + width / 2, p99, width, label="p99")
    ax.bar_label(b1, fmt="%.1f", fontsize=7)
    ax.bar_label(b2, fmt="%.1f", fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("ms")
    ax.set_title("latency percentiles")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", help="bench_engine output; none or '-' for stdin")
    ap.add_argument("-o", "--out", default="bench.png", help="the PNG to write")
    args = ap.parse_args()

    objs = []
    for f in args.files or ["-"]:
        if f == "-":
            objs += read_objects(sys.stdin, "stdin")
        else:
            try:
                with open(f, encoding="utf-8") as s:
                    objs += read_objects(s, os.path.basename(f))
            except OSError as e:
                sys.exit(f"plot_bench: {f}: {e.strerror}")
    multi = len(args.files) > 1
    engine = [o for o in objs if o["bench"] == "engine"]
    latency = [o for o in objs if o["bench"] == "latency" and ("p50_ms" in o or "p99_ms" in o)]
    machines = [o for o in objs if o["bench"] == "machine"]
    if not engine and not latency:
        sys.exit("plot_bench: no {\"bench\": \"engine\"} or {\"bench\": \"latency\"} lines in the input "
                 "(run build/bin/bench_engine and pass its output)")

    plt = pyplot()
    panels = (2 if engine else 0) + (1 if latency else 0)
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.8), squeeze=False)
    axes = list(axes[0])
    if engine:
        by = series(engine, multi)
        draw_throughput(axes.pop(0), by, "decode_tokens_per_s", "decode throughput")
        draw_throughput(axes.pop(0), by, "prefill_tokens_per_s", "prefill throughput")
    if latency:
        draw_latency(axes.pop(0), latency, multi)
    if machines:
        m = machines[-1]
        bits = []
        if "read_bandwidth_gbps" in m:
            bits.append(f"memory read {m['read_bandwidth_gbps']:.1f} GB/s")
        if "sgemm_gflops" in m:
            bits.append(f"sgemm {m['sgemm_gflops']:.0f} GFLOP/s")
        if bits:
            fig.suptitle("bench_engine: " + ", ".join(bits), fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    n_models = len({label_of(o, multi) for o in engine})
    print(f"plot_bench: wrote {args.out} ({len(engine)} engine measurements of {n_models} models, "
          f"{len(latency)} latency measurements)", file=sys.stderr)


if __name__ == "__main__":
    main()

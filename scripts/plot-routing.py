#!/usr/bin/env python3
"""Plots of `switchyard bench routing --json F`: TTFT CDFs per workload and a summary of TTFT p90
and prefix-cache hit rate per policy. Usage: plot-routing.py RESULTS.json OUT_DIR"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    results = json.load(open(sys.argv[1]))
    out = sys.argv[2]
    os.makedirs(out, exist_ok=True)
    n = len(results)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, w in zip(axes.flat, results):
        for f in w["figures"]:
            cdf = f["ttft_cdf_ms"]
            if cdf:
                ax.plot(cdf, [p / 100 for p in range(1, 100)], label=f["policy"])
        ax.set_xscale("log")
        ax.set_title(f'{w["workload"]} ({w["rate"]:.1f} req/s)')
        ax.set_xlabel("TTFT ms")
        ax.set_ylabel("fraction")
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "routing-ttft-cdf.png"), dpi=90)

    policies = [f["policy"] for f in results[0]["figures"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 3.8))
    width = 0.8 / max(len(policies), 1)
    for i, p in enumerate(policies):
        xs = [j + i * width for j in range(n)]
        p90 = [next((f["ttft_ms"][1] for f in w["figures"] if f["policy"] == p), 0) for w in results]
        hit = [100 * next((f["hit_rate"] for f in w["figures"] if f["policy"] == p), 0) for w in results]
        a.bar(xs, p90, width, label=p)
        b.bar(xs, hit, width, label=p)
    for ax, title in ((a, "TTFT p90 ms (lower is better)"), (b, "prefix-cache hit % (sims' counters)")):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(n)])
        ax.set_xticklabels([w["workload"] for w in results], rotation=20, fontsize=8)
        ax.set_title(title)
        ax.grid(True, axis="y", alpha=0.3)
    a.set_yscale("log")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "routing-summary.png"), dpi=90)


if __name__ == "__main__":
    main()

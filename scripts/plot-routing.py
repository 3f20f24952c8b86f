#!/usr/bin/env python3
"""Plots of `switchyard bench routing --json F`: TTFT CDFs per workload and a summary of TTFT p90
and prefix-cache hit rate per policy; prints the figures as Markdown tables.
Usage: plot-routing.py RESULTS.json OUT_DIR"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402


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
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
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
    markdown(results)


def markdown(results):
    for w in results:
        print(f'\n**{w["workload"]}**, {w["rate"]:.1f} req/s (round-robin saturation {w["saturation"]:.1f})\n')
        print("| policy | TTFT p50/p90/p99 ms | p90 per seed | e2e p90 ms | tok/s | goodput | hit | 429/503/failed | max 100 ms share | picker CPU s/1k |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for f in w["figures"]:
            t = f["ttft_ms"]
            seeds = "–".join(f"{x:.0f}" for x in (min(f["ttft_p90_runs"]), max(f["ttft_p90_runs"]))) if f["ttft_p90_runs"] else ""
            share = f'{100 * f["max_window_share"]:.0f} %' if f["max_window_share"] is not None else "–"
            cpu = f'{f["cpu_s_per_1k"]:.2f}' if f["cpu_s_per_1k"] > 0 else "–"
            print(f'| {f["policy"]} | {t[0]:.0f}/{t[1]:.0f}/{t[2]:.0f} | {seeds} | {f["e2e_ms"][1]:.0f} | {f["output_tokens_per_s"]:.0f} '
                  f'| {100 * f["goodput"]:.1f} % | {100 * f["hit_rate"]:.1f} % | {f["rejected_429"]}/{f["unavailable_503"]}/{f["other_failures"]} '
                  f'| {share} | {cpu} |')
        for f in w["figures"]:
            for name, (n, rejected, p90) in f["by_objective"].items():
                print(f'\n- {f["policy"]}: {name} {n} requests, {rejected} rejected, TTFT p90 {p90:.0f} ms')
        if w.get("unloaded_critical_ttft_p90") is not None:
            print(f'- critical TTFT p90 unloaded (20 % of saturation): {w["unloaded_critical_ttft_p90"]:.0f} ms')


if __name__ == "__main__":
    main()

"""Turn pytest-benchmark JSON runs into ns per call, ratios against the targets, a plot.

    python benchmarks/report.py benchmarks/results/run-*.json [--png out.png]

ns per call = (median round - median of the group's floor round) / ops per round: the floor
is the same loop with no call, so what remains is the call itself (groups without a floor
case are taken whole). Raw ratios (floor not subtracted) are printed too; they are kinder
to the slower side. With several runs, every ratio is computed within each run (peers
measured side by side) and the median across runs is reported, with the range.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict

# (group, ours, peer, target ratio) from shared/BENCHMARKS.md
TARGETS = [
    ("get-hit", "LocalCache lru+ttl", "cachebox.VTTLCache", 1.0),
    ("get-hit", "LocalCache lru+ttl", "dict.get", 2.0),
    ("get-hit", "LocalCache s3fifo+ttl", "cachebox.VTTLCache", 1.0),
    ("get-hit", "LocalCache s3fifo+ttl", "dict.get", 2.0),
    ("get-hit", "LocalCache lru", "dict.get", 2.0),
    ("set-full", "LocalCache lru+ttl", "cachebox.VTTLCache", 1.0),
    ("set-full", "LocalCache s3fifo+ttl", "cachebox.VTTLCache", 1.0),
    ("tiered-l1-hit", "TieredCache.get", "dict.get", 2.5),
    ("async-l1-hit", "AsyncTieredCache.get", "cashews client_side", 0.1),
    ("l2-hit", "TieredCache.get (L2 hit)", "raw GET + msgpack.unpackb", 1.15),
    ("l2-get-many-100", "TieredCache.get_many", "raw MGET + msgpack.unpackb", 1.2),
    ("metrics-l1-hit", "TieredCache.get, collector registered", "TieredCache.get", 1.05),
]

# (group, ours, base, limit in ns): targets on what ours adds to base, not on a ratio
DIFFERENCES = [
    ("scrape-1m", "with CacheCollector", "prometheus_client alone", 1_000_000),
]


def load(path):
    with open(path) as handle:
        data = json.load(handle)
    groups = defaultdict(dict)
    for bench in data["benchmarks"]:
        name = bench["params"]["name"]
        groups[bench["group"]][name] = (bench["stats"]["median"], bench["extra_info"]["ops"])
    return groups


def per_call(groups):
    """{group: {name: (net ns per call, raw ns per call)}}"""
    table = {}
    for group, cases in groups.items():
        floor, _ = cases.get("floor", (0.0, 1))
        table[group] = {
            name: ((median - floor) / ops * 1e9, median / ops * 1e9)
            for name, (median, ops) in cases.items()
            if name != "floor"
        }
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", help="one or more pytest-benchmark JSON files (runs)")
    parser.add_argument("--png", help="write a bar chart of ns per call (first run) here")
    args = parser.parse_args()
    runs = [per_call(load(path)) for path in args.json]
    table = runs[0]

    for group in table:
        print(f"\n{group}: ns per call, median of rounds (floor subtracted / raw), run by run")
        names = sorted(table[group], key=lambda name: table[group][name][0])
        for name in names:
            cells = "  ".join(
                f"{run[group][name][0]:9.1f} /{run[group][name][1]:9.1f}" for run in runs if name in run.get(group, {})
            )
            print(f"  {name:28s} {cells}")

    print(f"\ntargets: ratio ours / peer within each run; median of {len(runs)} run(s) [range]; raw in brackets")
    for group, ours, peer, target in TARGETS:
        nets, raws = [], []
        for run in runs:
            if ours in run.get(group, {}) and peer in run[group]:
                nets.append(run[group][ours][0] / run[group][peer][0])
                raws.append(run[group][ours][1] / run[group][peer][1])
        if not nets:
            continue
        net, raw = statistics.median(nets), statistics.median(raws)
        verdict = "met" if net <= target else "MISSED"
        spread = f"[{min(nets):.2f}-{max(nets):.2f}]" if len(nets) > 1 else ""
        print(
            f"  {group:15s} {ours:24s} / {peer:26s} {net:6.3f}x {spread:13s} raw {raw:6.3f}x  target <= {target}x  {verdict}"
        )

    for group, ours, base, limit in DIFFERENCES:
        extra = [
            run[group][ours][0] - run[group][base][0]
            for run in runs
            if ours in run.get(group, {}) and base in run[group]
        ]
        if not extra:
            continue
        added = statistics.median(extra)
        spread = f"[{min(extra) / 1e3:.1f}-{max(extra) / 1e3:.1f}]" if len(extra) > 1 else ""
        verdict = "met" if added < limit else "MISSED"
        print(
            f"  {group:15s} {ours} - {base}: {added / 1e3:8.1f} us {spread}  target < {limit / 1e3:.0f} us  {verdict}"
        )

    if args.png:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed (pip install -e '.[bench]'): no plot")
            return
        fig, axes = plt.subplots(1, len(table), figsize=(6 * len(table), 5))
        for ax, (group, cases) in zip(axes if len(table) > 1 else [axes], table.items()):
            names = sorted(cases, key=lambda n: cases[n][0])
            ours = (
                "LocalCache",
                "TieredCache",
                "AsyncTieredCache",
                "its LocalCache",
                "CacheCollector",
                "with CacheCollector",
            )
            colors = ["tab:orange" if n.startswith(ours) else "tab:blue" for n in names]
            widths = [max(cases[n][0], 1.0) for n in names]
            ax.barh(names, widths, color=colors)
            ax.set_xscale("log")
            # a decade either side: on a narrow range the log axis would blow up small gaps
            ax.set_xlim(min(widths) / 10, max(widths) * 10)
            ax.set_title(group)
            ax.set_xlabel("ns per call (median, floor subtracted; log scale)")
        fig.tight_layout()
        fig.savefig(args.png, dpi=100)
        print(f"plot: {args.png}")


if __name__ == "__main__":
    main()

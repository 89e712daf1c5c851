"""Turn a pytest-benchmark JSON into ns per call, ratios against the targets, and a plot.

    python benchmarks/report.py benchmarks/results/local.json [--png out.png]

ns per call = (median round - median of the group's floor round) / ops per round: the floor
is the same loop with no call, so what remains is the call itself. Raw ratios (floor not
subtracted) are printed too; they are kinder to the slower side.
"""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("json")
    parser.add_argument("--png", help="write a bar chart of ns per call here")
    args = parser.parse_args()
    table = per_call(load(args.json))

    for group, cases in table.items():
        print(f"\n{group}: ns per call, median (floor subtracted / raw)")
        for name, (net, raw) in sorted(cases.items(), key=lambda item: item[1][0]):
            print(f"  {name:28s} {net:8.1f}  {raw:8.1f}")

    print("\ntargets (ratio of medians, floor subtracted; raw in brackets)")
    for group, ours, peer, target in TARGETS:
        if ours in table.get(group, {}) and peer in table[group]:
            net = table[group][ours][0] / table[group][peer][0]
            raw = table[group][ours][1] / table[group][peer][1]
            verdict = "met" if net <= target else "MISSED"
            print(f"  {group:9s} {ours:22s} / {peer:20s} {net:5.2f}x  [{raw:4.2f}x]  target <= {target}x  {verdict}")

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
            colors = ["tab:orange" if n.startswith("LocalCache") else "tab:blue" for n in names]
            ax.barh(names, [cases[n][0] for n in names], color=colors)
            ax.set_title(group)
            ax.set_xlabel("ns per call (median, floor subtracted)")
        fig.tight_layout()
        fig.savefig(args.png, dpi=100)
        print(f"plot: {args.png}")


if __name__ == "__main__":
    main()

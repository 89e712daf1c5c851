"""One report of every target in shared/BENCHMARKS.md, from what `make bench` measured.

    python benchmarks/report.py benchmarks/results/*.json [--out benchmarks/results]
                                [--targets shared/BENCHMARKS.md] [--png FILE]

Inputs, told apart by content: pytest-benchmark JSON files (one per run, `--benchmark-json`)
and the JSON files the scripts write with `--json` (loops.py, concurrency.py, threads.py,
invalidation_lag.py, metrics_overhead.py, stampede.py, memory.py, hit_ratio.py; one file
per run of a script). Writes OUT/REPORT.md (the table `| target | measured | verdict |`
with one row or more for every target, the date, the machine, the settings and how to
reproduce) and the plots OUT/latency.png, OUT/hit_ratio.png and OUT/concurrency.png
(when matplotlib is installed: pip install -e '.[bench]'); prints the report too.

A ratio is ours / peer taken within one run (both measured side by side), reported as the
median across runs with the [min-max] range over runs. pytest-benchmark figures are ns per
call = (median round - median of the group's floor round) / ops per round: the floor is the
same loop with no call (groups without one are taken whole). A target with no figure in the
inputs says "not measured"; none is left out. With --targets, the rows of BENCHMARKS.md's
table are checked against the ones known here: a row unknown here is reported as not
measured, and a target whose wording changed is flagged.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
NOT_MEASURED = "not measured"

# -- inputs --------------------------------------------------------------------------------


@dataclass
class Inputs:
    """Everything read: pytest-benchmark runs ({group: {name: (net ns, raw ns)}} each) and
    the scripts' files ({script: [payload, ...]}, one payload per run)."""

    bench_runs: list[dict[str, dict[str, tuple[float, float]]]] = field(default_factory=list)
    bench_meta: list[dict] = field(default_factory=list)
    scripts: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))

    def script(self, name: str) -> list[dict]:
        return self.scripts.get(name, [])


def per_call(data: dict) -> dict[str, dict[str, tuple[float, float]]]:
    """{group: {name: (net ns per call, raw ns per call)}} of one pytest-benchmark run."""
    groups: dict[str, dict[str, tuple[float, float]]] = defaultdict(dict)
    for bench in data["benchmarks"]:
        groups[bench["group"]][bench["params"]["name"]] = (bench["stats"]["median"], bench["extra_info"]["ops"])
    table = {}
    for group, cases in groups.items():
        floor, _ = cases.get("floor", (0.0, 1))
        table[group] = {
            name: ((median - floor) / ops * 1e9, median / ops * 1e9)
            for name, (median, ops) in cases.items()
            if name != "floor"
        }
    return table


def load(paths: list[str]) -> Inputs:
    inputs = Inputs()
    for path in sorted(paths):
        with open(path) as handle:
            data = json.load(handle)
        if "benchmarks" in data:
            inputs.bench_runs.append(per_call(data))
            meta = {key: data.get(key) for key in ("machine_info", "commit_info", "datetime")}
            meta["options"] = data["benchmarks"][0]["options"] if data["benchmarks"] else {}
            inputs.bench_meta.append(meta)
        elif "script" in data:
            data["path"] = path
            data["mtime"] = os.path.getmtime(path)
            inputs.scripts[data["script"]].append(data)
        else:
            print(f"{path}: neither a pytest-benchmark run nor a script's --json file; skipped", file=sys.stderr)
    return inputs


# -- targets -------------------------------------------------------------------------------


@dataclass
class Figure:
    """What one check measured: a value per run (the verdict is on their median), how to
    print one, and what else to say in the cell."""

    values: list[float]
    unit: Callable[[float], str]
    source: str
    extra: str = ""
    caveat: str = ""  # said beside the verdict (e.g. measured at a smaller size than the target's)
    failed: str = ""  # a reason the target is missed whatever the values say


@dataclass
class Check:
    what: str  # BENCHMARKS.md's "what" column, verbatim
    target: str  # BENCHMARKS.md's "target" column, verbatim
    label: str  # this row's part of the target
    op: str  # "<=", ">=" or "=="
    limit: float
    measure: Callable[[Inputs], Figure | None]


def ratio(value: float) -> str:
    return f"{value:.2f}x"


def spread(values: list[float], unit: Callable[[float], str]) -> str:
    middle = unit(statistics.median(values))
    if len(values) < 2:
        return f"{middle} (1 run)"
    return f"{middle} [{unit(min(values))}-{unit(max(values))}], {len(values)} runs"


def bench_ratio(group: str, ours: str, peer: str) -> Callable[[Inputs], Figure | None]:
    def measure(inputs: Inputs) -> Figure | None:
        nets, raws = [], []
        for run in inputs.bench_runs:
            cases = run.get(group, {})
            if ours in cases and peer in cases and cases[peer][0] > 0:
                nets.append(cases[ours][0] / cases[peer][0])
                raws.append(cases[ours][1] / cases[peer][1])
        if not nets:
            return None
        return Figure(
            nets,
            ratio,
            f"pytest-benchmark group {group}, floor subtracted",
            f"raw {statistics.median(raws):.2f}x; {statistics.median(n[ours][0] for n in _having(inputs, group, ours)):.0f} ns"
            f" vs {statistics.median(n[peer][0] for n in _having(inputs, group, peer)):.0f} ns",
        )

    return measure


def _having(inputs: Inputs, group: str, name: str) -> list[dict[str, tuple[float, float]]]:
    return [run[group] for run in inputs.bench_runs if name in run.get(group, {})]


def loops_ratio(case: str, floor: str, clock: str) -> Callable[[Inputs], Figure | None]:
    other = "wall" if clock == "cpu" else "cpu"

    def measure(inputs: Inputs) -> Figure | None:
        runs = [p["results"] for p in inputs.script("loops") if case in p["results"] and floor in p["results"]]
        if not runs:
            return None
        values = [r[case][clock] / r[floor][clock] for r in runs]
        others = [r[case][other] / r[floor][other] for r in runs]
        return Figure(
            values,
            ratio,
            f"loops.py, {'CPU' if clock == 'cpu' else 'wall'} time, medians of {_args(inputs, 'loops', 'rounds')} rounds",
            f"{'wall' if clock == 'cpu' else 'CPU'} {statistics.median(others):.2f}x",
        )

    return measure


def _args(inputs: Inputs, script: str, name: str) -> str:
    seen = sorted({str(p["args"].get(name)) for p in inputs.script(script)})
    return "/".join(seen)


def memory(inputs: Inputs) -> Figure | None:
    runs = inputs.script("memory")
    if not runs:
        return None
    ours = {case: b for case, b in runs[-1]["results"].items() if case.startswith("LocalCache")}
    if not ours:
        return None
    entries = runs[-1]["args"]["entries"]
    peers = ", ".join(f"{case} {b:.1f}" for case, b in runs[-1]["results"].items() if not case.startswith("LocalCache"))
    worst = max(ours, key=ours.get)
    return Figure(
        [ours[worst]],
        lambda b: f"{b:.1f} B",
        f"memory.py, RSS delta, {entries:,} entries",
        f"worst of {', '.join(f'{c[11:]} {b:.1f} B' for c, b in ours.items())} (peers: {peers})",
        "" if entries >= 1_000_000 else f"at {entries:,} entries, not 1M",
    )


def hit_ratio_gap(ours: str, reference: str, absolute: bool) -> Callable[[Inputs], Figure | None]:
    def measure(inputs: Inputs) -> Figure | None:
        runs = inputs.script("hit_ratio")
        if not runs:
            return None
        traces = runs[-1]["results"]
        # libcachesim's W-TinyLFU hits nothing in a cache of a few dozen objects (its window
        # rounds to nothing): such a trace says nothing of the policy compared with it
        degenerate = [t for t in traces if t["ratios"][reference] == 0]
        gaps = [((t["ratios"][ours] - t["ratios"][reference]) * 100, t) for t in traces if t not in degenerate]
        if not gaps:
            return None
        worst, trace = max(gaps, key=lambda g: abs(g[0])) if absolute else min(gaps, key=lambda g: g[0])
        args = runs[-1]["args"]
        every = ", ".join(f"{g:+.2f}" for g, _ in gaps)
        return Figure(
            [worst],
            lambda g: f"{g:+.2f} pt",
            f"hit_ratio.py, zipf, {args['requests']:,} requests over {args['objects']:,} objects",
            f"worst of {len(gaps)} traces (alpha {trace['alpha']}, cache {trace['fraction']:.1%}); all: {every}"
            + (f"; {len(degenerate)} trace(s) left out, where {reference} hit nothing" if degenerate else ""),
        )

    return measure


def concurrency(field_name: str) -> Callable[[Inputs], Figure | None]:
    def measure(inputs: Inputs) -> Figure | None:
        runs = [p["results"] for p in inputs.script("concurrency") if "200" in p["results"]["tiered"]]
        if not runs:
            return None
        tiered = [r["tiered"]["200"] for r in runs]
        raw = [r["raw"]["200"] for r in runs]
        if field_name == "commands":
            return Figure(
                [t["read_commands"] for t in tiered],
                lambda c: f"{c:.0f} command(s)",
                "concurrency.py, GET/MGET in INFO commandstats",
                f"raw redis.asyncio: {statistics.median(r['read_commands'] for r in raw):.0f}",
            )
        values = [t["read_wall"] / r["read_wall"] for t, r in zip(tiered, raw)]
        return Figure(
            values,
            ratio,
            f"concurrency.py, median burst of {_args(inputs, 'concurrency', 'rounds')} rounds",
            f"{statistics.median(t['read_wall'] for t in tiered) * 1e3:.2f} ms vs "
            f"{statistics.median(r['read_wall'] for r in raw) * 1e3:.2f} ms",
        )

    return measure


def metrics_overhead(inputs: Inputs) -> Figure | None:
    runs = [p["results"] for p in inputs.script("metrics_overhead")]
    if not runs:
        return None
    return Figure(
        [r["registered"] / r["without"] for r in runs],
        ratio,
        f"metrics_overhead.py, round-robin, {_args(inputs, 'metrics_overhead', 'rounds')} rounds",
        f"{statistics.median(r['registered'] for r in runs) * 1e9:.1f} ns vs "
        f"{statistics.median(r['without'] for r in runs) * 1e9:.1f} ns",
    )


def invalidation_lag(inputs: Inputs) -> Figure | None:
    runs = [p["results"] for p in inputs.script("invalidation_lag")]
    if not runs:
        return None
    return Figure(
        [r["from_returned"]["p99"] for r in runs],
        lambda ms: f"{ms:.2f} ms",
        f"invalidation_lag.py, {_args(inputs, 'invalidation_lag', 'rounds')} writes, from set() returning",
        f"p50 {statistics.median(r['from_returned']['p50'] for r in runs):.2f} ms; from set() called: p99 "
        f"{statistics.median(r['from_called']['p99'] for r in runs):.2f} ms; reader's metric p99 <= "
        f"{statistics.median(r['metric_p99_bucket'] for r in runs):g} ms",
    )


def stampede(inputs: Inputs) -> Figure | None:
    repeats = [rep for p in inputs.script("stampede") for rep in p["results"]]
    if not repeats:
        return None
    args = inputs.script("stampede")[-1]["args"]
    short = [rep for rep in repeats if rep["got_value"] < rep["callers"]]
    calls = [float(rep["loader_calls"]) for rep in repeats]
    return Figure(
        # the worst repeat decides: one that missed is a miss, whatever the median says
        [max(calls, key=lambda c: abs(c - 1))],
        lambda c: f"{c:.0f} loader call(s)",
        f"stampede.py, {args['processes']} processes x {args['threads']} threads, worst of {len(repeats)} repeats",
        f"per repeat: {', '.join(f'{c:.0f}' for c in calls)}; callers that got the value: "
        f"{sum(r['got_value'] for r in repeats)}/{sum(r['callers'] for r in repeats)}; lease waits timed out: "
        f"{sum(r['lease_timeouts'] for r in repeats)}",
        failed=f"a caller got no value in {len(short)} repeat(s)" if short else "",
    )


LOCAL_GET = ("LocalCache.get hit (LRU + TTL)", "<= 1.0x cachebox.VTTLCache.get and <= 1.3x dict.get")
LOCAL_SET = ("LocalCache.set into a full cache", "<= 1.0x cachebox.VTTLCache.insert")
MEMORY = ("LocalCache memory", "<= 64 B per entry beyond key and value, at 1M entries")
S3FIFO = ('policy="s3fifo" hit ratio', "within 1 point of libcachesim W-TinyLFU on zipf traces")
LRU = ('policy="lru" hit ratio', "within 0.5 point of libcachesim LRU")
TIERED_L1 = ("TieredCache.get, L1 hit", "<= 1.4x dict.get")
ASYNC_L1 = (
    "AsyncTieredCache.get, L1 hit",
    "<= 1.5x `await` of a coroutine doing a dict lookup (>= 10x faster than cashews)",
)
L2_HIT = ("TieredCache.get, L2 hit", "CPU <= 1.10x and wall <= 1.05x raw redis-py GET + msgpack.unpackb, in loops")
GET_MANY = ("get_many(100), all in L2", "CPU <= 1.15x raw redis-py MGET + unpack")
WRITES = ("set / delete", "CPU <= 1.15x raw pipeline (SET PX or DEL + PUBLISH) + packb")
CONCURRENT = ("200 concurrent async L2 gets", "<= 20 Redis commands, <= 0.5x wall of raw redis.asyncio GETs gathered")
METRICS = ("metrics enabled", "<= 5% added to the L1-hit path")
LAG = ("invalidation lag between processes", "p99 <= 5 ms on loopback")
STAMPEDE = ("stampede, 1 cold key, 8 processes x 50 threads", "1 loader call in the fleet (the lease)")

# Every row of shared/BENCHMARKS.md's table, in its order, and how each part is measured.
# fmt: off
CHECKS = [
    Check(*LOCAL_GET, "vs cachebox.VTTLCache.get", "<=", 1.0,
          bench_ratio("get-hit", "LocalCache lru+ttl", "cachebox.VTTLCache")),
    Check(*LOCAL_GET, "vs dict.get", "<=", 1.3, bench_ratio("get-hit", "LocalCache lru+ttl", "dict.get")),
    Check(*LOCAL_SET, "vs cachebox.VTTLCache.insert", "<=", 1.0,
          bench_ratio("set-full", "LocalCache lru+ttl", "cachebox.VTTLCache")),
    Check(*MEMORY, "bytes per entry", "<=", 64.0, memory),
    Check(*S3FIFO, "LocalCache s3fifo - W-TinyLFU", ">=", -1.0,
          hit_ratio_gap("LocalCache s3fifo", "W-TinyLFU", absolute=False)),
    Check(*LRU, "abs(LocalCache lru - LRU)", "<=", 0.5, hit_ratio_gap("LocalCache lru", "LRU", absolute=True)),
    Check(*TIERED_L1, "vs dict.get, in loops", "<=", 1.4, loops_ratio("TieredCache.get L1 hit", "dict.get", "cpu")),
    Check(*TIERED_L1, "vs dict.get, pytest-benchmark", "<=", 1.4,
          bench_ratio("tiered-l1-hit", "TieredCache.get", "dict.get")),
    Check(*ASYNC_L1, "vs await of a coroutine doing dict.get", "<=", 1.5,
          loops_ratio("AsyncTieredCache.get L1 hit", "await coroutine dict.get", "cpu")),
    Check(*ASYNC_L1, "vs cashews client_side (<= 0.1x)", "<=", 0.1,
          bench_ratio("async-l1-hit", "AsyncTieredCache.get", "cashews client_side")),
    Check(*L2_HIT, "CPU", "<=", 1.10, loops_ratio("TieredCache.get L2 hit", "raw GET", "cpu")),
    Check(*L2_HIT, "wall", "<=", 1.05, loops_ratio("TieredCache.get L2 hit", "raw GET", "wall")),
    Check(*GET_MANY, "CPU", "<=", 1.15, loops_ratio("TieredCache.get_many(100)", "raw MGET(100)", "cpu")),
    Check(*WRITES, "set, CPU", "<=", 1.15, loops_ratio("TieredCache.set", "raw SET+PUBLISH", "cpu")),
    Check(*WRITES, "delete, CPU", "<=", 1.15, loops_ratio("TieredCache.delete", "raw DEL+PUBLISH", "cpu")),
    Check(*CONCURRENT, "Redis commands", "<=", 20, concurrency("commands")),
    Check(*CONCURRENT, "wall vs raw", "<=", 0.5, concurrency("wall")),
    Check(*METRICS, "collector registered, round-robin", "<=", 1.05, metrics_overhead),
    Check(*METRICS, "collector registered, pytest-benchmark", "<=", 1.05,
          bench_ratio("metrics-l1-hit", "TieredCache.get, collector registered", "TieredCache.get")),
    Check(*LAG, "p99", "<=", 5.0, invalidation_lag),
    Check(*STAMPEDE, "loader calls", "==", 1, stampede),
]
# fmt: on


def scrape_extra(inputs: Inputs) -> Figure | None:
    ours, base = "with CacheCollector", "prometheus_client alone"
    extra = [
        run["scrape-1m"][ours][0] - run["scrape-1m"][base][0] for run in _with_group(inputs, "scrape-1m", ours, base)
    ]
    if not extra:
        return None
    return Figure([e / 1e6 for e in extra], lambda ms: f"{ms:.2f} ms", "pytest-benchmark group scrape-1m")


def _with_group(inputs: Inputs, group: str, *names: str) -> list[dict]:
    return [run for run in inputs.bench_runs if all(name in run.get(group, {}) for name in names)]


# Figures with a target of their own outside BENCHMARKS.md's table.
# fmt: off
OTHER_CHECKS = [
    Check("scrape of a cache with 1M L1 entries (issue 5)", "< 1 ms beyond prometheus_client's own", "added",
          "<=", 1.0, scrape_extra),
    Check("LocalCache.get hit, s3fifo + TTL", "as LRU + TTL's", "vs cachebox.VTTLCache.get", "<=", 1.0,
          bench_ratio("get-hit", "LocalCache s3fifo+ttl", "cachebox.VTTLCache")),
    Check("LocalCache.get hit, s3fifo + TTL", "as LRU + TTL's", "vs dict.get", "<=", 1.3,
          bench_ratio("get-hit", "LocalCache s3fifo+ttl", "dict.get")),
    Check("LocalCache.set into a full cache, s3fifo + TTL", "as LRU + TTL's", "vs cachebox.VTTLCache.insert",
          "<=", 1.0, bench_ratio("set-full", "LocalCache s3fifo+ttl", "cachebox.VTTLCache")),
]
# fmt: on


def verdict(check: Check, figure: Figure | None) -> str:
    if figure is None:
        return NOT_MEASURED
    if figure.failed:
        return f"MISSED: {figure.failed}"
    value = statistics.median(figure.values)
    met = {"<=": value <= check.limit, ">=": value >= check.limit, "==": value == check.limit}[check.op]
    return "met" if met else "MISSED"


def row(check: Check, inputs: Inputs) -> tuple[str, str, str]:
    figure = check.measure(inputs)
    target = f"{check.what}: {check.target} — {check.label}"
    if figure is None:
        return target, f"{NOT_MEASURED} (no input for it)", NOT_MEASURED
    measured = f"{spread(figure.values, figure.unit)}; {figure.source}"
    if figure.extra:
        measured += f"; {figure.extra}"
    judged = verdict(check, figure)
    return target, measured, f"{judged} ({figure.caveat})" if figure.caveat else judged


def benchmarks_rows(path: str) -> list[tuple[str, str]]:
    """(what, target) of every row of the targets table of a BENCHMARKS.md."""
    rows, in_table = [], False
    for line in Path(path).read_text().splitlines():
        if line.startswith("## "):
            in_table = line.strip() == "## Targets"
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if (
            in_table
            and line.startswith("|")
            and len(cells) == 2
            and cells[0] not in ("what", "")
            and not set(cells[0]) <= {"-"}
        ):
            rows.append((cells[0], cells[1]))
    return rows


# -- machine and settings ------------------------------------------------------------------


def redis_version() -> str:
    try:
        from tiercache.testing import redis_server_binary

        out = subprocess.run([redis_server_binary(), "--version"], capture_output=True, text=True, timeout=10).stdout
    except Exception as exc:  # the report says what it could not find
        return f"unknown ({exc})"
    found = re.search(r"v=(\S+)", out)
    return found.group(1) if found else out.strip() or "unknown"


def machine(inputs: Inputs) -> list[str]:
    try:
        from tiercache.local import EXTENSION
    except ImportError:
        EXTENSION = None
    seen = {p.get("extension") for payloads in inputs.scripts.values() for p in payloads}
    if EXTENSION is not None:
        seen.add(EXTENSION)
    extension = {
        frozenset({True}): "compiled (tiercache._local_c)",
        frozenset({False}): "pure Python (not compiled)",
    }.get(frozenset(seen), "MIXED: some runs compiled, some pure Python")
    cpu, commit = "", ""
    if inputs.bench_meta:
        info = inputs.bench_meta[0].get("machine_info") or {}
        cpu = f" ({info.get('cpu', {}).get('brand_raw', '?')})"
        commit_info = inputs.bench_meta[0].get("commit_info") or {}
        if commit_info.get("id"):
            commit = f"{commit_info['id'][:10]}{' with uncommitted changes' if commit_info.get('dirty') else ''}"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return [
        f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}"
        + (f"; commit {commit}" if commit else ""),
        f"- Machine: {os.cpu_count()} cores{cpu}, {platform.system()} {platform.release()}; load average when "
        f"reported {load}",
        f"- Python {platform.python_version()} ({platform.python_implementation()}); redis-server {redis_version()} "
        "(a private server per script, loopback); tiercache L1 " + extension,
    ]


# What make bench runs each script with: smaller settings are flagged in the report.
FULL_SETTINGS = {
    "loops": {"rounds": 40},
    "metrics_overhead": {"rounds": 300},
    "concurrency": {"rounds": 30},
    "threads": {"seconds": 2.0},
    "invalidation_lag": {"rounds": 500},
    "stampede": {"processes": 8, "threads": 50, "repeats": 5},
    "memory": {"entries": 1_000_000},
    "hit_ratio": {"requests": 1_000_000, "objects": 100_000},
}


def settings(inputs: Inputs) -> list[str]:
    options = inputs.bench_meta[0]["options"] if inputs.bench_meta else {}
    lines = [
        f"- pytest-benchmark: {len(inputs.bench_runs)} run(s) of `pytest benchmarks --benchmark-only`"
        + (f" (max_time {options['max_time']} s, min_rounds {options['min_rounds']})" if options else "")
    ]
    small = [] if options.get("max_time", 1.0) >= 1.0 else [f"pytest-benchmark max_time {options['max_time']} s (1.0)"]
    for script, payloads in sorted(inputs.scripts.items()):
        args = payloads[-1]["args"]
        shown = " ".join(
            f"--{k.replace('_', '-')} {_arg(v)}" for k, v in args.items() if k not in ("json", "redis", "png", "case")
        )
        lines.append(f"- {script}.py {shown}".rstrip() + (f" ({len(payloads)} runs)" if len(payloads) > 1 else ""))
        small += [
            f"{script}.py --{name.replace('_', '-')} {args[name]} ({full})"
            for name, full in FULL_SETTINGS.get(script, {}).items()
            if name in args and args[name] < full
        ]
    if small:
        lines += ["", "**Settings smaller than make bench's (in brackets): not a real run.** " + "; ".join(small)]
    stamps = [p["mtime"] for payloads in inputs.scripts.values() for p in payloads]
    stamps += [
        datetime.datetime.fromisoformat(m["datetime"]).timestamp() for m in inputs.bench_meta if m.get("datetime")
    ]
    if len(stamps) > 1:
        lines += ["", f"The result files were written over {(max(stamps) - min(stamps)) / 60:.1f} min."]
    return lines


def _arg(value: object) -> str:
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


# -- the report ----------------------------------------------------------------------------


def table(rows: list[tuple[str, str, str]], head: str = "target") -> list[str]:
    lines = [f"| {head} | measured | verdict |", "|---|---|---|"]
    lines += [f"| {' | '.join(cell.replace('|', '/') for cell in cells)} |" for cells in rows]
    return lines


def ns_tables(inputs: Inputs) -> list[str]:
    lines = []
    groups = list(dict.fromkeys(group for run in inputs.bench_runs for group in run))
    for group in groups:
        lines += ["", f"**{group}** (ns per call, floor subtracted; median over runs [min-max]; raw in brackets)", ""]
        lines += ["| case | ns per call | raw |", "|---|---|---|"]
        names = {name for run in inputs.bench_runs for name in run.get(group, {})}
        medians = {name: statistics.median(cases[name][0] for cases in _having(inputs, group, name)) for name in names}
        for name in sorted(names, key=medians.get):
            nets = [cases[name][0] for cases in _having(inputs, group, name)]
            raws = [cases[name][1] for cases in _having(inputs, group, name)]
            span = f" [{min(nets):,.1f}-{max(nets):,.1f}]" if len(nets) > 1 else ""
            lines.append(f"| {name} | {statistics.median(nets):,.1f}{span} | ({statistics.median(raws):,.1f}) |")
    return lines


def build(inputs: Inputs, targets_md: str | None = None, plots: list[str] = ()) -> str:
    rows = [row(check, inputs) for check in CHECKS]
    notes = []
    if targets_md:
        known = {(c.what, c.target) for c in CHECKS}
        known_what = {c.what: c.target for c in CHECKS}
        for what, target in benchmarks_rows(targets_md):
            if (what, target) in known:
                continue
            if what in known_what:
                notes.append(
                    f'- The target of "{what}" in {targets_md} reads "{target}"; this report judges '
                    f'"{known_what[what]}": update benchmarks/report.py.'
                )
            else:
                rows.append(
                    (
                        f"{what}: {target}",
                        f"{NOT_MEASURED} (benchmarks/report.py does not know this target)",
                        NOT_MEASURED,
                    )
                )
    lines = ["# Benchmark report", "", *machine(inputs), "- Reproduce: `make bench` (~12 min on 2 cores; from a fresh checkout it also makes the "
             "virtualenv, builds the extension, installs the bench extra); this report: "
             "`python benchmarks/report.py benchmarks/results/*.json`", "", "Settings:", "", *settings(inputs)]  # fmt: skip
    lines += ["", "## Targets (shared/BENCHMARKS.md)", ""]
    lines += [
        "Ratios are ours / peer, taken within one run where both were measured side by side; the",
        "median across runs is judged, [min-max] over runs beside it.",
        "",
        *table(rows),
    ]
    if notes:
        lines += ["", *notes]
    missed = sum(1 for _, _, v in rows if v.startswith("MISSED"))
    absent = sum(1 for _, _, v in rows if v == NOT_MEASURED)
    lines += ["", f"{len(rows)} rows: {len(rows) - missed - absent} met, {missed} MISSED, {absent} not measured."]
    lines += ["", "## Other figures with a target", "", *table([row(c, inputs) for c in OTHER_CHECKS], "figure")]
    if inputs.bench_runs:
        lines += ["", "## ns per call by operation and library (pytest-benchmark)", *ns_tables(inputs)]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(lines) + "\n"


# -- plots ---------------------------------------------------------------------------------

OURS = ("LocalCache", "TieredCache", "AsyncTieredCache", "its LocalCache", "CacheCollector", "with CacheCollector")


def plot_latency(inputs: Inputs, path: str, plt) -> bool:
    """(a) ns per call by operation (one panel per pytest-benchmark group) and library."""
    groups = list(dict.fromkeys(group for run in inputs.bench_runs for group in run))
    if not groups:
        return False
    columns = min(3, len(groups))
    rows = -(-len(groups) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6.5 * columns, 4.2 * rows), squeeze=False)
    for ax, group in zip(axes.flat, groups):
        names = {name for run in inputs.bench_runs for name in run.get(group, {})}
        figures = {n: [max(cases[n][0], 1.0) for cases in _having(inputs, group, n)] for n in names}
        order = sorted(names, key=lambda n: statistics.median(figures[n]))
        middles = [statistics.median(figures[n]) for n in order]
        lows = [m - min(figures[n]) for m, n in zip(middles, order)]
        highs = [max(figures[n]) - m for m, n in zip(middles, order)]
        colors = ["tab:orange" if n.startswith(OURS) else "tab:blue" for n in order]
        ax.barh(order, middles, xerr=[lows, highs], color=colors, capsize=2)
        for y, (value, high) in enumerate(zip(middles, highs)):  # the figure past its whisker
            ax.text((value + high) * 1.12, y, f"{value:,.0f}", va="center", fontsize=7)
        ax.set_xscale("log")
        ax.set_xlim(min(middles) / 10, max(max(middles) * 10, 10))  # a decade either side
        ax.set_title(group)
        ax.set_xlabel("ns per call (median over runs, floor subtracted, log)")
        ax.tick_params(axis="y", labelsize=8)
    for ax in list(axes.flat)[len(groups) :]:
        ax.axis("off")
    fig.suptitle("Latency by operation and library (orange: tiercache; bars: median, whiskers: range over runs)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_hit_ratio(inputs: Inputs, path: str, plt) -> bool:
    """(b) hit ratio by cache size and policy, one panel per zipf alpha."""
    runs = inputs.script("hit_ratio")
    if not runs:
        return False
    traces = runs[-1]["results"]
    alphas = sorted({t["alpha"] for t in traces})
    fig, axes = plt.subplots(1, len(alphas), figsize=(6 * len(alphas), 4.5), squeeze=False)
    colors = {"LRU": "tab:blue", "S3FIFO": "tab:orange", "W-TinyLFU": "tab:purple"}
    colors |= {"LocalCache lru": "tab:blue", "LocalCache s3fifo": "tab:orange"}
    for ax, alpha in zip(axes.flat, alphas):
        mine = sorted((t for t in traces if t["alpha"] == alpha), key=lambda t: t["fraction"])
        sizes = [t["fraction"] * 100 for t in mine]
        for name in dict.fromkeys(name for t in mine for name in t["ratios"]):
            ratios = [t["ratios"][name] for t in mine]
            if name.startswith("LocalCache"):
                ax.plot(sizes, ratios, "-", marker="o", color=colors.get(name), label=name)
            else:  # the references: wide and pale under ours, which may lie exactly on them
                ax.plot(sizes, ratios, "--", marker="s", color=colors.get(name), label=f"libcachesim {name}",
                        linewidth=4, markersize=8, alpha=0.35)  # fmt: skip
        ax.set_xscale("log")
        ax.set_xticks(sizes)
        ax.xaxis.set_major_formatter(lambda x, _: f"{x:g}%")
        ax.minorticks_off()
        ax.set_xlabel("cache size, % of objects (log)")
        ax.set_ylabel("hit ratio")
        ax.set_title(f"zipf alpha {alpha}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    args = runs[-1]["args"]
    fig.suptitle(f"Hit ratio by cache size and policy ({args['requests']:,} requests over {args['objects']:,} objects)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _median_levels(payloads: list[dict], side: str, key: str) -> dict[int, float]:
    levels: dict[int, list[float]] = defaultdict(list)
    for payload in payloads:
        results = payload["results"][side] if side else payload["results"]
        for level, figures in results.items():
            levels[int(level)].append(figures[key])
    return {level: statistics.median(values) for level, values in sorted(levels.items())}


def plot_concurrency(inputs: Inputs, path: str, plt) -> bool:
    """(c) Redis-path latency per call and throughput by concurrency: async tasks
    (concurrency.py) and threads (threads.py), ours vs raw redis-py."""
    bursts, threads = inputs.script("concurrency"), inputs.script("threads")
    if not bursts and not threads:
        return False
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    if bursts:
        for side, label in (("tiered", "AsyncTieredCache.get (L2 hit)"), ("raw", "redis.asyncio GET + unpackb")):
            walls = _median_levels(bursts, side, "read_wall")
            axes[0][0].plot(list(walls), [w * 1e3 for w in walls.values()], marker="o", label=label)
            axes[0][1].plot(list(walls), [n / w for n, w in walls.items()], marker="o", label=label)
    if threads:
        for key, label, style in (
            ("tiered", "TieredCache.get (L2 hit, L1 off)", "-"),
            ("raw", "redis-py GET + unpackb", "-"),
            ("mget_bound", "bound: MGET of 32", ":"),
        ):
            rates = _median_levels(threads, "", key)
            axes[1][0].plot(list(rates), [n / r * 1e6 for n, r in rates.items()], style, marker="o", label=label)
            axes[1][1].plot(list(rates), list(rates.values()), style, marker="o", label=label)
    titles = (
        ("async tasks: latency of a call (wall of the gathered burst)", "ms", "concurrent tasks"),
        ("async tasks: throughput", "gets / s", "concurrent tasks"),
        ("threads: latency per call (threads / throughput)", "us", "threads"),
        ("threads: throughput", "gets / s", "threads"),
    )
    for ax, (title, unit, xlabel), has in zip(axes.flat, titles, (bursts, bursts, threads, threads)):
        ax.set_title(title, fontsize=10)
        if not has:
            ax.text(0.5, 0.5, NOT_MEASURED, ha="center", va="center", transform=ax.transAxes)
            continue
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"{xlabel} (log)")
        ax.set_ylabel(unit)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Redis path: latency and throughput by concurrency, tiercache vs raw redis-py")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_all(inputs: Inputs, out: Path, latency_png: str | None = None) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plots")
        return []
    written = []
    for draw, path in (
        (plot_latency, latency_png or str(out / "latency.png")),
        (plot_hit_ratio, str(out / "hit_ratio.png")),
        (plot_concurrency, str(out / "concurrency.png")),
    ):
        if draw(inputs, path, plt):
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="*", help="pytest-benchmark runs and the scripts' --json files")
    parser.add_argument("--out", default=str(RESULTS), help="where REPORT.md and the plots go (default: %(default)s)")
    parser.add_argument("--targets", help="shared/BENCHMARKS.md, to check its rows against the ones known here")
    parser.add_argument("--png", help="write the latency plot here instead of OUT/latency.png")
    args = parser.parse_args(argv)
    inputs = load(args.json)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plots = plot_all(inputs, out, args.png)
    report = build(inputs, args.targets, plots)
    (out / "REPORT.md").write_text(report)
    print(report)
    print(f"written: {out / 'REPORT.md'}" + "".join(f", {p}" for p in plots))
    return report


if __name__ == "__main__":
    main()

"""The operators' files: ops/grafana/tiercache-dashboard.json and ops/prometheus/tiercache-alerts.yml.

Real caches on private redis-servers are driven into a healthy state and into each bad state
(Redis killed, Redis stalled while invalidations are in flight, a write-through Redis
missed), and scraped at the start and end of each phase. Every alert's expression is then
evaluated over each phase's two scrapes by tests/promql_subset.py: it must give no series
while the cache is healthy and a series for the sick cache (never the healthy one beside it)
in its bad state. Where promtool is installed, the real rules file also runs through
`promtool test rules` on series built from the same scrapes (each phase's real increments
repeated minute after minute), so Prometheus's own engine checks the expressions and their
`for:`; and every dashboard query must pass promtool's parser and return data from the scrapes.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import re
import shutil
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from tiercache import TieredCache
from tiercache.testing import RedisServer

from . import promql_subset as promql
from .conftest import heard_everything, wait_until

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "ops" / "prometheus" / "tiercache-alerts.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "tiercache-dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")

ALERTS = {
    "TiercacheL1NotServing",
    "TiercacheSubscriberDisconnected",
    "TiercacheBreakerOpen",
    "TiercacheL2ErrorRate",
    "TiercacheInvalidationLagHigh",
    "TiercacheRepairsPending",
}
TARGET = {"job": "app", "instance": "app-1:9100"}  # the labels Prometheus adds to a scrape
FAST_FAIL = {
    "redis_options": {"socket_timeout": 0.2, "socket_connect_timeout": 0.2},
    "breaker_threshold": 2,
    "breaker_reset": 0.2,
}
_keys = itertools.count()


def load_rules():
    with RULES.open() as f:
        document = yaml.safe_load(f)
    return [rule for group in document["groups"] for rule in group["rules"]]


def load_dashboard():
    with DASHBOARD.open() as f:
        return json.load(f)


# -- driving real caches ---------------------------------------------------------------------


def scrape(registry):
    return promql.Scrape.parse(generate_latest(registry).decode(), time.monotonic(), TARGET)


@dataclass
class Phase:
    name: str
    start: promql.Scrape
    end: promql.Scrape
    firing: frozenset[str]  # the alerts the sick cache must raise in this phase, none for the other


@dataclass
class Scenario:
    sick: str  # the cache driven into bad states
    healthy: str  # a cache registered beside it that stays healthy
    phases: list[Phase]


def traffic(cache, rounds=15):
    """Writes, L1 hits, L2 misses and loads."""
    for _ in range(rounds):
        key = f"k{next(_keys)}"
        assert cache.set(key, key)
        assert cache.get(key) == key
        assert cache.get(key + "-absent") is None
    assert cache.get_or_load(f"loaded{next(_keys)}", str.upper) is not None


def bystander(stack, url, registry):
    cache = stack.enter_context(TieredCache.from_url(url, name=f"ops-{uuid.uuid4().hex[:8]}"))
    assert cache.wait_ready(10)
    cache.register_metrics(registry)
    return cache


def healthy_start(stack, server, bystander_url, name, **options):
    """The cache to make sick (on server) and a healthy bystander, registered in one
    registry, and the scrapes before and after a healthy phase of traffic on both."""
    registry = CollectorRegistry()
    sick = stack.enter_context(TieredCache.from_url(server.url, name=name, **options, **FAST_FAIL))
    assert sick.wait_ready(10)
    sick.register_metrics(registry)
    other = bystander(stack, bystander_url, registry)
    before = scrape(registry)
    traffic(sick)
    traffic(other)
    return registry, sick, other, before, scrape(registry)


def drive_outage(bystander_url):
    """Redis killed under a cache with traffic, then started again."""
    with RedisServer() as server, contextlib.ExitStack() as stack:
        registry, sick, other, s0, s1 = healthy_start(stack, server, bystander_url, "orders")

        server.kill()
        assert wait_until(lambda: sick.stats()["subscriber_connected"] is False)
        for key in ("a", "b", "c"):
            assert sick.get(key) is None  # two failures open the breaker; the third is refused
        assert sick.stats()["breaker"] == "open"
        s2 = scrape(registry)
        for _ in range(3):  # traffic goes on: refused, and a probe failing every breaker_reset
            errors = sick.stats()["l2_errors"]
            assert wait_until(lambda: sick.get("a") is None and sick.stats()["l2_errors"] > errors)
        traffic(other)
        s3 = scrape(registry)
        stats = sick.stats()
        assert stats["breaker"] == "open" and not stats["l1_serving"] and not stats["subscriber_connected"]

        server.start()
        assert sick.wait_ready(10)
        # Redis is back, but the breaker closes only on a call: an idle process shows it
        # half-open (its next call would probe), and must not alert for it.
        assert wait_until(lambda: sick.stats()["breaker"] == "half_open") and sick.stats()["l1_serving"]
        s4 = scrape(registry)
        traffic(other)
        s5 = scrape(registry)
        assert sick.stats()["breaker"] == "half_open"

        assert wait_until(lambda: sick.set("a", 1))  # the breaker's probe succeeds: closed
        s6 = scrape(registry)
        traffic(sick)
        traffic(other)
        s7 = scrape(registry)
        stats = sick.stats()
        assert stats["breaker"] == "closed" and stats["l1_serving"] and stats["subscriber_connected"]
        outage = {
            "TiercacheL1NotServing",
            "TiercacheSubscriberDisconnected",
            "TiercacheBreakerOpen",
            "TiercacheL2ErrorRate",
        }
        return Scenario(
            sick.name,
            other.name,
            [
                Phase("healthy", s0, s1, frozenset()),
                Phase("redis down", s2, s3, frozenset(outage)),
                Phase("redis back, idle", s4, s5, frozenset()),
                Phase("redis back", s6, s7, frozenset()),
            ],
        )


def _slow_messages(cache, above=0.05):
    lag = cache.stats()["invalidation_lag"]
    return lag["count"] - lag["buckets"][above]


def drive_invalidation_lag(bystander_url):
    """Redis stalls (SIGSTOP) while a write and its invalidation are in flight, so another
    process applies the message late, then runs smoothly again."""
    with RedisServer() as server, contextlib.ExitStack() as stack:
        registry = CollectorRegistry()
        reader = stack.enter_context(TieredCache.from_url(server.url, name="users"))
        writer = stack.enter_context(
            TieredCache.from_url(server.url, name="users", redis_options={"socket_timeout": 5.0})
        )
        assert reader.wait_ready(10) and writer.wait_ready(10)
        reader.register_metrics(registry)  # the writer is another process: not scraped here
        other = bystander(stack, bystander_url, registry)

        def writes(count):
            for i in range(count):
                assert writer.set(f"w{i}", i)
            assert heard_everything(writer, reader)
            assert reader.get("w0") == 0

        # Enough messages that a rare slow one (a busy machine) stays above the 99th percentile.
        s0 = scrape(registry)
        writes(300)
        traffic(other)
        s1 = scrape(registry)

        def stalled_write(n):
            done = []
            server.pause()
            try:
                thread = threading.Thread(target=lambda: done.append(writer.set(f"slow{n}", n)))
                thread.start()
                time.sleep(0.2)  # the stall: Redis answers nothing meanwhile
            finally:
                server.resume()
            thread.join(10)
            assert done == [True]

        # Until three messages were late: a write whose thread only started as Redis resumed is not.
        for n in range(10):
            if _slow_messages(reader) >= 3:
                break
            stalled_write(n)
            writes(10)
        assert _slow_messages(reader) >= 3
        s2 = scrape(registry)

        s3 = scrape(registry)
        writes(300)
        s4 = scrape(registry)
        return Scenario(
            reader.name,
            other.name,
            [
                Phase("healthy", s0, s1, frozenset()),
                Phase("redis stalls", s1, s2, frozenset({"TiercacheInvalidationLagHigh"})),
                Phase("smooth again", s3, s4, frozenset()),
            ],
        )


def drive_repairs(bystander_url):
    """A write-through whose Redis write times out, then the process stays idle: the key waits
    for its repair (Redis may serve the old value to others), until the next operation."""
    database = {}

    def write_row(key, value):
        database[key] = value

    with RedisServer() as server, contextlib.ExitStack() as stack:
        registry, sick, other, s0, s1 = healthy_start(stack, server, bystander_url, "accounts", writer=write_row)

        server.pause()
        try:
            assert sick.set("balance", 2) is False  # the database has it, Redis maybe not
        finally:
            server.resume()
        assert database["balance"] == 2 and sick.stats()["repairs_pending"] == 1
        s2 = scrape(registry)
        traffic(other)  # the sick cache is idle: nothing repairs the key
        s3 = scrape(registry)
        assert sick.stats()["repairs_pending"] == 1

        assert sick.get("balance") is None  # an operation: it repairs first, deleting the key in Redis
        stats = sick.stats()
        assert (stats["repairs_pending"], stats["repairs_done"]) == (0, 1)
        s4 = scrape(registry)
        traffic(sick)
        s5 = scrape(registry)
        return Scenario(
            sick.name,
            other.name,
            [
                Phase("healthy", s0, s1, frozenset()),
                Phase("write missed redis", s2, s3, frozenset({"TiercacheRepairsPending"})),
                Phase("repaired", s4, s5, frozenset()),
            ],
        )


DRIVERS = {"outage": drive_outage, "invalidation_lag": drive_invalidation_lag, "repairs": drive_repairs}


@pytest.fixture(scope="module")
def scenarios(redis_server):
    return {name: drive(redis_server.url) for name, drive in DRIVERS.items()}


@pytest.fixture(scope="module")
def exposed(scenarios):
    """Every metric name tiercache exposes, with its kind, from the real scrapes."""
    names = {}
    for scenario in scenarios.values():
        for phase in scenario.phases:
            names.update(phase.end.exposed_names())
    return names


# -- the rules file ----------------------------------------------------------------------------

DURATION = re.compile(r"^(\d+)([smh])$")


def seconds(duration):
    number, unit = DURATION.match(duration).groups()
    return int(number) * {"s": 1, "m": 60, "h": 3600}[unit]


def test_rules_file_shape():
    rules = load_rules()
    assert {rule["alert"] for rule in rules} == ALERTS and len(rules) == len(ALERTS)
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert seconds(rule["for"]) >= 120, rule["alert"]  # no alert on one bad evaluation
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert set(rule["annotations"]) == {"summary", "description"}
        for text in rule["annotations"].values():
            assert "{{ $labels.cache }}" in text
            # only label substitutions, which the promtool test below renders itself
            assert not re.sub(r"\{\{ \$labels\.\w+ \}\}", "", text).count("{{")


def test_rules_name_only_exposed_metrics(exposed):
    for rule in load_rules():
        check_query(rule["expr"], exposed)


def check_query(expr, exposed):
    """Every selector names an exposed metric and labels it has; rate() and increase() take
    counters only, histogram_quantile() buckets only."""
    names_in_text = set(re.findall(r"\btiercache_\w+", expr))
    selectors = list(promql.walk(promql.parse(expr)))
    assert names_in_text == {selector.name for selector, _ in selectors}
    for selector, function in selectors:
        assert selector.name in exposed, f"{selector.name} is not a metric tiercache exposes"
        kind = exposed[selector.name]
        if function in ("rate", "increase"):
            assert kind in ("counter", "bucket"), f"{function}() of {selector.name}, a {kind}"
        else:
            assert kind == "gauge", f"{selector.name} ({kind}) read without rate()"
        if kind == "bucket":
            assert "histogram_quantile" in expr


@needs_promtool
def test_promtool_check_rules():
    done = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in done.stdout


# -- each alert in its bad state, and in no other -------------------------------------------


def evaluate(expr, phase):
    return promql.Evaluator(phase.start, phase.end).query(expr)


def plain(labels):
    return {k: v for k, v in labels if k != promql.NAME}


@pytest.mark.parametrize("name", DRIVERS)
def test_each_alert_fires_in_its_bad_state_only(scenarios, name):
    scenario = scenarios[name]
    for phase in scenario.phases:
        firing = set()
        for rule in load_rules():
            result = evaluate(rule["expr"], phase)
            if result:
                firing.add(rule["alert"])
                for labels in result:
                    # the sick cache alone, with the labels its annotations name
                    assert plain(labels) == {"cache": scenario.sick, **TARGET}, (rule["alert"], phase.name)
        assert firing == phase.firing, phase.name


def render(template, labels):
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), template)


STEPS = 20  # synthetic minutes each phase lasts: longer than every rule's window and `for:`


def synthetic_series(phases):
    """Series for promtool, one value a minute: each phase's real increments (counters) and
    end values (gauges) repeated STEPS times, one minute of transition between phases.
    Returns ({series: values}, [(phase, first minute, last minute)])."""
    segments = [(phases[0].start, phases[0].end, STEPS)]
    marks = [(phases[0], 0, STEPS)]
    minute = STEPS
    for before, phase in itertools.pairwise(phases):
        segments += [(before.end, phase.start, 1), (phase.start, phase.end, STEPS)]
        marks.append((phase, minute + 1, minute + 1 + STEPS))
        minute += 1 + STEPS
    kinds = {}
    for phase in phases:
        kinds.update(phase.end.exposed_names())
    keys = {key for phase in phases for scrape in (phase.start, phase.end) for key in scrape.samples}
    series = {}
    for key in keys:
        counter = kinds[dict(key)[promql.NAME]] in ("counter", "bucket")
        first = segments[0][0].samples.get(key)
        values = ["_" if first is None else repr(first)]
        offset = 0.0
        for a, b, steps in segments:
            then, now = a.samples.get(key), b.samples.get(key)
            if now is None:
                assert then is None, f"{dict(key)} disappeared"
                values += ["_"] * steps
            elif then is None:
                values += ["_"] * (steps - 1) + [repr(now + offset)]
            elif counter:
                assert now >= then, f"{dict(key)} went down"
                values += [repr(then + offset + (now - then) * step) for step in range(1, steps + 1)]
                offset += (now - then) * (steps - 1)
            else:
                values += [repr(now)] * steps
        labels = plain(key)
        body = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        series[f"{dict(key)[promql.NAME]}{{{body}}}"] = " ".join(values)
    return series, marks


@needs_promtool
@pytest.mark.parametrize("name", DRIVERS)
def test_promtool_unit_test_from_real_scrapes(scenarios, name, tmp_path):
    """The real rules file, in Prometheus's engine, over series built from the scrapes: at
    the end of each phase exactly its alerts are firing, with the labels and annotations
    the evaluator above predicts; one minute into a bad phase none is yet (`for:`)."""
    scenario = scenarios[name]
    rules = load_rules()
    series, marks = synthetic_series(scenario.phases)
    cases = []
    for index, (phase, first, last) in enumerate(marks):
        for rule in rules:
            expected = []
            if rule["alert"] in phase.firing:
                for labels in evaluate(rule["expr"], phase):
                    labels = plain(labels)
                    expected.append(
                        {
                            "exp_labels": {**labels, **rule["labels"]},
                            "exp_annotations": {k: render(v, labels) for k, v in rule["annotations"].items()},
                        }
                    )
                assert expected
            cases.append({"eval_time": f"{last}m", "alertname": rule["alert"], "exp_alerts": expected})
            if index and not marks[index - 1][0].firing:
                cases.append({"eval_time": f"{first + 1}m", "alertname": rule["alert"], "exp_alerts": []})
    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in sorted(series.items())],
                "alert_rule_test": cases,
            }
        ],
    }
    path = tmp_path / "tiercache-alerts.test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    done = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


# -- the dashboard ------------------------------------------------------------------------------


def panels(dashboard):
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def targets(dashboard):
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield panel, target


def concrete(expr):
    """A dashboard query as Grafana sends it with every variable at All."""
    expr = expr.replace("$__rate_interval", "5m")
    expr = re.sub(r'=~"\$\{?(\w+)\}?"', '=~".*"', expr)
    assert "$" not in expr, f"a variable used outside a regex matcher: {expr}"
    return expr


def test_dashboard_shape():
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert list(variables) == ["datasource", "job", "instance", "cache"]
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    source = {"type": "prometheus", "uid": "${datasource}"}
    defined = ["datasource"]
    for name in ("job", "instance", "cache"):
        variable = variables[name]
        assert variable["type"] == "query" and variable["datasource"] == source
        # multi-valued with All: Grafana joins the values as a regex, so queries match with =~
        assert variable["multi"] and variable["includeAll"] and variable["allValue"] == ".*"
        query = variable["query"]["query"]
        assert variable["definition"] == query
        match = re.fullmatch(r"label_values\((tiercache_requests_total)(\{.*\})?, (\w+)\)", query)
        assert match and match.group(3) == name, query
        # it only narrows by variables defined before it
        assert set(re.findall(r"\$(\w+)", match.group(2) or "")) <= set(defined), query
        defined.append(name)

    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))
    boxes = []
    for panel in panels(dashboard):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not any(cells & other for other in boxes), f"panel {panel['title']!r} overlaps another"
        boxes.append(cells)
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == source and panel["targets"] and panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["datasource"] == source
            assert set(re.findall(r"\$(\w+)", target["expr"])) <= {*defined, "__rate_interval"}
            concrete(target["expr"])

    titles = " | ".join(panel["title"] for panel in panels(dashboard))
    for wanted in (
        "Hit ratio",
        "L2 latency",
        "Load duration",
        "L2 errors",
        "breaker",
        "subscriber",
        "Invalidation lag",
        "Invalidations",
        "flushes",
        "fills dropped",
        "L1 entries vs capacity",
        "evictions",
        "Repairs pending",
        "Failovers",
    ):
        assert wanted.lower() in titles.lower(), wanted


def test_dashboard_queries_name_exposed_metrics_and_return_data(scenarios, exposed):
    """Each query reads existing metrics and, over some phase of the scenarios, returns
    series with a value and the labels its legend names."""
    windows = [phase for scenario in scenarios.values() for phase in scenario.phases]
    for panel, target in targets(load_dashboard()):
        expr = concrete(target["expr"])
        check_query(expr, exposed)
        legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target["legendFormat"]))
        answered = False
        for phase in windows:
            for labels, value in evaluate(expr, phase).items():
                assert legend <= set(plain(labels)), (panel["title"], target["legendFormat"])
                answered = answered or not math.isnan(value)
        assert answered, f"{panel['title']}: {target['expr']} returned no value in any phase"


@needs_promtool
def test_dashboard_queries_pass_promtool(tmp_path):
    rules = [
        {
            "record": f"tiercache:dashboard_panel{panel['id']}_{target['refId'].lower()}",
            "expr": concrete(target["expr"]),
        }
        for panel, target in targets(load_dashboard())
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# -- the evaluator itself ----------------------------------------------------------------------


def test_evaluator_on_known_figures():
    before = promql.Scrape.parse(
        "\n".join(
            [
                'a_total{cache="x"} 10',
                'a_total{cache="y"} 0',
                'b_total{cache="x"} 20',
                'b_total{cache="y"} 0',
                'h_bucket{cache="x",le="0.1"} 0',
                'h_bucket{cache="x",le="1.0"} 0',
                'h_bucket{cache="x",le="+Inf"} 0',
                'g{cache="x"} 1',
            ]
        ),
        at=100.0,
    )
    after = promql.Scrape.parse(
        "\n".join(
            [
                'a_total{cache="x"} 13',
                'a_total{cache="y"} 0',
                'b_total{cache="x"} 32',
                'b_total{cache="y"} 0',
                'h_bucket{cache="x",le="0.1"} 90',
                'h_bucket{cache="x",le="1.0"} 100',
                'h_bucket{cache="x",le="+Inf"} 100',
                'g{cache="x"} 2',
            ]
        ),
        at=110.0,
    )
    ev = promql.Evaluator(before, after)
    x = frozenset({("cache", "x")})
    y = frozenset({("cache", "y")})
    assert ev.query("rate(a_total[5m])") == {x: 0.3, y: 0.0}
    assert ev.query("increase(b_total[5m])") == {x: 12.0, y: 0.0}
    ratio = ev.query("sum by (cache) (rate(a_total[5m])) / sum by (cache) (rate(b_total[5m]))")
    assert ratio[x] == pytest.approx(0.25) and math.isnan(ratio[y])  # 0/0: NaN, never above a threshold
    assert ev.query("sum by (cache) (rate(a_total[5m])) / sum by (cache) (rate(b_total[5m])) > 0.05") == {x: 0.25}
    # the 95th of 100 observations, 90 of them up to 0.1: halfway through the (0.1, 1] bucket
    assert ev.query("histogram_quantile(0.95, rate(h_bucket[1m]))")[x] == pytest.approx(0.55)
    assert ev.query("histogram_quantile(0.5, rate(h_bucket[1m]))")[x] == pytest.approx(0.1 * 50 / 90)
    assert ev.query('g > 0 and increase(a_total{cache="x"}[5m]) > 0') == {x | {("__name__", "g")}: 2.0}
    assert ev.query("g > 0 unless increase(a_total[5m]) > 0") == {}
    with pytest.raises(SyntaxError):
        promql.parse("irate(a_total[5m])")  # outside the subset: refused, not half evaluated

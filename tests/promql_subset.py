"""The part of PromQL that ops/prometheus/tiercache-alerts.yml and the Grafana dashboard use,
evaluated over two scrapes of real caches (tests/test_ops.py).

Supported, with Prometheus's meaning: number literals; selectors with =, !=, =~, !~ matchers
and a range ([5m]); rate() and increase() of a range selector; sum, max, min, count and avg
with by (...) or without (...); histogram_quantile(); + - * / between vectors (one-to-one on
every label but the metric name) or with a number; == != > < >= <= against a number (a
filter; NaN is never true); and, or, unless. Anything else is a syntax error here, so a
rule that needs more fails its test instead of being half evaluated.

What differs from Prometheus, on purpose: a range vector is the window between the two
scrapes given, whatever its written duration (the rules' [5m] and Grafana's
$__rate_interval alike), and rate() is the plain difference over that window, without
Prometheus's extrapolation to the window's edges. The ratios and `> 0` tests the rules
make do not depend on either. Instant selectors read the later scrape.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]  # with __name__ for a selected series
NAME = "__name__"


@dataclass
class Scrape:
    """The samples of one scrape: {labels (with __name__): value}, taken at `at` seconds."""

    at: float
    samples: dict[Labels, float]
    families: dict[str, str] = field(default_factory=dict)  # family name -> type

    @classmethod
    def parse(cls, text: str, at: float, extra_labels: dict[str, str] | None = None) -> Scrape:
        """Parse the text exposition format; extra_labels are added to every sample, as
        Prometheus adds its target labels (job, instance)."""
        samples: dict[Labels, float] = {}
        families: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            families[family.name] = family.type
            for sample in family.samples:
                labels = {**sample.labels, **(extra_labels or {}), NAME: sample.name}
                samples[frozenset(labels.items())] = float(sample.value)
        return cls(at, samples, families)

    def exposed_names(self) -> dict[str, str]:
        """Every metric name a query may select, with the kind of its samples: counter
        (X_total), gauge (X), histogram parts (X_bucket, X_count, X_sum)."""
        names: dict[str, str] = {}
        for family, kind in self.families.items():
            if kind == "counter":
                names[family + "_total"] = "counter"
            elif kind == "histogram":
                names[family + "_bucket"] = "bucket"
                names[family + "_count"] = "counter"
                names[family + "_sum"] = "counter"
            else:
                names[family] = kind
        return names


# -- syntax ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Number:
    value: float


@dataclass(frozen=True)
class Selector:
    name: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, op, value)
    range: str | None = None


@dataclass(frozen=True)
class Call:
    function: str
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Aggregate:
    op: str
    grouping: str  # "by" or "without"
    labels: tuple[str, ...]
    expr: Node


@dataclass(frozen=True)
class Binary:
    op: str
    lhs: Node
    rhs: Node


Node = Number | Selector | Call | Aggregate | Binary

AGGREGATIONS = ("sum", "max", "min", "count", "avg")
FUNCTIONS = {"rate": 1, "increase": 1, "histogram_quantile": 2}
COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")
ARITHMETIC = ("+", "-", "*", "/")
SET_OPS = ("and", "or", "unless")

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<number>\d+(?:\.\d+)?(?:e[+-]?\d+)?(?![a-zA-Z_]))
      | (?P<duration>\d+[smhdwy])
      | (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
      | (?P<op>==|!=|>=|<=|=~|!~|[-+*/<>=(){}\[\],])
    )""",
    re.VERBOSE,
)


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens, at = [], 0
    text = text.strip()
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None or match.end() == at:
            raise SyntaxError(f"cannot read {text[at : at + 20]!r} in {text!r}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        at = match.end()
        while at < len(text) and text[at].isspace():
            at += 1
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.at = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self, value: str | None = None, kind: str | None = None) -> str:
        token = self.peek()
        if token is None or (value is not None and token[1] != value) or (kind is not None and token[0] != kind):
            raise SyntaxError(f"expected {value or kind} at token {self.at} of {self.text!r}, got {token}")
        self.at += 1
        return token[1]

    def at_value(self, *values: str) -> bool:
        token = self.peek()
        return token is not None and token[1] in values

    def parse(self) -> Node:
        node = self.expr()
        if self.peek() is not None:
            raise SyntaxError(f"unexpected {self.peek()} in {self.text!r}")
        return node

    # precedence, lowest first: or; and unless; comparisons; + -; * /
    def expr(self) -> Node:
        node = self.and_expr()
        while self.at_value("or"):
            node = Binary(self.take(), node, self.and_expr())
        return node

    def and_expr(self) -> Node:
        node = self.comparison()
        while self.at_value("and", "unless"):
            node = Binary(self.take(), node, self.comparison())
        return node

    def comparison(self) -> Node:
        node = self.additive()
        while self.at_value(*COMPARISONS):
            node = Binary(self.take(), node, self.additive())
        return node

    def additive(self) -> Node:
        node = self.multiplicative()
        while self.at_value("+", "-"):
            node = Binary(self.take(), node, self.multiplicative())
        return node

    def multiplicative(self) -> Node:
        node = self.primary()
        while self.at_value("*", "/"):
            node = Binary(self.take(), node, self.primary())
        return node

    def primary(self) -> Node:
        token = self.peek()
        if token is None:
            raise SyntaxError(f"unexpected end of {self.text!r}")
        kind, value = token
        if kind == "number":
            self.take()
            return Number(float(value))
        if value == "(":
            self.take("(")
            node = self.expr()
            self.take(")")
            return node
        if kind != "ident":
            raise SyntaxError(f"unexpected {value!r} in {self.text!r}")
        self.take()
        if value in AGGREGATIONS:
            return self.aggregation(value)
        if self.at_value("("):
            if value not in FUNCTIONS:
                raise SyntaxError(f"function {value}() is not in the supported subset")
            self.take("(")
            args = [self.expr()]
            while self.at_value(","):
                self.take(",")
                args.append(self.expr())
            self.take(")")
            if len(args) != FUNCTIONS[value]:
                raise SyntaxError(f"{value}() takes {FUNCTIONS[value]} arguments")
            return Call(value, tuple(args))
        return self.selector(value)

    def aggregation(self, op: str) -> Node:
        grouping, labels = "by", ()  # no clause: over every label
        if self.at_value("by", "without"):
            grouping, labels = self.take(), self.label_list()
        self.take("(")
        inner = self.expr()
        self.take(")")
        if self.at_value("by", "without"):
            grouping, labels = self.take(), self.label_list()
        return Aggregate(op, grouping, labels, inner)

    def label_list(self) -> tuple[str, ...]:
        self.take("(")
        labels = []
        while not self.at_value(")"):
            labels.append(self.take(kind="ident"))
            if self.at_value(","):
                self.take(",")
        self.take(")")
        return tuple(labels)

    def selector(self, name: str) -> Selector:
        matchers = []
        if self.at_value("{"):
            self.take("{")
            while not self.at_value("}"):
                label = self.take(kind="ident")
                token = self.peek()
                if token is None or token[1] not in ("=", "!=", "=~", "!~"):
                    raise SyntaxError(f"expected a matcher after {label} in {self.text!r}")
                op = self.take()
                value = self.take(kind="string")
                matchers.append((label, op, _unquote(value)))
                if self.at_value(","):
                    self.take(",")
            self.take("}")
        window = None
        if self.at_value("["):
            self.take("[")
            window = self.take(kind="duration")
            self.take("]")
        return Selector(name, tuple(matchers), window)


def _unquote(literal: str) -> str:
    return re.sub(r"\\(.)", r"\1", literal[1:-1])


def parse(text: str) -> Node:
    """The syntax tree of a query; SyntaxError if it leaves the supported subset."""
    return _Parser(text).parse()


def walk(node: Node, context: str | None = None) -> Iterator[tuple[Selector, str | None]]:
    """Every selector of a query, with the function it is the argument of (or None)."""
    if isinstance(node, Selector):
        yield node, context
    elif isinstance(node, Call):
        for arg in node.args:
            yield from walk(arg, node.function)
    elif isinstance(node, Aggregate):
        yield from walk(node.expr, None)
    elif isinstance(node, Binary):
        yield from walk(node.lhs, None)
        yield from walk(node.rhs, None)


# -- evaluation --------------------------------------------------------------------------------

Vector = dict[Labels, float]
Value = float | Vector


def _matches(labels: dict[str, str], matchers: tuple[tuple[str, str, str], ...]) -> bool:
    for label, op, wanted in matchers:
        got = labels.get(label, "")
        if op == "=" and got != wanted:
            return False
        if op == "!=" and got == wanted:
            return False
        if op == "=~" and not re.fullmatch(wanted, got):
            return False
        if op == "!~" and re.fullmatch(wanted, got):
            return False
    return True


def _select(scrape: Scrape, selector: Selector) -> Vector:
    found = {}
    for labels, value in scrape.samples.items():
        as_dict = dict(labels)
        if as_dict[NAME] == selector.name and _matches(as_dict, selector.matchers):
            found[labels] = value
    return found


def _without(labels: Labels, names: tuple[str, ...]) -> Labels:
    return frozenset((k, v) for k, v in labels if k not in names)


def _compare(op: str, a: float, b: float) -> bool:
    return {
        "==": a == b,
        "!=": a != b,
        ">": a > b,
        "<": a < b,
        ">=": a >= b,
        "<=": a <= b,
    }[op]


def _arithmetic(op: str, a: float, b: float) -> float:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:  # IEEE 754, as Prometheus: x/0 is +-Inf, 0/0 and NaN/0 are NaN
        return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a)
    return a / b


def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's histogram_quantile for one series' (upper bound, cumulative count)."""
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    buckets = sorted(buckets)
    if not buckets or buckets[-1][0] != math.inf:
        return math.nan
    merged: list[list[float]] = []
    for bound, count in buckets:  # buckets with the same bound are added up
        if merged and merged[-1][0] == bound:
            merged[-1][1] += count
        else:
            merged.append([bound, count])
    for i in range(1, len(merged)):  # counts that went down (a scrape between updates)
        merged[i][1] = max(merged[i][1], merged[i - 1][1])
    if len(merged) < 2:
        return math.nan
    observations = merged[-1][1]
    if observations == 0:
        return math.nan
    rank = q * observations
    b = next(i for i in range(len(merged)) if i == len(merged) - 1 or merged[i][1] >= rank)
    if b == len(merged) - 1:
        return merged[-2][0]
    if b == 0 and merged[0][0] <= 0:
        return merged[0][0]
    start, end, count = 0.0, merged[b][0], merged[b][1]
    if b > 0:
        start = merged[b - 1][0]
        count -= merged[b - 1][1]
        rank -= merged[b - 1][1]
    return start + (end - start) * (rank / count)


class Evaluator:
    """Evaluates queries over the window between two scrapes (earlier, later)."""

    def __init__(self, earlier: Scrape, later: Scrape) -> None:
        if not later.at > earlier.at:
            raise ValueError("the later scrape must be taken after the earlier one")
        self.earlier = earlier
        self.later = later

    def query(self, text: str) -> Vector:
        result = self.eval(parse(text))
        if not isinstance(result, dict):
            raise TypeError(f"{text!r} is a number, not a vector")
        return result

    def eval(self, node: Node) -> Value:
        if isinstance(node, Number):
            return node.value
        if isinstance(node, Selector):
            if node.range is not None:
                raise SyntaxError(f"a range vector ({node.name}[{node.range}]) outside rate() or increase()")
            return _select(self.later, node)
        if isinstance(node, Call):
            return self.call(node)
        if isinstance(node, Aggregate):
            return self.aggregate(node)
        return self.binary(node)

    def call(self, node: Call) -> Vector:
        if node.function in ("rate", "increase"):
            (selector,) = node.args
            if not isinstance(selector, Selector) or selector.range is None:
                raise SyntaxError(f"{node.function}() takes a range selector")
            before = _select(self.earlier, selector)
            result = {}
            for labels, now in _select(self.later, selector).items():
                if labels not in before:
                    continue  # one sample in the window: no rate, as in Prometheus
                then = before[labels]
                increase = now - then if now >= then else now  # a counter reset starts from 0
                elapsed = self.later.at - self.earlier.at
                result[_without(labels, (NAME,))] = increase if node.function == "increase" else increase / elapsed
            return result
        q, inner = (self.eval(arg) for arg in node.args)
        if not isinstance(q, float) or not isinstance(inner, dict):
            raise TypeError("histogram_quantile(number, vector)")
        groups: dict[Labels, list[tuple[float, float]]] = {}
        for labels, count in inner.items():
            le = dict(labels).get("le")
            if le is None:
                continue
            groups.setdefault(_without(labels, ("le", NAME)), []).append((float(le), count))
        return {labels: bucket_quantile(q, buckets) for labels, buckets in groups.items()}

    def aggregate(self, node: Aggregate) -> Vector:
        inner = self.eval(node.expr)
        if not isinstance(inner, dict):
            raise TypeError(f"{node.op}() of a number")
        groups: dict[Labels, list[float]] = {}
        for labels, value in inner.items():
            if node.grouping == "by":
                key = frozenset((k, v) for k, v in labels if k in node.labels)
            else:
                key = _without(labels, (*node.labels, NAME))
            groups.setdefault(key, []).append(value)
        reduce = {
            "sum": sum,
            "max": lambda values: max(values, key=lambda v: -math.inf if math.isnan(v) else v),
            "min": lambda values: min(values, key=lambda v: math.inf if math.isnan(v) else v),
            "count": len,
            "avg": lambda values: sum(values) / len(values),
        }[node.op]
        return {key: float(reduce(values)) for key, values in groups.items()}

    def binary(self, node: Binary) -> Value:
        lhs, rhs = self.eval(node.lhs), self.eval(node.rhs)
        if node.op in SET_OPS:
            if not isinstance(lhs, dict) or not isinstance(rhs, dict):
                raise TypeError(f"{node.op} between vectors only")
            right = {_without(labels, (NAME,)) for labels in rhs}
            if node.op == "and":
                return {labels: v for labels, v in lhs.items() if _without(labels, (NAME,)) in right}
            if node.op == "unless":
                return {labels: v for labels, v in lhs.items() if _without(labels, (NAME,)) not in right}
            left = {_without(labels, (NAME,)) for labels in lhs}
            return {**lhs, **{labels: v for labels, v in rhs.items() if _without(labels, (NAME,)) not in left}}
        if node.op in COMPARISONS:
            if not isinstance(rhs, float):
                raise SyntaxError("a comparison is supported against a number only")
            if isinstance(lhs, float):
                raise SyntaxError("a comparison of two numbers needs bool")
            return {labels: v for labels, v in lhs.items() if _compare(node.op, v, rhs)}
        if isinstance(lhs, float) and isinstance(rhs, float):
            return _arithmetic(node.op, lhs, rhs)
        if isinstance(lhs, float) or isinstance(rhs, float):
            vector, number = (rhs, lhs) if isinstance(lhs, float) else (lhs, rhs)
            assert isinstance(vector, dict) and isinstance(number, float)
            return {
                _without(labels, (NAME,)): (
                    _arithmetic(node.op, number, v) if isinstance(lhs, float) else _arithmetic(node.op, v, number)
                )
                for labels, v in vector.items()
            }
        left = {_without(labels, (NAME,)): v for labels, v in lhs.items()}
        right = {_without(labels, (NAME,)): v for labels, v in rhs.items()}
        if len(left) != len(lhs) or len(right) != len(rhs):
            raise ValueError(f"{node.op}: many-to-many matching (series differing only in name)")
        return {labels: _arithmetic(node.op, v, right[labels]) for labels, v in left.items() if labels in right}

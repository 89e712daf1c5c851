# Every set-up step a fresh machine needs: `make demo` and `make test` create the virtualenv,
# install the project with its test dependencies and build the compiled L1 themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: all venv build demo test lint typecheck check-ops test-compiled test-pure test-bench bench bench-redis verify bench-memory bench-hit-ratio clean

all: test

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Rebuilds the extension in place when csrc/ changed since the editable install.
build: venv
	$(PY) setup.py --quiet build_ext --inplace

demo: build
	$(PY) -m tiercache demo $(DEMO_ARGS)

test: build lint typecheck check-ops test-compiled test-pure test-bench

# ruff with the rules chosen in pyproject.toml ([tool.ruff.lint]).
lint: venv
	$(PY) -m ruff check tiercache tests benchmarks setup.py

# mypy --strict on the package (configured in pyproject.toml [tool.mypy]); the package ships
# py.typed, so this is what its users' type checkers see.
typecheck: venv
	$(PY) -m mypy

# The operators' files (ops/): promtool's own check of the alert rules where Prometheus is
# installed (Debian's prometheus package); tests/test_ops.py evaluates every rule either way.
check-ops: venv
	$(PY) -m json.tool ops/grafana/tiercache-dashboard.json > /dev/null
	@if command -v promtool > /dev/null; then promtool check rules ops/prometheus/tiercache-alerts.yml; \
	else echo "promtool is not installed: the rules are checked by tests/test_ops.py only"; fi

test-compiled: build
	$(PY) -X dev -X faulthandler -m pytest tests

test-pure: build
	TIERCACHE_NO_EXTENSIONS=1 $(PY) -m pytest tests

# Benchmarks run once each, untimed, so they cannot rot; `make bench` measures.
test-bench: build
	$(PY) -m pytest benchmarks --benchmark-disable -q

# Every target of shared/BENCHMARKS.md, measured, in one report: benchmarks/results/REPORT.md
# with latency.png, hit_ratio.png and concurrency.png beside it (~10-12 min on 2 quiet cores).
# The pytest-benchmark suites and loops.py run $(BENCH_RUNS) times: every ratio is taken
# within a run and the report gives the median across runs, with the range.
# `make bench BENCH_QUICK=1 RESULTS=/tmp/quick` runs the same pipeline on tiny settings (~40 s):
# it checks the pipeline; its figures mean nothing.
RESULTS ?= benchmarks/results
BENCH_RUNS ?= 3
# as bench-memory: the target is at 1M entries
MEMORY_ENTRIES ?= 1000000
HIT_RATIO_FRACTIONS ?= 0.001,0.003,0.01,0.03,0.1,0.3
TARGETS_MD ?= ../shared/BENCHMARKS.md
ifdef BENCH_QUICK
QUICK_PYTEST := --benchmark-min-rounds=1 --benchmark-max-time=0.001
QUICK_LOOPS := --rounds 2
QUICK_METRICS := --rounds 4
QUICK_CONCURRENCY := --rounds 1
QUICK_THREADS := --seconds 0.05
QUICK_LAG := --rounds 10
QUICK_STAMPEDE := --processes 2 --threads 5 --repeats 2 --loader-seconds 0.1
MEMORY_ENTRIES := 20000
QUICK_HIT_RATIO := --requests 20000 --objects 2000
HIT_RATIO_FRACTIONS := 0.01,0.03,0.1,0.3
endif

bench: build
	$(PY) -m pip install --quiet -e '.[bench]'
	mkdir -p $(RESULTS)
	rm -f $(RESULTS)/*.json
	for run in $$(seq $(BENCH_RUNS)); do \
		$(PY) -m pytest benchmarks --benchmark-only --benchmark-group-by=group -q $(QUICK_PYTEST) \
			--benchmark-json=$(RESULTS)/run-$$run.json --benchmark-columns=median,iqr,rounds || exit 1; \
		$(PY) benchmarks/loops.py $(QUICK_LOOPS) --json $(RESULTS)/loops-$$run.json || exit 1; \
	done
	$(PY) benchmarks/metrics_overhead.py $(QUICK_METRICS) --json $(RESULTS)/metrics_overhead.json
	$(PY) benchmarks/concurrency.py $(QUICK_CONCURRENCY) --json $(RESULTS)/concurrency.json
	$(PY) benchmarks/threads.py $(QUICK_THREADS) --json $(RESULTS)/threads.json
	$(PY) benchmarks/invalidation_lag.py $(QUICK_LAG) --json $(RESULTS)/invalidation_lag.json
	$(PY) benchmarks/stampede.py $(QUICK_STAMPEDE) --json $(RESULTS)/stampede.json
	$(PY) benchmarks/memory.py --entries $(MEMORY_ENTRIES) --json $(RESULTS)/memory.json
	$(PY) benchmarks/hit_ratio.py $(QUICK_HIT_RATIO) --fractions $(HIT_RATIO_FRACTIONS) --json $(RESULTS)/hit_ratio.json
	$(PY) benchmarks/report.py $(RESULTS)/*.json --out $(RESULTS) $(if $(wildcard $(TARGETS_MD)),--targets $(TARGETS_MD))

# The Redis-bound paths, printed only: the target scripts that make bench also runs, and the
# figures beyond the targets (interleaved, bulk invalidation, hot keys, Cluster and Sentinel).
bench-redis: build
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) benchmarks/interleaved.py
	$(PY) benchmarks/loops.py
	$(PY) benchmarks/threads.py
	$(PY) benchmarks/concurrency.py
	$(PY) benchmarks/invalidation_lag.py
	$(PY) benchmarks/stampede.py
	$(PY) benchmarks/semantic.py
	$(PY) benchmarks/bulk.py
	$(PY) benchmarks/hot_keys.py
	$(PY) -m benchmarks.cluster

# Consistency across 4 processes while faults are injected (see README).
verify: build
	$(PY) -m tiercache verify --processes 4 --seconds 20

bench-memory: build
	$(PY) benchmarks/memory.py --entries 1000000

bench-hit-ratio: build
	$(PY) benchmarks/hit_ratio.py

clean:
	rm -rf $(VENV) build tiercache/*.so csrc/*.c .pytest_cache .hypothesis .benchmarks

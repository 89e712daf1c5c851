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

# Three full runs: ratios are taken within each run and the median across runs is reported.
bench: build
	$(PY) -m pip install --quiet -e '.[bench]'
	mkdir -p benchmarks/results
	for run in 1 2 3; do \
		$(PY) -m pytest benchmarks --benchmark-only --benchmark-group-by=group -q \
			--benchmark-json=benchmarks/results/run-$$run.json --benchmark-columns=median,iqr,rounds || exit 1; \
	done
	$(PY) benchmarks/report.py benchmarks/results/run-*.json --png benchmarks/results/bench.png
	$(PY) benchmarks/metrics_overhead.py

# Redis-bound paths measured round-robin against raw redis-py, and the invalidation lag.
bench-redis: build
	$(PY) benchmarks/interleaved.py
	$(PY) benchmarks/loops.py
	$(PY) benchmarks/threads.py
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) benchmarks/concurrency.py --png benchmarks/results/concurrency.png
	$(PY) benchmarks/invalidation_lag.py
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

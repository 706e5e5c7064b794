# Developer entry points. `make demo` and `make test` are the two commands the README promises.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TOPOLOGY ?= topologies/ecommerce.yaml

.PHONY: help install kafka-up kafka-down kafka-status demo test test-unit test-long check worker produce bench bench-quick soak clean

help:
	@echo "make demo        local Kafka + a worker on $(TOPOLOGY) + generated traffic, then a report"
	@echo "make test        the CI test suite (starts local Kafka)"
	@echo "make test-unit   tests that need no broker"
	@echo "make test-long   long fault and soak runs (marked slow)"
	@echo "make kafka-up / kafka-down / kafka-status"
	@echo "make check       pipeline check on every topology"
	@echo "make worker      run a worker on $(TOPOLOGY) in the foreground"
	@echo "make bench       the benchmark: pipeline vs ceiling, classic, naive Faust (~15 min)"
	@echo "make bench-quick the same with fewer events (~2 min); results in bench/results/"
	@echo "make soak        one worker at half its maximum rate for 10 min (SOAK_MINUTES): RSS, lag, errors"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

kafka-up:
	scripts/kafka-local.sh up

kafka-down:
	scripts/kafka-local.sh down

kafka-status:
	scripts/kafka-local.sh status

demo: install kafka-up
	$(BIN)/python scripts/demo.py --topology $(TOPOLOGY)

test: install kafka-up
	$(BIN)/python -m pytest -m "not slow"

test-unit: install
	$(BIN)/python -m pytest -m "not kafka and not slow"

test-long: install kafka-up
	$(BIN)/python -m pytest -m slow

check: install
	$(BIN)/pipeline check topologies/*.yaml

worker: install kafka-up
	$(BIN)/pipeline worker $(TOPOLOGY)

produce: install kafka-up
	$(BIN)/pipeline produce $(TOPOLOGY) --generate 10000

# Full: 300k events for ceiling and pipeline, 20k for classic and naive Faust, 5M dedupe keys.
bench: install kafka-up
	$(BIN)/python bench/run.py

bench-quick: install kafka-up
	$(BIN)/python bench/run.py --quick

# One worker at half of its maximum rate for SOAK_MINUTES: RSS, lag, error logs (bench/soak.py).
SOAK_MINUTES ?= 10
soak: install kafka-up
	$(BIN)/python bench/soak.py --minutes $(SOAK_MINUTES)

clean:
	rm -rf $(VENV) .local build dist *.egg-info .pytest_cache

# Fuzz decode + validate for 10 minutes (CI runs a fixed 18,000 iterations: tests/test_fuzz.py).
# The corpus grows in .local/fuzz/corpus across runs; crashing inputs land in .local/fuzz/.
.PHONY: fuzz
FUZZ_SECONDS ?= 600
fuzz: install
	mkdir -p .local/fuzz/corpus
	$(BIN)/python tests/fuzz/fuzz_decode.py --write-seeds .local/fuzz/corpus \
		-max_total_time=$(FUZZ_SECONDS) -max_len=65536 -rss_limit_mb=2048 -timeout=20 \
		-artifact_prefix=.local/fuzz/ .local/fuzz/corpus

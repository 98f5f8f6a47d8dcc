# Two entry points that work on a fresh machine (Python 3.11 and pip, nothing else):
#   make run   - create .venv, install, run the main job on the embedded default
#   make test  - create .venv, install, run the test suite
#   make lint  - ruff (rules and format), the layer contract (lint-imports), mypy
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install run run-hpa simulate test lint format bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	# torch first, pinned: pip takes the CPU build from local disk instead of a multi-GB CUDA build
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/autotune run

run-hpa: install
	$(VENV)/bin/autotune run --policy hpa

simulate: install
	$(VENV)/bin/autotune simulate --scenario worldcup-holdout --policy ppo,hpa,static,threshold,hpa-reference,oracle --seed 0

test: install
	$(VENV)/bin/pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install
	$(PY) benchmarks/env_steps.py
	$(PY) benchmarks/decision_interval.py
	$(PY) benchmarks/training_speed.py
	$(PY) benchmarks/queue_throughput.py
	$(PY) benchmarks/cluster_throughput.py
	$(PY) benchmarks/intake_cv.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

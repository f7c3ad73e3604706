# Two commands on a fresh machine: `make demo` runs the main job, `make test` the tests.
# Each creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: demo test lint bench mutation clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,postgres]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/arbiter demo --tasks 20000 $(ARGS)

test: $(STAMP)
	$(PY) -m pytest --cov --cov-branch --cov-report=term --cov-fail-under=85 $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check actors messages supervisor tests benchmarks
	$(VENV)/bin/ruff format --check actors messages supervisor tests benchmarks
	$(VENV)/bin/mypy --strict actors messages supervisor

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m benchmarks $(ARGS)

mutation: $(STAMP)
	$(PY) -m pip install --quiet -e '.[mutation]'
	$(PY) -m benchmarks.mutation $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage mutants

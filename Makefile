# `make figures`, `make test`, `make test-all`, `make bench`, `make gpu`, `make lint`, `make docs` (the site,
# warnings as errors, its examples run): each creates .venv on
# first use and installs what it needs (`make gpu`: the `gpu` extra, JAX's CUDA build). `make test` leaves out the tests marked slow (paper-size checks); `make test-all` runs
# every test. Both spread the tests over the machine's cores (pytest-xdist).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PRESET ?= quick

.PHONY: figures test test-all test-min bench gpu lint docs clean

$(VENV)/.installed-%: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$*]"
	touch $@

$(VENV)/.installed-base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

figures: $(VENV)/.installed-base
	$(PY) scripts/figures/run_figures.py --preset $(PRESET)

test: $(VENV)/.installed-test
	$(PY) -m pytest -q -n auto --dist worksteal

test-all: $(VENV)/.installed-test
	$(PY) -m pytest -q -n auto --dist worksteal -m ""

# the lowest versions pyproject.toml admits, in a venv of their own: the README example and a fast subset
MIN_TESTS := tests/test_readme.py tests/models/test_problem.py tests/flows/test_discrete.py tests/test_nothing_silent.py
test-min: pyproject.toml
	test -x .venv-min/bin/python || $(PYTHON) -m venv .venv-min
	.venv-min/bin/python -m pip install --quiet --upgrade pip
	$(PYTHON) scripts/tools/lowest_pins.py > .venv-min/lowest.txt
	.venv-min/bin/python -m pip install --quiet -e ".[test]" -c .venv-min/lowest.txt
	.venv-min/bin/python -m pytest -q -n auto --dist worksteal $(MIN_TESTS)

bench: $(VENV)/.installed-bench
	$(PY) scripts/benchmarks/run_benchmarks.py

gpu: $(VENV)/.installed-gpu
	$(PY) scripts/tools/gpu.py

docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict
	$(PY) scripts/tools/check_docs.py

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .venv-min results site

# The two commands a new user needs: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/demo.yaml
# Tests never join a Ray cluster the user may have running, and Ray asks for no auth token locally.
export RAY_AUTH_MODE ?= disabled
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: demo test test-slow bench install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)  ## run the whole pipeline on the generated dataset, local Ray, local MLflow store
	$(PY) pipelines/full.py --config $(CONFIG)

test: $(STAMP)  ## the default test suite (no `slow` tests), < 15 minutes on 2 cores
	$(PY) -m pytest -m "not slow" -q

test-slow: $(STAMP)  ## the long tests only
	$(PY) -m pytest -m slow -q

bench: $(STAMP)  ## every benchmark, one JSON object each
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf workspace .pytest_cache

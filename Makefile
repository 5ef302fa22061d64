# The two commands a new user needs: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/demo.yaml
# Ray runs with token authentication everywhere (pipelines/ray_auth.py); a local instance's token file is
# ~/.yolov2-pipeline/ray_auth_token. `export RAY_AUTH_MODE=disabled` turns it off, with a warning.
# The cloud cluster's token file: ray_cluster.yaml copies this path to every node.
CLUSTER_TOKEN := $(HOME)/.yolov2-pipeline/cluster_auth_token
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: demo test lint test-slow bench install clean cluster-token

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)  ## run the whole pipeline on the generated dataset, local Ray, local MLflow store
	$(PY) pipelines/full.py --config $(CONFIG)

test: lint  ## lint and type checks, then the default test suite (no `slow` tests), < 15 minutes on 2 cores
	$(PY) -m pytest -m "not slow" -q

LINTED := yolov2 pipelines tests benchmarks tools
lint: $(STAMP)  ## ruff (lint + format check) on the code, mypy on the library; settings in pyproject.toml
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy

test-slow: $(STAMP)  ## the long tests only
	$(PY) -m pytest -m slow -q

bench: $(STAMP)  ## every benchmark, one JSON object each
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

cluster-token:  ## the cloud cluster's Ray token file, once, before `ray up` (mode 0600; the token is never printed)
	$(PYTHON) -m pipelines.ray_auth token-file $(CLUSTER_TOKEN)

clean:
	rm -rf workspace .pytest_cache .mypy_cache .ruff_cache

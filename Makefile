# The two commands a newcomer needs are `make demo` and `make test`; everything else is a step of those.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: help venv binaries test unit chaos lint demo demo-down clean
.DEFAULT_GOAL := help

help:
	@echo "make demo    - a local cluster, the ALB emulator and the operator: watch a rolling update leave the group"
	@echo "make test    - the whole test suite against a real local control plane"
	@echo "make chaos   - mixed chaos, long: ALBM_CHAOS_ROUNDS=1000 make chaos (ALBM_CHAOS_SEED repeats a run)"
	@echo "make lint    - ruff, mypy, the docs (mkdocs --strict), the alerts (promtool) and the chart (kube-score)"
	@echo "make binaries - build/reuse etcd, kube-*, kubectl, kwok, helm (cached outside the repo)"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

binaries:
	scripts/build-binaries

test: venv binaries
	$(PY) -m pytest $(PYTEST_ARGS)

unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# Mixed chaos outside `make test` (which runs it for a few rounds): ALBM_CHAOS_ROUNDS rounds, each round's line
# and the seed shown as it goes (tests/integration/test_chaos_mixed.py).
chaos: venv binaries
	$(PY) -m pytest tests/integration/test_chaos_mixed.py -k test_mixed_chaos --capture=no $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check operator tests bench workload
	$(VENV)/bin/ruff format --check operator tests bench workload
	$(VENV)/bin/mypy
	$(VENV)/bin/mkdocs build --strict --quiet
	scripts/test-alerts
	scripts/kube-score

demo: venv binaries
	scripts/demo

demo-down: venv
	scripts/demo-down

clean:
	rm -rf $(VENV) build *.egg-info

# The README's two commands: `make demo` and `make test`. Each sets everything up on a fresh
# machine first (a .venv with geoseg and its dev extra), then runs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.geoseg-installed
DEMO   ?= demo

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/geoseg demo-data $(DEMO)/data --overwrite
	@echo "Demo data: $(abspath $(DEMO)/data)"

test: install
	$(PY) -m pytest -n 2 --dist loadfile -q

lint: install
	$(VENV)/bin/ruff check geoseg tests benchmarks examples

clean:
	rm -rf $(DEMO) .pytest_cache

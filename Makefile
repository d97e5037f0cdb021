# The README's two commands: `make demo` and `make test`. Each sets everything up on a fresh
# machine first (a .venv with geoseg and its dev extra), then runs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.geoseg-installed
DEMO   ?= demo

.PHONY: install demo test test-fast lint bench clean docs

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Data -> train -> infer -> vectorize -> evaluate on the built-in demo scenes (~10 min on 2 cores).
demo: install
	@test -f $(DEMO)/data/buildings.gpkg || $(VENV)/bin/geoseg demo-data $(DEMO)/data
	$(VENV)/bin/geoseg run pipelines/demo.yaml --set out=$(abspath $(DEMO))/run \
		--set data.images=[$(abspath $(DEMO))/data/images] --set data.labels=$(abspath $(DEMO))/data/masks \
		--set evaluate.truth=$(abspath $(DEMO))/data/buildings.gpkg

test: install
	$(PY) -m pytest -n 2 --dist loadfile -q

# The day-to-day loop: everything but the tests marked slow (training, DDP, examples, recipes).
test-fast: install
	$(PY) -m pytest -n 2 --dist loadfile -q -m "not slow"

# Style and types: ruff on all Python here, mypy on geoseg/ (settings in pyproject.toml).
lint: install
	$(VENV)/bin/ruff check geoseg tests benchmarks examples
	$(PY) -m mypy

clean:
	rm -rf $(DEMO) .pytest_cache

# Regenerate the README's pipeline-file reference from the config schema.
docs: install
	$(PY) -c "import re, pathlib; from geoseg import config; p = pathlib.Path('README.md'); \
	s = p.read_text(); p.write_text(re.sub(r'(<!-- CONFIG-REFERENCE[^>]*-->\n).*?(\n<!-- /CONFIG-REFERENCE -->)', \
	lambda m: m.group(1) + config.reference_markdown() + m.group(2), s, flags=re.S))"

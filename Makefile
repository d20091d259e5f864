# Quick start: `make demo` runs the whole pipeline on embedded defaults, `make test` runs the tests.
# Both create/refresh a local virtualenv in .venv and install what they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test venv bench clean lint screenshot

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned to 2.13.0 (CPU build available offline); see README "Installing".
	$(PY) -m pip install --quiet -e '.[train,test,demo]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edge-inspector demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/model_benchmark.py --json benchmarks/results/model.json
	$(PY) benchmarks/pipeline_benchmark.py --json benchmarks/results/pipeline.json

# README's picture of the operator page: the browser test (headless chromium) saves it.
screenshot: $(STAMP)
	EDGE_INSPECTOR_SCREENSHOT=docs/images/operator-page.png $(PY) -m pytest tests/test_ui_browser.py -q

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

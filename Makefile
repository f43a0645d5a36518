# Every target works on a fresh machine with only python3 and make.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

CORE    := $(VENV)/.core

.PHONY: demo test test-all notebooks bench lint clean

# the demo needs otreg alone (jax, optax, numpy): no test tools, no Flax, no matplotlib
$(CORE): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(CORE)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,cli,notebooks]'
	touch $(STAMP) $(CORE)

demo: $(CORE)
	$(BIN)/otreg demo

# the tests include the README's snippets and every notebook executed in small mode
test: $(STAMP)
	$(BIN)/ruff check otreg tests benchmarks notebooks
	$(BIN)/python -m pytest -n auto --dist worksteal

notebooks: $(STAMP)
	$(BIN)/python notebooks/execute.py

test-all: $(STAMP)
	$(BIN)/python -m pytest -m ''

$(VENV)/.bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,cli,bench]'
	touch $(VENV)/.bench

bench: $(VENV)/.bench
	bash benchmarks/run_sinkhorn.sh

lint: $(STAMP)
	$(BIN)/ruff check otreg tests benchmarks notebooks

clean:
	rm -rf $(VENV) .pytest_cache

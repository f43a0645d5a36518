# Every target works on a fresh machine with only python3 and make.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test test-all bench lint clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,cli]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/otreg demo

test: $(STAMP)
	$(BIN)/ruff check otreg tests benchmarks
	$(BIN)/python -m pytest -n auto

test-all: $(STAMP)
	$(BIN)/python -m pytest -m ''

$(VENV)/.bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,cli,bench]'
	touch $(VENV)/.bench

bench: $(VENV)/.bench
	bash benchmarks/run_sinkhorn.sh

lint: $(STAMP)
	$(BIN)/ruff check otreg tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache

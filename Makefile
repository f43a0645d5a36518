# Every target works on a fresh machine with only python3 and make.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

CORE    := $(VENV)/.core

.PHONY: demo test test-all notebooks bench bench-accelerator lint clean

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

# otreg vs OTT-JAX on this host's first device (GPU, TPU, or CPU pinned to one core), under 8 min.
# A GPU/TPU host needs JAX for it in the venv: make bench-accelerator ACCEL_JAX='jax[cuda12]'
ACCEL_JAX ?=
bench-accelerator: $(VENV)/.bench
	$(if $(ACCEL_JAX),$(BIN)/pip install --quiet '$(ACCEL_JAX)')
	PY=$(BIN)/python bash benchmarks/run_accelerator.sh

lint: $(STAMP)
	$(BIN)/ruff check otreg tests benchmarks notebooks

clean:
	rm -rf $(VENV) .pytest_cache

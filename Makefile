# Two commands do everything on a fresh machine: `make demo` and `make test` (each sets up .venv if needed).
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-all demo bench clean

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Default suite: CPU, single-threaded, no network, well under 15 minutes on 2 cores.
test: $(STAMP)
	OMP_NUM_THREADS=1 WANDB_MODE=disabled $(BIN)/python -m pytest -q

# Also the slow tests (CUDA compile check, longer training); cuda tests still skip without a GPU.
test-all: $(STAMP)
	OMP_NUM_THREADS=1 WANDB_MODE=disabled $(BIN)/python -m pytest -q -m "not benchmark"

# Main job: the whole progressive recipe on the embedded synthetic data with the tiny model.
demo: $(STAMP)
	WANDB_MODE=offline $(BIN)/python train.py experiment=demo

bench: $(STAMP)
	$(BIN)/python -m pytest -q -m benchmark -s

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache

# One entry point for the README's two commands. The venv is created on first use.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= cpu,test,minilm

.PHONY: venv test demo bench-quality clean

$(BIN)/cmhash: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $(BIN)/cmhash

venv: $(BIN)/cmhash

test: venv
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: venv
	$(BIN)/cmhash train --dataset mirflickr --method bi_ncmh --bits 64 --weight-decay 1e-4 --out runs/demo

bench-quality: venv
	$(BIN)/python bench/quality.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache

# One entry point for the README's two commands. The venv is created on first use.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= cpu,test,minilm,milvus

.PHONY: venv test demo bench-quality clean

$(BIN)/cmhash: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $(BIN)/cmhash

venv: $(BIN)/cmhash

test: venv
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The main job: train Bi_NCMH on the MIRFLICKR sample, export it to ONNX, index its images and
# tag texts into two galleries, and run one query of each direction. Each step is skipped or
# incremental when its output is already there (delete runs/demo to start over).
DEMO := runs/demo
demo: venv $(DEMO)/model/model.json
	$(BIN)/cmhash sources --dataset mirflickr --out $(DEMO)/sources
	$(BIN)/cmhash index --model $(DEMO)/model --images $(DEMO)/sources/images.jsonl --out $(DEMO)/gallery-images
	$(BIN)/cmhash index --model $(DEMO)/model --texts $(DEMO)/sources/texts.jsonl --out $(DEMO)/gallery-texts
	$(BIN)/cmhash search --model $(DEMO)/model --gallery $(DEMO)/gallery-images --text "dog on the beach" -k 5
	$(BIN)/cmhash search --model $(DEMO)/model --gallery $(DEMO)/gallery-texts --image $$(ls $${CMHASH_DATA_ROOT:-../shared/data}/mirflickr25k/images/*.jpg | head -1) -k 5

$(DEMO)/run/checkpoint.pt: | venv
	$(BIN)/cmhash train --dataset mirflickr --method bi_ncmh --bits 64 --weight-decay 1e-4 --out $(DEMO)/run

$(DEMO)/model/model.json: $(DEMO)/run/checkpoint.pt
	$(BIN)/cmhash export $(DEMO)/run --out $(DEMO)/model

bench-quality: venv
	$(BIN)/python bench/quality.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache

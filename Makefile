# One entry point for the README's two commands. The venv is created on first use.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= cpu,test,minilm,milvus

.PHONY: venv test demo demo-data bench-quality bench-perf clean

$(BIN)/cmhash: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $(BIN)/cmhash

venv: $(BIN)/cmhash

test: venv
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The main job: train Bi_NCMH on the MIRFLICKR sample, export it to ONNX, index its images and
# tag texts into two galleries, run one query each way, then serve the API and the search page
# on http://127.0.0.1:8000 (Ctrl-C stops it). Each step is skipped or incremental when its
# output is already there (delete runs/demo to start over). HOST / PORT override the address.
DEMO := runs/demo
DATA_ROOT ?= $(or $(CMHASH_DATA_ROOT),../shared/data)
HOST ?= 127.0.0.1
PORT ?= 8000
demo: demo-data venv $(DEMO)/model/model.json
	$(BIN)/cmhash sources --dataset mirflickr --data $(DATA_ROOT)/mirflickr25k --out $(DEMO)/sources
	$(BIN)/cmhash index --model $(DEMO)/model --images $(DEMO)/sources/images.jsonl --out $(DEMO)/gallery-images
	$(BIN)/cmhash index --model $(DEMO)/model --texts $(DEMO)/sources/texts.jsonl --out $(DEMO)/gallery-texts
	$(BIN)/cmhash search --model $(DEMO)/model --gallery $(DEMO)/gallery-images --text "dog on the beach" -k 5
	$(BIN)/cmhash search --model $(DEMO)/model --gallery $(DEMO)/gallery-texts --image $$(ls $(DATA_ROOT)/mirflickr25k/images/*.jpg | head -1) -k 5
	$(BIN)/cmhash serve --model $(DEMO)/model --image-gallery $(DEMO)/gallery-images --text-gallery $(DEMO)/gallery-texts --host $(HOST) --port $(PORT)

demo-data:
	@test -f $(DATA_ROOT)/mirflickr25k/rows.tsv -a -d $(DATA_ROOT)/mirflickr25k/images || { \
	  echo "error: the MIRFLICKR sample is not at $(DATA_ROOT)/mirflickr25k."; \
	  echo "It needs mirflickr25k-lall.mat and mirflickr25k-yall.mat (LAll / YAll of the cleaned 20,015 set),"; \
	  echo "tag_vocab.txt, label_names.txt, rows.tsv and images/im*.jpg: see ../shared/data/README.md for what"; \
	  echo "each file is and where it comes from. Put them there, or set CMHASH_DATA_ROOT=/path/to/data."; \
	  exit 2; }

$(DEMO)/run/checkpoint.pt: | venv
	$(BIN)/cmhash train --dataset mirflickr --data $(DATA_ROOT)/mirflickr25k --method bi_ncmh --bits 64 --weight-decay 1e-4 --out $(DEMO)/run

$(DEMO)/model/model.json: $(DEMO)/run/checkpoint.pt
	$(BIN)/cmhash export $(DEMO)/run --out $(DEMO)/model

bench-quality: venv
	$(BIN)/python bench/quality.py $(BENCH_ARGS)

# The speed and load benchmarks of docs/results.md, on the `make demo` model and galleries (run
# `make demo` once first): search scale, indexing throughput, service latency, mixed load. Each
# prints its table and writes JSON under bench/out; about 40 minutes on 2 cores.
bench-perf: venv $(DEMO)/model/model.json
	$(BIN)/python bench/search_scale.py
	$(BIN)/python bench/index_throughput.py --model $(DEMO)/model
	$(BIN)/python bench/service_latency.py --model $(DEMO)/model
	$(BIN)/python bench/load.py --model $(DEMO)/model

clean:
	rm -rf $(VENV) runs .pytest_cache

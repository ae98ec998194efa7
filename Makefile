# One entry point for the README's two commands. The venv is created on first use; each set of
# extras is installed once (a stamp file per set), so `make demo` and `make test` share it.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_EXTRAS ?= cpu,train
TEST_EXTRAS ?= cpu,train,test,minilm,milvus
EXTRAS ?= $(TEST_EXTRAS)
PIP_QUIET := -q --disable-pip-version-check

.PHONY: venv venv-demo test test-fast lint demo demo-data bench-quality results results-tune results-quality results-speed clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install $(PIP_QUIET) --upgrade pip

$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	@echo "installing cmhash[$*] into $(VENV) (log: $(VENV)/pip.log)"
	@$(BIN)/pip install $(PIP_QUIET) -e ".[$*]" > $(VENV)/pip.log 2>&1 || { cat $(VENV)/pip.log; exit 1; }
	$(BIN)/python -c "import model, index, service" && touch $@

venv: $(VENV)/.installed-$(EXTRAS)
venv-demo: $(VENV)/.installed-$(DEMO_EXTRAS)

# The full suite CI runs: lint, types, then every test (training, servers, browser, Milvus).
test: $(VENV)/.installed-$(TEST_EXTRAS) lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The inner loop (under a minute): no training, no subprocess servers, no browser, no Milvus.
test-fast: $(VENV)/.installed-$(TEST_EXTRAS)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: $(VENV)/.installed-$(TEST_EXTRAS)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The main job: train Bi_NCMH on the MIRFLICKR sample, export it to ONNX, index its images and
# tag texts into two galleries, run one query each way, then serve the API and the search page
# on http://127.0.0.1:8000 (Ctrl-C stops it). Each step is skipped or incremental when its
# output is already there (delete runs/demo to start over). HOST / PORT override the address.
DEMO := runs/demo
DATA_ROOT ?= $(or $(CMHASH_DATA_ROOT),../shared/data)
HOST ?= 127.0.0.1
PORT ?= 8000
demo: demo-data venv-demo $(DEMO)/model/model.json
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
	@$(PY) -c "import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('$(HOST)', $(PORT)))" 2>/dev/null || { \
	  echo "error: $(HOST):$(PORT) is already in use (another cmhash serve?): run make demo PORT=8080"; exit 2; }

$(DEMO)/run/checkpoint.pt: | venv-demo
	$(BIN)/cmhash train --dataset mirflickr --data $(DATA_ROOT)/mirflickr25k --method bi_ncmh --bits 64 --weight-decay 1e-4 --out $(DEMO)/run

$(DEMO)/model/model.json: $(DEMO)/run/checkpoint.pt
	$(BIN)/cmhash export $(DEMO)/run --out $(DEMO)/model

bench-quality: $(VENV)/.installed-$(TEST_EXTRAS)
	$(BIN)/python bench/quality.py $(BENCH_ARGS)

# The committed results behind docs/results.md (docs/results/*.json, written only from a clean
# tree; check out the commit a file names and run its command to regenerate it). Needs `make
# demo` once first (model, galleries, cached features). `results-quality` trains (about 4
# hours on 2 cores after bench/tune.py's settings, 1.3 of them fine-tuning the backbone);
# `results-speed` times things, so run it on an otherwise idle machine (about 45 minutes);
# `results-tune` re-tunes bench/settings.json (about 3 hours; commit its output before
# results-quality).
results: results-quality results-speed

results-tune: $(VENV)/.installed-$(TEST_EXTRAS)
	$(BIN)/python bench/tune.py --datasets wikipedia-lda,wikipedia-tfidf,mirflickr
	$(BIN)/python bench/tune.py --datasets wikipedia-minilm
	$(BIN)/python bench/tune.py --datasets wikipedia-bow --methods bi_ncmh
	$(BIN)/python bench/tune.py --datasets mirflickr-minilm --methods bi_ncmh,dcmh

results-quality: $(VENV)/.installed-$(TEST_EXTRAS)
	$(BIN)/python bench/quality.py --datasets wikipedia-lda --threads 1 --keep-runs --out bench/out/quality-wikipedia-lda
	$(BIN)/python bench/quality.py --datasets wikipedia-tfidf --threads 1 --keep-runs --out bench/out/quality-wikipedia-tfidf
	$(BIN)/python bench/quality.py --datasets mirflickr --threads 1 --keep-runs --out bench/out/quality-mirflickr
	$(BIN)/python bench/quality.py --datasets mirflickr-minilm --threads 1 --keep-runs --out bench/out/quality-mirflickr-minilm
	$(BIN)/python bench/quality.py --datasets wikipedia-minilm --threads 1 --keep-runs --out bench/out/quality-wikipedia-minilm
	$(BIN)/python bench/quality.py --datasets wikipedia-bow --methods bi_ncmh --threads 1 --keep-runs --out bench/out/quality-wikipedia-bow
	$(BIN)/python bench/quality.py --datasets mirflickr-manifest --methods bi_ncmh,dcmh --threads 1 --keep-runs --out bench/out/quality-mirflickr-manifest
	$(BIN)/python bench/levers.py
	$(BIN)/python bench/levers.py --levers baseline,tencrop --name levers_tencrop
	$(BIN)/python bench/levers.py --levers baseline,finetune --folds 0 --publish-folds --threads 2 --name levers_finetune
	$(BIN)/python bench/i2t_ceiling.py --threads 1
	$(BIN)/python bench/rerank.py --datasets wikipedia-lda
	$(BIN)/python bench/rerank.py --datasets wikipedia-tfidf --threads 1 --out bench/out/quality-wikipedia-tfidf --name rerank_wikipedia-tfidf
	$(BIN)/python bench/rerank.py --datasets mirflickr --folds 0,1,2,3,4 --threads 1 --out bench/out/quality-mirflickr --name rerank_mirflickr
	$(BIN)/python bench/rerank.py --datasets mirflickr-manifest --folds 0,1,2,3,4 --threads 1 --out bench/out/quality-mirflickr-manifest --name rerank_mirflickr-manifest

results-speed: $(VENV)/.installed-$(TEST_EXTRAS) $(DEMO)/model/model.json
	$(BIN)/python bench/serving_footprint.py --model $(DEMO)/model --galleries $(DEMO)
	$(BIN)/python bench/reliability.py
	$(BIN)/python bench/mutation.py
	$(BIN)/python bench/index_throughput.py --model $(DEMO)/model
	$(BIN)/python bench/decode_scale.py --model $(DEMO)/model
	$(BIN)/python bench/export_parity.py --run $(DEMO)/run --model $(DEMO)/model --items 730
	$(BIN)/python bench/service_latency.py --model $(DEMO)/model
	$(BIN)/python bench/load.py --model $(DEMO)/model
	$(BIN)/python bench/mih_scale.py --sizes 1000000,10000000 --bits 32,64,128 --queries 10 --radii 0,2,4,6 --name mih_scale_1m_10m
	$(BIN)/python bench/mih_scale.py --raw --sizes 100000000 --bits 64 --queries 10 --radii 0,2,4,6 --name mih_scale_100m
	$(BIN)/python bench/milvus_recall.py --sizes 200000 --nlist 256,1024 --nprobe 8,32,128 --queries 100

clean:
	rm -rf $(VENV) runs .pytest_cache

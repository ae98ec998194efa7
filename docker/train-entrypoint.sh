#!/usr/bin/env bash
# Trainer entrypoint of the cmhash images (installed as /usr/local/bin/cmhash-train): the steps
# of `make demo`, writing into the /data volume what `cmhash serve` reads:
#   train   -> $WORK/run          (skipped when run/checkpoint.pt exists)
#   export  -> $CMHASH_MODEL       (skipped when model.json is newer than the checkpoint)
#   sources -> $WORK/sources       (images.jsonl, texts.jsonl)
#   index   -> $CMHASH_IMAGE_GALLERY, $CMHASH_TEXT_GALLERY (incremental: only new items)
#   one search each way, as a smoke check.
# Any failing step stops the script with a non-zero exit status.
#
# Settings (environment):
#   CMHASH_DATA_ROOT       dataset folders (default /shared/data: mount the data there, read-only)
#   CMHASH_DATASET         mirflickr (default), wikipedia or manifest (then CMHASH_DATA=the .jsonl)
#   CMHASH_METHOD, CMHASH_BITS, CMHASH_WEIGHT_DECAY, CMHASH_EPOCHS, ...  any `cmhash train` flag
#                          (defaults here: bi_ncmh, 64 bits, weight decay 1e-4, as `make demo`)
#   CMHASH_WORK_DIR        where the run and the sources go (default /data)
#   CMHASH_MODEL, CMHASH_IMAGE_GALLERY, CMHASH_TEXT_GALLERY   outputs; the same variables tell
#                          `cmhash serve` where to read them (defaults under /data)
#   CMHASH_MILVUS_URI      when set (e.g. http://milvus:19530), new galleries keep their codes in
#                          Milvus, in the collections CMHASH_MILVUS_IMAGE_COLLECTION and
#                          CMHASH_MILVUS_TEXT_COLLECTION (defaults cmhash_images, cmhash_texts);
#                          CMHASH_MILVUS_TOKEN: server credentials, if any
#   CMHASH_PROGRESS        progress bars (default false: container logs)
set -euo pipefail

WORK="${CMHASH_WORK_DIR:-/data}"
RUN_DIR="$WORK/run"
SOURCES="$WORK/sources"
MODEL="${CMHASH_MODEL:-$WORK/model}"
IMAGE_GALLERY="${CMHASH_IMAGE_GALLERY:-$WORK/galleries/images}"
TEXT_GALLERY="${CMHASH_TEXT_GALLERY:-$WORK/galleries/texts}"

export CMHASH_DATA_ROOT="${CMHASH_DATA_ROOT:-/shared/data}"
export CMHASH_CACHE_DIR="${CMHASH_CACHE_DIR:-$WORK/cache}"
export CMHASH_DATASET="${CMHASH_DATASET:-mirflickr}"
export CMHASH_METHOD="${CMHASH_METHOD:-bi_ncmh}"
export CMHASH_BITS="${CMHASH_BITS:-64}"
export CMHASH_WEIGHT_DECAY="${CMHASH_WEIGHT_DECAY:-1e-4}"
export CMHASH_PROGRESS="${CMHASH_PROGRESS:-false}"
# Per-command inputs are given as flags below; stray variables for them would add a second input.
unset CMHASH_OUT CMHASH_IMAGES CMHASH_TEXTS CMHASH_GALLERY CMHASH_TEXT CMHASH_IMAGE

log() { printf '[cmhash-train] %s\n' "$*" >&2; }

if [ -z "${CMHASH_DATA:-}" ] && [ ! -d "$CMHASH_DATA_ROOT" ]; then
    log "no dataset: $CMHASH_DATA_ROOT does not exist (mount the data there, or set CMHASH_DATA)"
    exit 2
fi
mkdir -p "$WORK"

if [ -f "$RUN_DIR/checkpoint.pt" ]; then
    log "train: $RUN_DIR/checkpoint.pt exists, skipped (delete $RUN_DIR to retrain)"
else
    log "train: $CMHASH_METHOD, $CMHASH_BITS bits on $CMHASH_DATASET -> $RUN_DIR"
    cmhash train --out "$RUN_DIR"
fi

if [ -f "$MODEL/model.json" ] && [ "$MODEL/model.json" -nt "$RUN_DIR/checkpoint.pt" ]; then
    log "export: $MODEL is up to date, skipped"
else
    log "export: $RUN_DIR -> $MODEL"
    cmhash export "$RUN_DIR" --out "$MODEL"
fi

log "sources: $CMHASH_DATASET -> $SOURCES"
cmhash sources --out "$SOURCES"

image_flags=()
text_flags=()
if [ -n "${CMHASH_MILVUS_URI:-}" ]; then
    image_flags=(--milvus-uri "$CMHASH_MILVUS_URI" --milvus-collection "${CMHASH_MILVUS_IMAGE_COLLECTION:-cmhash_images}")
    text_flags=(--milvus-uri "$CMHASH_MILVUS_URI" --milvus-collection "${CMHASH_MILVUS_TEXT_COLLECTION:-cmhash_texts}")
    log "index: new galleries keep their codes in Milvus at $CMHASH_MILVUS_URI"
fi

log "index: images -> $IMAGE_GALLERY"
cmhash index --model "$MODEL" --images "$SOURCES/images.jsonl" --out "$IMAGE_GALLERY" "${image_flags[@]}"
if [ -f "$SOURCES/texts.jsonl" ]; then
    log "index: texts -> $TEXT_GALLERY"
    cmhash index --model "$MODEL" --texts "$SOURCES/texts.jsonl" --out "$TEXT_GALLERY" "${text_flags[@]}"
fi

log "search: text -> images"
cmhash search --model "$MODEL" --gallery "$IMAGE_GALLERY" --text "dog on the beach" -k 5
if [ -f "$SOURCES/texts.jsonl" ]; then
    query_image="$(python -c 'import json, sys; print(json.loads(open(sys.argv[1]).readline())["image"])' "$SOURCES/images.jsonl")"
    log "search: image -> texts ($query_image)"
    cmhash search --model "$MODEL" --gallery "$TEXT_GALLERY" --image "$query_image" -k 5
fi
log "done: model $MODEL, galleries $IMAGE_GALLERY and $TEXT_GALLERY"

#!/usr/bin/env bash
# Trainer entrypoint of the cmhash trainer image (installed as /usr/local/bin/cmhash-train): the
# steps of `make demo`, writing into the /data volume what `cmhash serve` reads. Each step is
# skipped when its output is already there, so `docker compose up` runs it before every start:
#   train   -> /data/run                (skipped when run/checkpoint.pt exists)
#   export  -> $CMHASH_MODEL_DIR        (skipped when model.json is newer than the checkpoint)
#   sources -> /data/sources            (images.jsonl, texts.jsonl; skipped when images.jsonl exists)
#   index   -> $CMHASH_IMAGE_GALLERY, $CMHASH_TEXT_GALLERY (skipped when a gallery is newer than
#              the model), then one search each way, as a smoke check.
# `cmhash-train --update` (docker compose run --rm trainer --update) re-reads the dataset and
# indexes its new items into the existing galleries (incremental). Stop the API first: a gallery
# has one writer.
# Any failing step stops the script with a non-zero exit status; missing data is one line naming it.
#
# Settings (environment):
#   CMHASH_DATA_ROOT       dataset folders (default /shared/data: mount the data there, read-only)
#   CMHASH_DATASET         mirflickr (default) or manifest (then CMHASH_DATA=the .jsonl); the
#                          sources step needs image files, so not wikipedia
#   CMHASH_DATA            the dataset's path (default: its folder under CMHASH_DATA_ROOT)
#   CMHASH_METHOD, CMHASH_BITS, CMHASH_WEIGHT_DECAY, CMHASH_EPOCHS, ...  any `cmhash train` option
#                          (defaults here: bi_ncmh, 64 bits, weight decay 1e-4, as `make demo`)
#   CMHASH_MODEL_DIR, CMHASH_IMAGE_GALLERY, CMHASH_TEXT_GALLERY   outputs; the same variables tell
#                          `cmhash serve` where to read them (defaults under /data)
#   CMHASH_MILVUS_URI      when set (e.g. http://milvus:19530), new galleries keep their codes in
#                          Milvus, in the collections cmhash_images and cmhash_texts;
#                          CMHASH_MILVUS_TOKEN: server credentials, if any
#   CMHASH_PROGRESS        progress bars (default false: container logs)
set -euo pipefail

WORK=/data
RUN_DIR="$WORK/run"
SOURCES="$WORK/sources"
MODEL="${CMHASH_MODEL_DIR:-$WORK/model}"
IMAGE_GALLERY="${CMHASH_IMAGE_GALLERY:-$WORK/galleries/images}"
TEXT_GALLERY="${CMHASH_TEXT_GALLERY:-$WORK/galleries/texts}"

export CMHASH_DATA_ROOT="${CMHASH_DATA_ROOT:-/shared/data}"
export CMHASH_CACHE_DIR="${CMHASH_CACHE_DIR:-$WORK/cache}"
export CMHASH_DATASET="${CMHASH_DATASET:-mirflickr}"
export CMHASH_METHOD="${CMHASH_METHOD:-bi_ncmh}"
export CMHASH_BITS="${CMHASH_BITS:-64}"
export CMHASH_WEIGHT_DECAY="${CMHASH_WEIGHT_DECAY:-1e-4}"
export CMHASH_PROGRESS="${CMHASH_PROGRESS:-false}"

log() { printf '[cmhash-train] %s\n' "$*" >&2; }
die() { printf '[cmhash-train] error: %s\n' "$*" >&2; exit 2; }

update=false
for arg in "$@"; do
    case "$arg" in
        --update) update=true ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $arg (cmhash-train [--update])" ;;
    esac
done

# The dataset's files, checked once before the first step that reads them: an empty or wrong
# folder (e.g. one Docker created for a missing bind mount) gives one line naming what is missing.
data_checked=false
require_dataset() {
    "$data_checked" && return 0
    local data
    case "$CMHASH_DATASET" in
        mirflickr)
            data="${CMHASH_DATA:-$CMHASH_DATA_ROOT/mirflickr25k}"
            [ -d "$data" ] || die "no MIRFLICKR data: $data does not exist (set CMHASH_DATA_DIR to the host folder holding mirflickr25k/)"
            if [ -f "$data/rows.tsv" ] && [ -d "$data/images" ]; then :
            elif { [ -d "$data/meta/tags" ] && [ -f "$data/doc/common_tags.txt" ]; } \
                || { [ -d "$data/mirflickr/meta/tags" ] && [ -f "$data/mirflickr/doc/common_tags.txt" ]; } \
                || { [ -d "$data/mirflickr" ] && [ -d "$data/meta/tags" ] && [ -f "$data/doc/common_tags.txt" ]; }; then :
            else
                die "no MIRFLICKR images in $data: expected rows.tsv and images/ (or the official mirflickr/, meta/tags/, doc/common_tags.txt)"
            fi ;;
        manifest)
            [ -n "${CMHASH_DATA:-}" ] || die "CMHASH_DATASET=manifest needs CMHASH_DATA=<the .jsonl manifest>"
            [ -f "$CMHASH_DATA" ] || die "no manifest: $CMHASH_DATA does not exist"
            data="$CMHASH_DATA" ;;
        *)
            die "CMHASH_DATASET=$CMHASH_DATASET: the trainer indexes image files, so mirflickr or manifest" ;;
    esac
    log "data: $CMHASH_DATASET at $data"
    data_checked=true
}

if [ -f "$RUN_DIR/checkpoint.pt" ]; then
    log "train: $RUN_DIR/checkpoint.pt exists, skipped (delete $RUN_DIR to retrain)"
else
    require_dataset
    log "train: $CMHASH_METHOD, $CMHASH_BITS bits on $CMHASH_DATASET -> $RUN_DIR"
    mkdir -p "$WORK"
    cmhash train --out "$RUN_DIR"
fi

if [ -f "$MODEL/model.json" ] && [ "$MODEL/model.json" -nt "$RUN_DIR/checkpoint.pt" ]; then
    log "export: $MODEL is up to date, skipped"
else
    log "export: $RUN_DIR -> $MODEL"
    cmhash export "$RUN_DIR" --out "$MODEL"
fi

if [ -f "$SOURCES/images.jsonl" ] && ! "$update"; then
    log "sources: $SOURCES exists, skipped (cmhash-train --update re-reads the dataset)"
else
    require_dataset
    log "sources: $CMHASH_DATASET -> $SOURCES"
    cmhash sources --out "$SOURCES"
fi

# A gallery is up to date when its gallery.json is newer than the model and no --update was asked.
current() { [ -f "$1/gallery.json" ] && [ "$1/gallery.json" -nt "$MODEL/model.json" ] && ! "$update"; }

image_flags=()
text_flags=()
if [ -n "${CMHASH_MILVUS_URI:-}" ]; then
    image_flags=(--milvus-uri "$CMHASH_MILVUS_URI" --milvus-collection cmhash_images)
    text_flags=(--milvus-uri "$CMHASH_MILVUS_URI" --milvus-collection cmhash_texts)
fi

indexed=false
if current "$IMAGE_GALLERY"; then
    log "index: $IMAGE_GALLERY is up to date, skipped"
else
    log "index: images -> $IMAGE_GALLERY${CMHASH_MILVUS_URI:+ (codes in Milvus at $CMHASH_MILVUS_URI)}"
    cmhash index --model "$MODEL" --images "$SOURCES/images.jsonl" --out "$IMAGE_GALLERY" "${image_flags[@]}"
    indexed=true
fi
if [ -f "$SOURCES/texts.jsonl" ]; then
    if current "$TEXT_GALLERY"; then
        log "index: $TEXT_GALLERY is up to date, skipped"
    else
        log "index: texts -> $TEXT_GALLERY"
        cmhash index --model "$MODEL" --texts "$SOURCES/texts.jsonl" --out "$TEXT_GALLERY" "${text_flags[@]}"
        indexed=true
    fi
fi

if "$indexed"; then
    log "search: text -> images"
    cmhash search --model "$MODEL" --gallery "$IMAGE_GALLERY" --text "dog on the beach" -k 5
    if [ -f "$SOURCES/texts.jsonl" ]; then
        query_image="$(python -c 'import json, sys; print(json.loads(open(sys.argv[1]).readline())["image"])' "$SOURCES/images.jsonl")"
        log "search: image -> texts ($query_image)"
        cmhash search --model "$MODEL" --gallery "$TEXT_GALLERY" --image "$query_image" -k 5
    fi
fi
log "done: model $MODEL, galleries $IMAGE_GALLERY and $TEXT_GALLERY"

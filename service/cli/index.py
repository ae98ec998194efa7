"""`cmhash index`: build or update a gallery from images or texts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from index.mih import IndexType
from index.store import MilvusIndexType
from model.runtime.choices import Device
from service.cli.common import env_option, flag_option, user_errors

NAME = "index"


def run(
    model: Annotated[
        Path, env_option("Exported model directory (written by `cmhash export`).", "MODEL_DIR", "--model")
    ],
    out: Annotated[Path, flag_option("Gallery directory to create or update.")],
    images: Annotated[Path | None, flag_option("Image folder, or a JSONL manifest with id and image per line.")] = None,
    texts: Annotated[Path | None, flag_option("Text file: one text per line, or .jsonl with id and text.")] = None,
    remove: Annotated[list[str] | None, flag_option("Remove this id from the gallery (repeatable).")] = None,
    prune: Annotated[bool, flag_option("Remove gallery items that are no longer in the input.")] = False,
    rebuild: Annotated[bool, flag_option("Build a fresh gallery and swap it in when complete.")] = False,
    encode_batch: Annotated[int, env_option("Items per encoder call.", "ENCODE_BATCH", min=1)] = 64,
    decode_threads: Annotated[
        int, env_option("Image decoding threads running ahead of the encoder.", "DECODE_THREADS", min=0)
    ] = 2,
    device: Annotated[
        Device, env_option("Where the work runs: auto (CUDA when present), cpu or cuda.", "DEVICE")
    ] = "auto",
    encoder_threads: Annotated[
        int | None, env_option("ONNX Runtime intra-op threads (default: all cores).", "ENCODER_THREADS", min=1)
    ] = None,
    save_every: Annotated[float, env_option("Seconds between intermediate saves (resume point).", "SAVE_EVERY")] = 60.0,
    milvus_uri: Annotated[
        str | None, env_option("Keep a new gallery's codes in Milvus: server URI or Milvus Lite file.", "MILVUS_URI")
    ] = None,
    milvus_collection: Annotated[str, flag_option("Milvus collection of a new gallery.")] = "cmhash_gallery",
    milvus_token: Annotated[
        str | None, env_option("Milvus server credentials (user:password or API key).", "MILVUS_TOKEN")
    ] = None,
    milvus_index: Annotated[
        MilvusIndexType,
        flag_option(
            "Milvus index of a new gallery: BIN_FLAT (exact) or BIN_IVF_FLAT (approximate, faster on large "
            "collections; a Milvus server only, see bench/milvus_recall.py)."
        ),
    ] = "BIN_FLAT",
    milvus_nlist: Annotated[int, flag_option("BIN_IVF_FLAT clusters of a new gallery.", min=1)] = 1024,
    milvus_nprobe: Annotated[int, flag_option("BIN_IVF_FLAT clusters probed per search.", min=1)] = 128,
    progress: Annotated[bool, env_option("Show progress bars.", "PROGRESS")] = True,
    index: Annotated[
        IndexType | None,
        env_option(
            "Search index of a new gallery, kept in its gallery.json: flat (scan every code) or mih (multi-index "
            "hashing: same results, much faster on large galleries of trained codes). Default: the gallery's own, "
            "flat for a new one.",
            "INDEX_TYPE",
            "--index",
        ),
    ] = None,
) -> None:
    """Encode an image folder / manifest or a text file into a gallery; re-runs add only new items."""
    from index.commands import MilvusTarget, build_gallery

    milvus = (
        None
        if milvus_uri is None
        else MilvusTarget(milvus_uri, milvus_collection, milvus_token, milvus_index, milvus_nlist, milvus_nprobe)
    )
    with user_errors():
        report = build_gallery(
            model,
            out,
            images=images,
            texts=texts,
            remove=remove or [],
            prune=prune,
            rebuild=rebuild,
            batch_size=encode_batch,
            workers=decode_threads,
            device=device,
            threads=encoder_threads,
            save_every_s=save_every,
            milvus=milvus,
            index=None if index is None else index,
            progress=progress,
        )
    typer.echo(report.summary())
    typer.echo(f"gallery written to {out}")

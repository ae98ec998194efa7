"""The work behind `cmhash index` and `cmhash search`, one documented function each, usable
from Python without the command line."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from index.gallery import GALLERY_FILE, Gallery, open_or_create, read_info
from index.journal import fold_journal, read_current
from index.locks import WriterLock
from index.mih import IndexType
from index.pipeline import IndexReport, index_items
from index.search import Page, Rerank, check_filter, search_pages
from index.snapshots import CURRENT, write_atomic
from index.sources import Listing, image_listing, text_listing
from index.store import CodeStore
from model.runtime.choices import Device, Modality
from model.runtime.errors import UserError

REPORT_FILE = "last_index_report.json"


def _load_encoder(model_dir: Path, device: Device, threads: int | None) -> Any:
    from model.runtime.encoder import Encoder

    return Encoder.load(model_dir, device=device, threads=threads)


def _is_gallery_dir(path: Path) -> bool:
    return (path / GALLERY_FILE).is_file() or (path / CURRENT).is_file()


@dataclass
class MilvusTarget:
    """Where a new Milvus-backed gallery keeps its codes."""

    uri: str  # server URI (http://host:19530) or a Milvus Lite file path
    collection: str  # collection name (created when missing)
    token: str | None = None  # server credentials, never written to disk
    index_type: str = "BIN_FLAT"  # BIN_FLAT (exact) or BIN_IVF_FLAT (approximate; a server, not Lite)
    nlist: int = 1024  # BIN_IVF_FLAT: clusters, fixed when the collection is created
    nprobe: int = 128  # BIN_IVF_FLAT: clusters probed per search (recall: docs/results.md), kept in store.json


def _open_or_create(
    out: Path, kind: Modality, encoder: Any, milvus: MilvusTarget | None, index: IndexType | None = None
) -> Gallery:
    """The gallery at `out` (checked against the encoder's model and the kind), or a new one
    (FAISS, or Milvus when `milvus` is given) in an empty or new folder. A FAISS store runs on
    the CPU here: indexing only adds, and one-off searches need no GPU mirror."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a gallery folder: choose an empty or new folder")
    if not (out / GALLERY_FILE).is_file() and out.exists() and any(out.iterdir()) and not _is_gallery_dir(out):
        raise UserError(f"{out} exists and is not a gallery: choose an empty or new folder")

    def milvus_store() -> CodeStore:
        from index.milvus_store import MilvusCodeStore

        assert milvus is not None
        return MilvusCodeStore(
            encoder.bits,
            milvus.uri,
            milvus.collection,
            token=milvus.token,
            index_type=milvus.index_type,
            nlist=milvus.nlist,
            nprobe=milvus.nprobe,
        )

    return open_or_create(
        out,
        kind,
        encoder,
        token=milvus.token if milvus else None,
        new_store=milvus_store if milvus else None,
        index=index,
    )


def build_gallery(
    model_dir: Path,
    out: Path,
    *,
    images: Path | None = None,
    texts: Path | None = None,
    remove: list[str] | None = None,
    prune: bool = False,
    rebuild: bool = False,
    batch_size: int = 64,
    workers: int = 2,
    device: Device = "auto",
    threads: int | None = None,
    save_every_s: float = 60.0,
    milvus: MilvusTarget | None = None,
    index: IndexType | None = None,
    progress: bool = True,
) -> IndexReport:
    """Create or update the gallery `out` from an image folder / manifest or a text file,
    encoded with the exported model `model_dir`.

    Only items not yet in the gallery are encoded. `remove` deletes ids (and leaves them out
    of this run's additions; a later run without it adds them back while their source is
    listed); `prune` deletes items whose source is no longer listed; `rebuild` builds a fresh gallery beside the old
    one and swaps it in only when complete, so an interrupted rebuild loses nothing (FAISS
    only: a Milvus gallery is rebuilt by dropping its collection). A new gallery keeps its
    codes in Milvus when `milvus` is given. `index` is a new FAISS gallery's search index ("flat",
    the default, or "mih": multi-index hashing, sub-linear on large galleries); an existing
    gallery keeps the one it was created with (asking for another is refused: rebuild).
    Writes the report to ``out/last_index_report.json``."""
    if (images is None) == (texts is None):
        raise UserError("give exactly one of --images (folder or manifest) or --texts (file)")
    kind: Modality = "image" if images is not None else "text"
    listing: Listing = image_listing(images) if images is not None else text_listing(texts)  # type: ignore[arg-type]
    if index == "mih" and (
        milvus is not None or ((Path(out) / GALLERY_FILE).is_file() and read_info(Path(out)).backend == "milvus")
    ):
        raise UserError("--index mih is a FAISS gallery index; Milvus galleries search on the server")
    encoder = _load_encoder(model_dir, device, threads)
    out = Path(out)
    target = out
    if rebuild:
        if milvus is not None or ((out / GALLERY_FILE).is_file() and read_info(out).backend == "milvus"):
            raise UserError("--rebuild works on FAISS galleries; for Milvus, drop the collection and index again")
        if out.exists() and not _is_gallery_dir(out):
            raise UserError(f"{out} exists and is not a gallery: refusing to replace it")
        target = out.with_name(out.name + ".rebuild")
        shutil.rmtree(target, ignore_errors=True)
    with ExitStack() as writers:  # one writer per gallery: refused while a server or another run writes it
        if rebuild and _is_gallery_dir(out):
            writers.enter_context(WriterLock(out))
        gallery = _open_or_create(target, kind, encoder, milvus, index)
        writers.enter_context(WriterLock(target))
        fold_journal(gallery)  # a killed server's journaled changes first, so this run's come after them
        removed = gallery.store.remove(remove or [])
        if prune:
            listed = {item.id for item in listing.items}
            removed += gallery.store.remove([i for i in gallery.store.ids() if i not in listed])
        dropped = set(remove or [])
        items = [item for item in listing.items if item.id not in dropped]
        report = index_items(
            gallery,
            items,
            encoder,
            batch_size=batch_size,
            workers=workers,
            save_every_s=save_every_s,
            progress=progress,
        )
        report.removed = removed
        report.skipped = listing.rejected + report.skipped
        if rebuild:
            old = out.with_name(out.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            if out.exists():
                out.rename(old)
            target.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        write_atomic(out / REPORT_FILE, json.dumps(report.to_json(), indent=1))
    return report


def search_gallery(
    model_dir: Path,
    gallery_dir: Path,
    *,
    text: str | None = None,
    image: Path | None = None,
    k: int = 10,
    radius: int | None = None,
    device: Device = "auto",
    threads: int | None = None,
    milvus_token: str | None = None,
    filter: Mapping[str, Any] | None = None,
    rerank: Rerank = None,
) -> Page:
    """Encode one text or image query with `model_dir` and return the first `k` nearest items
    of the gallery (or, with `radius`, of those within that Hamming distance, inclusive; `found`
    counts them all, and `nearest` says how far the best match is when none is within),
    ordered by (distance, insertion order); with `filter` (index.search.matches), among the
    items whose metadata match only; with `rerank` (R or "all"), re-ranked by the query's h . b
    (index.search.search_pages). Refuses a gallery built with another model."""
    if (text is None) == (image is None):
        raise UserError("give exactly one query: a text or an image")
    if image is not None and not Path(image).is_file():
        raise UserError(f"{image}: no such image file")
    flt = check_filter(filter)
    encoder = _load_encoder(model_dir, device, threads)
    if text is not None and not encoder.reads_words(text):
        raise UserError(
            f"no word of {text!r} is known to the model (its vocabulary is the words of its training texts)"
        )
    gallery = Gallery.open(gallery_dir, model_checksum=encoder.checksum, bits=encoder.bits, token=milvus_token)
    read_current(gallery)  # what a server acknowledged since its last snapshot
    if text is not None:
        h = encoder.text_representations([text])
    else:
        h = encoder.image_representations(encoder.preprocess_image(Path(image))[None])  # type: ignore[arg-type]
    code = encoder.pack(h)
    page = search_pages(
        gallery.store,
        code,
        [(0, k)],
        radius,
        explain_empty=True,
        filter=flt,
        query_h=h if rerank is not None else None,
        rerank=rerank,
    )[0]
    return replace(page, unknown_words=encoder.unknown_words(text)) if text is not None else page

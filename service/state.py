"""What a running app holds: settings, the encoder, the journaled galleries, the batchers."""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np

from index.faiss_store import gpu_available
from index.gallery import open_or_create
from index.journal import JournaledGallery
from index.search import Page, Rerank, search_pages
from index.sweep import sweep_gallery_dir, sweep_uploads
from model.runtime.choices import Modality
from model.runtime.encoder import Encoder
from service.batching import MicroBatcher
from service.errors import ApiError, not_ready
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("cmhash.service")


@dataclass
class SearchJob:
    """One query waiting in a micro-batch."""

    query: np.ndarray | str  # a preprocessed 3 x S x S image, or a text
    target: Modality  # gallery searched
    offset: int  # results skipped before the page
    k: int  # page size
    radius: int | None  # hash lookup radius, or None for k-NN
    filter: dict[str, Any] | None = None  # metadata filter (index.search.matches), or None for every item
    rerank: Rerank = None  # re-rank by h . b: the Hamming top R, "all", or None (index.search)


class ServiceState:
    """Loaded lazily by `load` (in a thread): until then `ready` is False and routes answer 503."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.encoder: Encoder | None = None
        self.galleries: dict[Modality, JournaledGallery] = {}
        self.error: str | None = None
        self.degraded: dict[Modality, str] = {}  # configured galleries that failed to open -> short reason (no paths)
        self.ready = False
        self.batchers: dict[Modality, MicroBatcher[SearchJob, Page]] = {
            m: MicroBatcher(functools.partial(self.run_batch, m), settings.batch_window_ms, settings.max_batch)
            for m in get_args(Modality)
        }

    def load(self) -> None:
        """Load the model and open (or create) the configured galleries, then sweep leftovers.

        A gallery that cannot be opened (damaged snapshots with no lossless fallback, a
        damaged journal line, a model mismatch...) does not stop the others: it is recorded in
        `degraded` (kind -> reason without server paths), logged with logging.error and
        exported as cmhash_gallery_degraded; requests to it answer 503 naming the gallery.
        A model that fails to load still fails everything (`error`)."""
        s = self.settings
        encoder = Encoder.load(s.model_dir, device=s.device, threads=s.encoder_threads, spinning=s.spinning)
        store_device = "cuda" if s.device == "cuda" or (s.device == "auto" and gpu_available()) else "cpu"
        for kind, path in (("image", s.image_gallery), ("text", s.text_gallery)):
            if path is None:
                continue
            try:
                gallery = open_or_create(path, kind, encoder, device=store_device, token=s.milvus_token)  # type: ignore[arg-type]
                if gallery.fallback is not None:
                    self.metrics.gallery_fallbacks.labels(kind).inc()
                self.galleries[kind] = JournaledGallery(gallery, s.compact_every)  # type: ignore[index]
            except Exception as exc:  # any failure degrades this gallery only
                reason = _without_paths(f"{type(exc).__name__}: {exc}", path)
                self.degraded[kind] = reason  # type: ignore[index]
                self.metrics.gallery_degraded.labels(kind).set(1)
                log.error(
                    "%s gallery %s cannot be opened, it is refused (503) until repaired: %s",
                    kind,
                    path,
                    reason,
                    exc_info=True,
                )
                continue
            self.metrics.gallery_degraded.labels(kind).set(0)
            log.info("%s gallery %s: %d items", kind, path, len(self.galleries[kind]))  # type: ignore[index]
        self._sweep()
        self.encoder = encoder
        self.ready = True

    def _sweep(self) -> None:
        """Remove leftovers of interrupted writes (index.sweep) from the galleries that opened
        and, when the image gallery opened, orphan uploads; logs and counts what went."""
        s = self.settings
        for kind, journaled in self.galleries.items():
            try:
                gone = sweep_gallery_dir(journaled.path)
            except OSError as exc:
                log.warning("sweeping the %s gallery failed: %s", kind, exc)
                continue
            if gone:
                self.metrics.swept_files.labels("gallery").inc(len(gone))
                log.warning(
                    "startup sweep: removed %d leftover file(s) from the %s gallery: %s",
                    len(gone),
                    kind,
                    ", ".join(gone[:20]),
                )
        images = self.galleries.get("image")
        if images is None or s.image_gallery is None:
            return  # without the image gallery nothing says which uploads are live
        folder = s.upload_dir or s.image_gallery / "uploads"  # as service.routers.gallery.upload_dir
        live = set()
        for item_id in images.ids():
            item = images.get(item_id)
            if item is not None and item["metadata"].get("path"):
                live.add(Path(str(item["metadata"]["path"])).name)
        try:
            gone = sweep_uploads(folder, live)
        except OSError as exc:
            log.warning("sweeping the upload directory failed: %s", exc)
            return
        self.metrics.swept_files.labels("upload").inc(len(gone))
        if gone:
            log.warning("startup sweep: removed %d orphan upload file(s)", len(gone))

    def gallery_status(self) -> dict[str, str]:
        """Per configured gallery: "ok", "loading" or "degraded: <reason>" (for /readyz)."""
        s = self.settings
        out: dict[str, str] = {}
        for kind, path in (("image", s.image_gallery), ("text", s.text_gallery)):
            if path is None:
                continue
            if kind in self.degraded:
                out[kind] = f"degraded: {self.degraded[kind]}"
            else:
                out[kind] = "ok" if kind in self.galleries else "loading"
        return out

    def close(self) -> None:
        """Fold the journals into snapshots and close them."""
        for journaled in self.galleries.values():
            journaled.close()

    def require_encoder(self) -> Encoder:
        """The encoder, or 503 while loading (or after a failed load)."""
        if not self.ready or self.encoder is None:
            raise not_ready(f"model not loaded: {self.error}" if self.error else "the model is still loading")
        return self.encoder

    def gallery(self, kind: Modality) -> JournaledGallery:
        """The `kind` gallery, or 503 when not loaded or not configured."""
        self.require_encoder()
        if kind in self.degraded:
            raise ApiError(503, f"the {kind} gallery is unavailable: {self.degraded[kind]}", "gallery_unavailable")
        if kind not in self.galleries:
            raise not_ready(f"no {kind} gallery is configured (set CMHASH_{kind.upper()}_GALLERY)")
        return self.galleries[kind]

    def encode(self, modality: Modality, queries: Sequence[np.ndarray | str]) -> np.ndarray:
        """Packed codes of preprocessed images or texts, in one encoder call (timed)."""
        return self.require_encoder().pack(self.represent(modality, queries))

    def represent(self, modality: Modality, queries: Sequence[np.ndarray | str]) -> np.ndarray:
        """Continuous representations h (B x bits float32) of preprocessed images or texts, in one
        encoder call (timed as `encode`); `Encoder.pack(h)` are their codes."""
        encoder = self.require_encoder()
        start = time.perf_counter()
        if modality == "text":
            h = encoder.text_representations([str(q) for q in queries])
        else:
            h = encoder.image_representations(np.stack([np.asarray(q) for q in queries]))
        self.metrics.encode.labels(modality).observe(time.perf_counter() - start)
        return h

    def run_batch(self, modality: Modality, jobs: Sequence[SearchJob]) -> list[Page]:
        """Encode every job's query at once (h, then its codes), then one `search_pages` per
        (gallery, radius, filter, rerank), all in this worker thread."""
        self.metrics.batch.labels(modality).observe(len(jobs))
        h = self.represent(modality, [j.query for j in jobs])
        codes = self.require_encoder().pack(h)
        out: dict[int, Page] = {}
        groups: dict[tuple[Modality, int | None, str, Rerank], list[int]] = {}
        for i, job in enumerate(jobs):
            key = (job.target, job.radius, json.dumps(job.filter or {}, sort_keys=True), job.rerank)
            groups.setdefault(key, []).append(i)
        for (target, radius, _, rerank), rows in groups.items():
            start = time.perf_counter()
            pages = search_pages(
                self.gallery(target),
                codes[rows],
                [(jobs[i].offset, jobs[i].k) for i in rows],
                radius,
                filter=jobs[rows[0]].filter,
                query_h=h[rows] if rerank is not None else None,
                rerank=rerank,
            )
            self.metrics.search.labels(target).observe(time.perf_counter() - start)
            out.update(zip(rows, pages, strict=True))
        return [out[i] for i in range(len(jobs))]


def _without_paths(message: str, gallery: Path | None = None) -> str:
    """`message` with the gallery directory left out and every other absolute path cut to its
    last component (a reason fit for clients and /readyz)."""
    if gallery is not None:
        for p in {str(gallery), str(Path(gallery).resolve())}:
            message = message.replace(p + "/", "").replace(p, "<gallery>")
    return re.sub(r"(?<![\w.])/(?:[^\s'\"/:,;()]+/)*([^\s'\"/:,;()]*)", r"\1", message)[:300]


def gallery_kind(name: str) -> Modality:
    """ "images" / "texts" in a URL -> the gallery kind; 404 for anything else."""
    kinds: dict[str, Modality] = {"images": "image", "texts": "text"}
    if name not in kinds:
        raise ApiError(404, f"no gallery {name!r}: use images or texts")
    return kinds[name]

"""What a running app holds: settings, the encoder, the journaled galleries, the batchers."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from index.faiss_store import gpu_available
from index.gallery import open_or_create
from index.journal import JournaledGallery
from index.search import Page, search_pages
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


class ServiceState:
    """Loaded lazily by `load` (in a thread): until then `ready` is False and routes answer 503."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.encoder: Encoder | None = None
        self.galleries: dict[Modality, JournaledGallery] = {}
        self.error: str | None = None
        self.ready = False
        self.batchers: dict[Modality, MicroBatcher[SearchJob, Page]] = {
            m: MicroBatcher(lambda jobs, m=m: self.run_batch(m, jobs), settings.batch_window_ms, settings.max_batch)
            for m in ("image", "text")
        }

    def load(self) -> None:
        """Load the model and open (or create) the configured galleries."""
        s = self.settings
        encoder = Encoder.load(s.model_dir, device=s.device, threads=s.encoder_threads, spinning=s.spinning)
        store_device = "cuda" if s.device == "cuda" or (s.device == "auto" and gpu_available()) else "cpu"
        for kind, path in (("image", s.image_gallery), ("text", s.text_gallery)):
            if path is None:
                continue
            gallery = open_or_create(path, kind, encoder, device=store_device, token=s.milvus_token)  # type: ignore[arg-type]
            self.galleries[kind] = JournaledGallery(gallery, s.compact_every)  # type: ignore[index]
            log.info("%s gallery %s: %d items", kind, path, len(self.galleries[kind]))
        self.encoder = encoder
        self.ready = True

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
        if kind not in self.galleries:
            raise not_ready(f"no {kind} gallery is configured (set CMHASH_{kind.upper()}_GALLERY)")
        return self.galleries[kind]

    def encode(self, modality: Modality, queries: Sequence[np.ndarray | str]) -> np.ndarray:
        """Packed codes of preprocessed images or texts, in one encoder call (timed)."""
        encoder = self.require_encoder()
        start = time.perf_counter()
        if modality == "text":
            codes = encoder.encode_texts([str(q) for q in queries])
        else:
            codes = encoder.encode_image_arrays(np.stack([np.asarray(q) for q in queries]))
        self.metrics.encode.labels(modality).observe(time.perf_counter() - start)
        return codes

    def run_batch(self, modality: Modality, jobs: Sequence[SearchJob]) -> list[Page]:
        """Encode every job's query at once, then one `search_pages` per (gallery, radius), all in
        this worker thread."""
        self.metrics.batch.labels(modality).observe(len(jobs))
        codes = self.encode(modality, [j.query for j in jobs])
        out: dict[int, Page] = {}
        groups: dict[tuple[Modality, int | None], list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault((job.target, job.radius), []).append(i)
        for (target, radius), rows in groups.items():
            start = time.perf_counter()
            pages = search_pages(self.gallery(target), codes[rows], [(jobs[i].offset, jobs[i].k) for i in rows], radius)
            self.metrics.search.labels(target).observe(time.perf_counter() - start)
            out.update(zip(rows, pages, strict=True))
        return [out[i] for i in range(len(jobs))]


def gallery_kind(name: str) -> Modality:
    """"images" / "texts" in a URL -> the gallery kind; 404 for anything else."""
    kinds: dict[str, Modality] = {"images": "image", "texts": "text"}
    if name not in kinds:
        raise ApiError(404, f"no gallery {name!r}: use images or texts")
    return kinds[name]

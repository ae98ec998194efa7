"""What a running app holds: settings, the encoder, the journaled galleries, the batchers."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from index.faiss_store import gpu_available
from index.gallery import Kind, open_or_create
from index.journal import JournaledGallery
from model.runtime import Encoder
from service.batching import MicroBatcher
from service.errors import ApiError, not_ready
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("cmhash.service")
Modality = Literal["image", "text"]


@dataclass
class SearchJob:
    """One query waiting in a micro-batch."""

    query: np.ndarray | str  # a preprocessed 3 x S x S image, or a text
    target: Kind  # gallery searched
    offset: int  # results skipped before the page
    k: int  # page size
    radius: int | None  # hash lookup radius, or None for k-NN


@dataclass
class SearchOutcome:
    """One page of results of a job, in (distance, insertion order)."""

    ids: list[str]  # the page's item ids
    distances: list[int]  # Hamming distance of each
    metadata: list[dict[str, Any]]  # stored metadata of each ({} if removed meanwhile)
    found: int  # results before paging: offset + k at most for k-NN, all within the radius


class ServiceState:
    """Loaded lazily by `load` (in a thread): until then `ready` is False and routes answer 503."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.encoder: Encoder | None = None
        self.galleries: dict[Kind, JournaledGallery] = {}
        self.error: str | None = None
        self.ready = False
        self.batchers: dict[Modality, MicroBatcher[SearchJob, SearchOutcome]] = {
            m: MicroBatcher(lambda jobs, m=m: self.run_batch(m, jobs), settings.batch_window_ms, settings.max_batch)
            for m in ("image", "text")
        }

    def load(self) -> None:
        """Load the model and open (or create) the configured galleries."""
        s = self.settings
        encoder = Encoder.load(s.model_dir, device=s.device, threads=s.threads, spinning=s.spinning)
        store_device = "cuda" if s.device == "cuda" or (s.device == "auto" and gpu_available()) else "cpu"
        for kind, path in (("image", s.image_gallery), ("text", s.text_gallery)):
            if path is None:
                continue
            gallery = open_or_create(path, kind, encoder, device=store_device, token=s.milvus_token)  # type: ignore[arg-type]
            self.galleries[kind] = JournaledGallery(gallery, s.compact_every)  # type: ignore[index]
            log.info("%s gallery %s: %d items", kind, path, len(gallery.store))
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

    def gallery(self, kind: Kind) -> JournaledGallery:
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

    def run_batch(self, modality: Modality, jobs: Sequence[SearchJob]) -> list[SearchOutcome]:
        """Encode every job's query at once, then one k-NN search per gallery (at the largest
        offset + k; a prefix of a longer ranking is the shorter ranking) and one range search per
        (gallery, radius), and read the metadata of each job's page, all in this worker thread."""
        self.metrics.batch.labels(modality).observe(len(jobs))
        codes = self.encode(modality, [j.query for j in jobs])
        out: list[SearchOutcome | None] = [None] * len(jobs)
        groups: dict[tuple[Kind, int | None], list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault((job.target, job.radius), []).append(i)
        for (target, radius), rows in groups.items():
            store = self.gallery(target).gallery.store
            start = time.perf_counter()
            if radius is None:
                ids, dists = store.search(codes[rows], max(jobs[i].offset + jobs[i].k for i in rows))
                found = [(ids[row][: jobs[i].offset + jobs[i].k], dists[row]) for row, i in enumerate(rows)]
            else:
                found = store.range_search(codes[rows], radius)
            self.metrics.search.labels(target).observe(time.perf_counter() - start)
            for i, (all_ids, all_dists) in zip(rows, found):
                page = slice(jobs[i].offset, jobs[i].offset + jobs[i].k)
                items = [store.get(x) for x in all_ids[page]]
                out[i] = SearchOutcome(list(all_ids[page]), [int(d) for d in all_dists[page]],
                                       [item["metadata"] if item else {} for item in items], len(all_ids))
        return out  # type: ignore[return-value]


def gallery_kind(name: str) -> Kind:
    """"images" / "texts" in a URL -> the gallery kind; 404 for anything else."""
    kinds: dict[str, Kind] = {"images": "image", "texts": "text"}
    if name not in kinds:
        raise ApiError(404, f"no gallery {name!r}: use images or texts")
    return kinds[name]

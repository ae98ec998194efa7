"""Batch gallery indexing: decode and preprocess in a worker pool while the encoder runs,
add codes to the gallery in batches, save crash-safely as it goes.

Incremental: items whose id is already in the gallery are skipped, so re-running after an
interruption (or after new files arrive) encodes only what is missing. A file that cannot be
read or decoded is reported and skipped; it never aborts the job.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from index.gallery import Gallery
from index.sources import Item
from model.runtime.image import ImageDecodeError


class GalleryEncoder(Protocol):
    """What indexing needs of an encoder (model.runtime.encoder.Encoder provides it)."""

    def preprocess_image(self, source: Path | bytes) -> np.ndarray: ...

    def encode_image_arrays(self, arrays: np.ndarray) -> np.ndarray: ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass
class IndexReport:
    """What one indexing run did."""

    listed: int = 0  # items in the input
    added: int = 0  # items encoded and added
    already_present: int = 0  # items skipped because their id is in the gallery
    removed: int = 0  # items removed (--remove / --prune)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (entry, reason) not indexed
    seconds: float = 0.0  # wall time of the encode-and-add phase
    gallery_size: int = 0  # items in the gallery afterwards

    @property
    def items_per_second(self) -> float:
        return self.added / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """A few human-readable lines: counts, throughput and the skipped entries."""
        lines = [
            f"added {self.added} items in {self.seconds:.1f} s ({self.items_per_second:.1f} items/s); "
            f"{self.already_present} already indexed, {self.removed} removed, {len(self.skipped)} skipped; "
            f"gallery now holds {self.gallery_size} items",
        ]
        lines += [f"  skipped {entry}: {reason}" for entry, reason in self.skipped[:50]]
        if len(self.skipped) > 50:
            lines.append(f"  ... and {len(self.skipped) - 50} more")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "listed": self.listed,
            "added": self.added,
            "already_present": self.already_present,
            "removed": self.removed,
            "seconds": self.seconds,
            "items_per_second": self.items_per_second,
            "gallery_size": self.gallery_size,
            "skipped": [{"entry": e, "reason": r} for e, r in self.skipped],
        }


def _skip_reason(exc: Exception) -> str:
    if isinstance(exc, ImageDecodeError):
        return f"not a decodable image ({exc.__cause__ or exc})"
    if isinstance(exc, OSError):
        return f"unreadable ({exc.strerror or exc})"
    return f"{type(exc).__name__}: {exc}"


def _prepared(
    items: list[Item], prepare: Callable[[Any], Any], workers: int, window: int
) -> Iterator[tuple[Item, Any, Exception | None]]:
    """(item, prepared input or None, error or None) in input order; `workers` threads run
    `prepare` ahead of the consumer, at most `window` items in flight."""
    if workers == 0:
        for item in items:
            try:
                yield item, prepare(item.source), None
            except (OSError, ValueError) as e:
                yield item, None, e
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prepare")
    queued: deque[tuple[Item, Future[Any]]] = deque()
    try:
        it = iter(items)
        for item in it:
            queued.append((item, pool.submit(prepare, item.source)))
            if len(queued) >= window:
                break
        while queued:
            item, fut = queued.popleft()
            nxt = next(it, None)
            if nxt is not None:
                queued.append((nxt, pool.submit(prepare, nxt.source)))
            try:
                yield item, fut.result(), None
            except (OSError, ValueError) as e:
                yield item, None, e
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def index_items(
    gallery: Gallery,
    items: Sequence[Item],
    encoder: GalleryEncoder,
    *,
    batch_size: int = 64,
    workers: int = 2,
    save_every_s: float = 60.0,
    progress: bool = True,
) -> IndexReport:
    """Encode the items not yet in `gallery` and add them; `gallery.kind` says whether items
    are image files (decoded by `workers` threads) or texts. Saves every `save_every_s`
    seconds and at the end; on an interruption (Ctrl-C) saves what was added, then re-raises."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    store = gallery.store
    report = IndexReport(listed=len(items))
    present = set(store.ids())  # one scan, not one lookup per listed item
    todo = [item for item in items if item.id not in present]
    report.already_present = len(items) - len(todo)
    is_image = gallery.info.kind == "image"
    prepare: Callable[[Any], Any] = encoder.preprocess_image if is_image else str

    def flush(batch: list[tuple[Item, Any]]) -> None:
        if not batch:
            return
        inputs = [x for _, x in batch]
        codes = encoder.encode_image_arrays(np.stack(inputs)) if is_image else encoder.encode_texts(inputs)
        store.add([it.id for it, _ in batch], codes, [it.metadata for it, _ in batch])
        report.added += len(batch)
        batch.clear()

    start = last_save = time.perf_counter()
    batch: list[tuple[Item, Any]] = []
    bar = tqdm(total=len(todo), unit="item", desc=f"indexing {gallery.info.kind}s", disable=not progress)
    try:
        for item, prepared, error in _prepared(todo, prepare, workers if is_image else 0, 2 * batch_size):
            bar.update(1)
            if error is not None:
                report.skipped.append((str(item.source) if is_image else item.id, _skip_reason(error)))
                bar.set_postfix(skipped=len(report.skipped))
                continue
            batch.append((item, prepared))
            if len(batch) >= batch_size:
                flush(batch)
                if time.perf_counter() - last_save >= save_every_s:
                    gallery.save()
                    last_save = time.perf_counter()
        flush(batch)
    finally:
        bar.close()
        report.seconds = time.perf_counter() - start
        gallery.save()
        report.gallery_size = len(store)
    return report

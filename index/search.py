"""The one gallery search: pages of hits for packed query codes, used by `cmhash search` and the
service alike, so both rank, page and read metadata the same way."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from index.store import RangeResult, SearchResult


class Searchable(Protocol):
    """What a search reads of a gallery: a `CodeStore`, or a journaled gallery in front of one."""

    def search(self, codes: np.ndarray, k: int) -> SearchResult: ...

    def range_search(self, codes: np.ndarray, radius: int) -> RangeResult: ...

    def get(self, id: str) -> dict[str, Any] | None: ...


class Hit(BaseModel):
    """One search result (also the service's response item)."""

    model_config = ConfigDict(frozen=True)

    rank: int = Field(description="1-based position in the whole ranking (offset + position in the page)")
    id: str = Field(description="gallery item id")
    distance: int = Field(description="Hamming distance between the query code and the item's code")
    metadata: dict[str, Any] = Field(default_factory=dict,
                                     description="what was stored with the item (path, text, labels...)")


@dataclass(frozen=True)
class Page:
    """One query's page of hits, ordered by (Hamming distance, insertion order)."""

    hits: list[Hit]  # the page
    found: int  # results before paging: at most offset + k for k-NN, every item within the radius
    nearest: int | None = None  # distance of the nearest item when a radius search found none (None: unknown)
    unknown_words: list[str] = field(default_factory=list)  # text query words the encoder could not use


def search_pages(
    gallery: Searchable,
    codes: np.ndarray,
    windows: Sequence[tuple[int, int]],
    radius: int | None = None,
    *,
    explain_empty: bool = False,
) -> list[Page]:
    """For each query code (row of `codes`) the page `(offset, k)` of `windows` (one per row):
    the k-NN ranking (one search at the largest offset + k: a prefix of a longer exact ranking is
    the shorter ranking) or, with `radius`, every item within that distance (inclusive).
    `explain_empty`: when a radius search finds nothing, look up the nearest item's distance."""
    codes = np.asarray(codes, dtype=np.uint8)
    if len(windows) != len(codes):
        raise ValueError(f"{len(codes)} query codes but {len(windows)} pages")
    if not len(codes):
        return []
    found: list[tuple[np.ndarray | list[str], np.ndarray]]
    if radius is None:
        ids, dists = gallery.search(codes, max(offset + k for offset, k in windows))
        found = [(ids[row][: offset + k], dists[row][: offset + k]) for row, (offset, k) in enumerate(windows)]
    else:
        found = list(gallery.range_search(codes, radius))
    pages = []
    for row, ((all_ids, all_dists), (offset, k)) in enumerate(zip(found, windows, strict=True)):
        page_ids = list(all_ids[offset : offset + k])
        hits = []
        for position, (item_id, dist) in enumerate(zip(page_ids, all_dists[offset : offset + k], strict=True)):
            item = gallery.get(item_id)
            hits.append(Hit(rank=offset + position + 1, id=item_id, distance=int(dist),
                            metadata=item["metadata"] if item else {}))
        nearest = None
        if radius is not None and not len(all_ids) and explain_empty:
            _, d = gallery.search(codes[row : row + 1], 1)
            nearest = int(d[0][0]) if len(d[0]) else None
        pages.append(Page(hits, len(all_ids), nearest))
    return pages

"""The one gallery search: pages of hits for packed query codes, used by `cmhash search` and the
service alike, so both rank, page and read metadata the same way."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from index.store import RangeResult, SearchResult
from model.runtime.errors import UserError

# A metadata filter: key -> value; an item matches when metadata[key] equals the value (same JSON
# type; numbers compare as numbers) or is a list holding it, for every key.
FilterValue = str | int | float | bool
Filter = Mapping[str, FilterValue]
Candidates = tuple[list[str], np.ndarray, np.ndarray]  # ids, int64 insertion order, n x bits/8 uint8 codes


class Searchable(Protocol):
    """What a search reads of a gallery: a `CodeStore`, or a journaled gallery in front of one."""

    def search(self, codes: np.ndarray, k: int) -> SearchResult: ...

    def range_search(self, codes: np.ndarray, radius: int) -> RangeResult: ...

    def get(self, id: str) -> dict[str, Any] | None: ...


class FilterUnsupported(UserError):
    """The gallery's store cannot restrict a search to matching items (its backend lacks `candidates`)."""


def check_filter(filter: Mapping[str, Any] | None) -> dict[str, FilterValue]:
    """`filter` as a plain dict, or UserError naming the problem: keys are non-empty strings,
    values strings, finite numbers or booleans (never null, lists or objects)."""
    if filter is None:
        return {}
    if not isinstance(filter, Mapping):
        raise UserError(f"a filter must be an object of key -> value, got {type(filter).__name__}")
    out: dict[str, FilterValue] = {}
    for key, value in filter.items():
        if not isinstance(key, str) or not key:
            raise UserError(f"filter keys must be non-empty strings, got {key!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"filter value of {key!r} must be a finite number")
        if not isinstance(value, str | int | float | bool):
            what = "null" if value is None else type(value).__name__
            raise UserError(f"filter value of {key!r} must be a string, number or boolean, not {what} "
                            "(nested values are not supported)")
        out[key] = value
    return out


def _same(stored: Any, value: FilterValue) -> bool:
    """JSON equality: same type (booleans are not numbers; 1 == 1.0), same value."""
    if isinstance(value, bool) or isinstance(stored, bool):
        return isinstance(value, bool) and isinstance(stored, bool) and stored == value
    if isinstance(value, str):
        return isinstance(stored, str) and stored == value
    return isinstance(stored, int | float) and stored == value


def matches(metadata: Mapping[str, Any], filter: Filter) -> bool:
    """Whether an item's metadata matches `filter` (the reference the stores' queries implement):
    for every key, metadata[key] equals the value or is a list holding it."""
    for key, value in filter.items():
        if key not in metadata:
            return False
        stored = metadata[key]
        if not (_same(stored, value) or (isinstance(stored, list) and any(_same(s, value) for s in stored))):
            return False
    return True


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def hamming(query: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """int64 Hamming distances between one packed query code and each row of packed `codes`."""
    if not len(codes):
        return np.zeros(0, dtype=np.int64)
    dist: np.ndarray = _POPCOUNT[np.bitwise_xor(codes, query[None, :])].sum(axis=1, dtype=np.int64)
    return dist


def rank_candidates(codes: np.ndarray, candidates: Candidates, limits: Sequence[int],
                    radius: int | None) -> list[tuple[list[str], np.ndarray]]:
    """Per query code: the candidates by (distance, insertion order), the first `limits[row]`
    (k-NN) or every one within `radius` (inclusive) -- the exact ranking over the candidates."""
    ids, order, cand = candidates
    by_order = np.argsort(order, kind="stable")  # stores return insertion order; make sure
    cand = np.asarray(cand, dtype=np.uint8)[by_order]
    ids = [ids[int(i)] for i in by_order]
    out = []
    for row, limit in zip(np.asarray(codes, dtype=np.uint8), limits, strict=True):
        dist = hamming(row, cand)
        rank = np.argsort(dist, kind="stable")  # ties keep insertion order
        rank = rank[:limit] if radius is None else rank[dist[rank] <= radius]
        out.append(([ids[int(i)] for i in rank], dist[rank]))
    return out


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
    filter: Filter | None = None,
) -> list[Page]:
    """For each query code (row of `codes`) the page `(offset, k)` of `windows` (one per row):
    the k-NN ranking (one search at the largest offset + k: a prefix of a longer exact ranking is
    the shorter ranking) or, with `radius`, every item within that distance (inclusive).
    `explain_empty`: when a radius search finds nothing, look up the nearest item's distance.
    `filter` (see `matches`): rank only the items whose metadata match, with the same rules
    (the store's `candidates` gives their codes; FilterUnsupported when it has none)."""
    codes = np.asarray(codes, dtype=np.uint8)
    if len(windows) != len(codes):
        raise ValueError(f"{len(codes)} query codes but {len(windows)} pages")
    flt = check_filter(filter)
    if not len(codes):
        return []
    found: list[tuple[np.ndarray | list[str], np.ndarray]]
    candidates: Candidates | None = None
    if flt:
        candidates = filter_candidates(gallery, flt)
        found = list(rank_candidates(codes, candidates, [offset + k for offset, k in windows], radius))
    elif radius is None:
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
            if candidates is not None:
                d = hamming(codes[row], np.asarray(candidates[2], dtype=np.uint8))
                nearest = int(d.min()) if len(d) else None
            else:
                _, d = gallery.search(codes[row : row + 1], 1)
                nearest = int(d[0][0]) if len(d[0]) else None
        pages.append(Page(hits, len(all_ids), nearest))
    return pages


def filter_candidates(gallery: Any, filter: Filter) -> Candidates:
    """The gallery's items matching `filter` (ids, insertion order, codes), from its store's
    `candidates`; FilterUnsupported when the store (or the journaled gallery's) has none."""
    candidates = getattr(gallery, "candidates", None)
    if candidates is None:
        raise FilterUnsupported(f"filtered search is not supported by this gallery's store "
                                f"({getattr(gallery, 'backend', type(gallery).__name__)})")
    found: Candidates = candidates(filter)
    return found


def supports_filter(gallery: Any) -> bool:
    """Whether a filtered search of `gallery` (a store, or a journaled gallery in front of one) can run."""
    inner = getattr(getattr(gallery, "gallery", None), "store", gallery)
    return callable(getattr(inner, "candidates", None))

"""The one gallery search: pages of hits for packed query codes, used by `cmhash search` and the
service alike, so both rank, page and read metadata the same way."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from index.store import RangeResult, SearchResult
from model.runtime.errors import UserError

# A metadata filter: key -> value; an item matches when metadata[key] equals the value (same JSON
# type; numbers compare as numbers) or is a list holding it, for every key.
FilterValue = str | int | float | bool
Filter = Mapping[str, FilterValue]
Candidates = tuple[list[str], np.ndarray, np.ndarray]  # ids, int64 insertion order, n x bits/8 uint8 codes
Rerank = int | Literal["all"] | None  # asymmetric re-ranking: None, the Hamming top R, or every item


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
            raise UserError(
                f"filter value of {key!r} must be a string, number or boolean, not {what} "
                "(nested values are not supported)"
            )
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


def rank_candidates(
    codes: np.ndarray, candidates: Candidates, limits: Sequence[int], radius: int | None
) -> list[tuple[list[str], np.ndarray]]:
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
    score: float | None = Field(
        None,
        description="re-ranked searches only: h . b / bits, the query's continuous "
        "representation h against the item's code b in {-1,+1} (higher "
        "is nearer); null for a plain Hamming search and for items "
        "past the re-ranked top R",
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="what was stored with the item (path, text, labels...)"
    )


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
    query_h: np.ndarray | None = None,
    rerank: Rerank = None,
) -> list[Page]:
    """For each query code (row of `codes`) the page `(offset, k)` of `windows` (one per row):
    the k-NN ranking (one search at the largest offset + k: a prefix of a longer exact ranking is
    the shorter ranking) or, with `radius`, every item within that distance (inclusive).
    `explain_empty`: when a radius search finds nothing, look up the nearest item's distance.
    `filter` (see `matches`): rank only the items whose metadata match, with the same rules
    (the store's `candidates` gives their codes; FilterUnsupported when it has none).
    `rerank` (needs `query_h`, one row of continuous representations per query code): an int R
    re-ranks the first R items of that Hamming ranking (cut by stable order: exactly the store's
    k-NN top R, ties at the R-th distance beyond the cut left out) by h . b descending (stable),
    the rest staying in Hamming order; "all" ranks every item (within the radius, matching the
    filter) by h . b descending, ties by insertion order. Paging applies to the re-ranked order."""
    codes = np.asarray(codes, dtype=np.uint8)
    if len(windows) != len(codes):
        raise ValueError(f"{len(codes)} query codes but {len(windows)} pages")
    flt = check_filter(filter)
    if not len(codes):
        return []
    if rerank is not None:
        return _reranked_pages(
            gallery, codes, windows, radius, explain_empty, flt, check_rerank(rerank), _check_h(query_h, codes)
        )
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
            hits.append(
                Hit(
                    rank=offset + position + 1,
                    id=item_id,
                    distance=int(dist),
                    metadata=item["metadata"] if item else {},
                )
            )
        explain = radius is not None and not len(all_ids) and explain_empty
        pages.append(Page(hits, len(all_ids), _nearest(gallery, codes[row], candidates) if explain else None))
    return pages


def _nearest(gallery: Any, code: np.ndarray, candidates: Candidates | None) -> int | None:
    """Distance of the item nearest to `code` (among `candidates` when filtered), None when none."""
    if candidates is not None:
        d = hamming(code, np.asarray(candidates[2], dtype=np.uint8))
        return int(d.min()) if len(d) else None
    _, dists = gallery.search(code[None, :], 1)
    return int(dists[0][0]) if len(dists[0]) else None


def filter_candidates(gallery: Any, filter: Filter) -> Candidates:
    """The gallery's items matching `filter` (ids, insertion order, codes), from its store's
    `candidates`; FilterUnsupported when the store (or the journaled gallery's) has none."""
    candidates = getattr(gallery, "candidates", None)
    if candidates is None:
        raise FilterUnsupported(
            f"filtered search is not supported by this gallery's store "
            f"({getattr(gallery, 'backend', type(gallery).__name__)})"
        )
    found: Candidates = candidates(filter)
    return found


def supports_filter(gallery: Any) -> bool:
    """Whether a filtered search of `gallery` (a store, or a journaled gallery in front of one) can run."""
    inner = getattr(getattr(gallery, "gallery", None), "store", gallery)
    return callable(getattr(inner, "candidates", None))


# --- asymmetric re-ranking (issue 12) -----------------------------------------------------------

# Row v: the 8 bits of byte value v, first bit in the high bit (numpy.packbits order), as float64.
_BYTE_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.float64)
_SCORE_ROWS = 1 << 16  # gallery rows scored per chunk


def check_rerank(rerank: Any) -> int | Literal["all"]:
    """`rerank` as an int >= 1 or "all", or UserError."""
    if rerank == "all":
        return "all"
    if isinstance(rerank, bool) or not isinstance(rerank, int | np.integer) or rerank < 1:
        raise UserError(f'rerank must be a positive number of candidates or "all", got {rerank!r}')
    return int(rerank)


def _check_h(query_h: np.ndarray | None, codes: np.ndarray) -> np.ndarray:
    if query_h is None:
        raise ValueError("a re-ranked search needs the queries' continuous representations (query_h)")
    h = np.asarray(query_h, dtype=np.float64)
    if h.shape != (len(codes), codes.shape[1] * 8):
        raise ValueError(f"query_h must be {len(codes)} x {codes.shape[1] * 8}, got {h.shape}")
    if not np.all(np.isfinite(h)):
        raise ValueError("query_h holds a non-finite value")
    return h


def byte_tables(h: np.ndarray) -> np.ndarray:
    """bits/8 x 256 float64 tables of one query h: entry [j, v] = sum of h over the bits set in
    byte value v at byte j of a packed code."""
    h = np.asarray(h, dtype=np.float64).reshape(-1, 8)
    tables: np.ndarray = h @ _BYTE_BITS.T
    return tables


def asymmetric_scores(h: np.ndarray, packed: np.ndarray) -> np.ndarray:
    """float64 h . b for one query h (length L) and each packed code (n x L/8) read as b in
    {-1,+1}^L: 2 x (sum of h over the set bits) - sum(h), summed from the per-byte lookup tables
    without unpacking the codes. Equal codes get bit-identical scores."""
    packed = np.asarray(packed, dtype=np.uint8)
    tables = byte_tables(h)
    total = float(np.asarray(h, dtype=np.float64).sum())
    out = np.empty(len(packed), dtype=np.float64)
    cols = np.arange(packed.shape[1])[None, :]
    for start in range(0, len(packed), _SCORE_ROWS):
        block = packed[start : start + _SCORE_ROWS]
        out[start : start + len(block)] = 2.0 * tables[cols, block].sum(axis=1) - total
    return out


def _all_candidates(gallery: Any) -> Candidates:
    """Every item (ids, insertion order, codes): the store's `candidates` when it has one, else
    its ids and each item's stored code (slow: a lookup per item)."""
    if supports_filter(gallery):
        return filter_candidates(gallery, {})
    ids = list(gallery.ids())
    codes = np.stack([np.asarray(gallery.get(i)["code"], dtype=np.uint8) for i in ids]) if ids else None
    if codes is None:
        codes = np.zeros((0, 0), dtype=np.uint8)
    return ids, np.arange(len(ids), dtype=np.int64), codes


def _reranked_pages(
    gallery: Any,
    codes: np.ndarray,
    windows: Sequence[tuple[int, int]],
    radius: int | None,
    explain_empty: bool,
    flt: dict[str, FilterValue],
    rerank: int | Literal["all"],
    h: np.ndarray,
) -> list[Page]:
    """`search_pages` with re-ranking (see there)."""
    bits = codes.shape[1] * 8
    candidates: Candidates | None = None
    if flt:
        candidates = filter_candidates(gallery, flt)
    elif rerank == "all":
        candidates = _all_candidates(gallery)
    if candidates is not None:
        by_order = np.argsort(candidates[1], kind="stable")  # stores return insertion order; make sure
        cand = np.asarray(candidates[2], dtype=np.uint8)[by_order]
        cand_ids = [candidates[0][int(i)] for i in by_order]
    pages = []
    scores: list[float | None]
    for row, (offset, k) in enumerate(windows):
        # The ranking (all of it within a radius, else its first offset + k): ids, distances, scores.
        if candidates is not None:
            dist = hamming(codes[row], cand)
            if rerank == "all":
                keep = np.arange(len(dist)) if radius is None else np.flatnonzero(dist <= radius)
                score = asymmetric_scores(h[row], cand[keep])
                resort = np.argsort(-score, kind="stable")  # keep is in insertion order: ties by it
                rank, scores = keep[resort], score[resort].tolist()
            else:
                rank = np.argsort(dist, kind="stable")
                rank = rank[: max(rerank, offset + k)] if radius is None else rank[dist[rank] <= radius]
                head = rank[:rerank]
                score = asymmetric_scores(h[row], cand[head])
                resort = np.argsort(-score, kind="stable")
                rank = np.concatenate([head[resort], rank[rerank:]])
                scores = [*score[resort].tolist(), *([None] * (len(rank) - len(head)))]
            all_ids = [cand_ids[int(i)] for i in rank]
            all_dists = dist[rank]
        else:  # the store's exact Hamming ranking, re-ranking its first R items
            assert rerank != "all"
            if radius is None:
                found_ids, found_d = gallery.search(codes[row : row + 1], max(rerank, offset + k))
                hit_ids, hit_d = list(found_ids[0]), np.asarray(found_d[0], dtype=np.int64)
            else:
                hit_ids, hit_d = gallery.range_search(codes[row : row + 1], radius)[0]
                hit_ids, hit_d = list(hit_ids), np.asarray(hit_d, dtype=np.int64)
            n_head = min(rerank, len(hit_ids))
            head_codes = (
                np.stack([np.asarray(gallery.get(i)["code"], dtype=np.uint8) for i in hit_ids[:n_head]])
                if n_head
                else np.zeros((0, codes.shape[1]), dtype=np.uint8)
            )
            score = asymmetric_scores(h[row], head_codes)
            resort = np.argsort(-score, kind="stable")
            all_ids = [hit_ids[int(i)] for i in resort] + hit_ids[n_head:]
            all_dists = np.concatenate([hit_d[:n_head][resort], hit_d[n_head:]])
            scores = [*score[resort].tolist(), *([None] * (len(hit_ids) - n_head))]
        if radius is None:
            all_ids, all_dists, scores = all_ids[: offset + k], all_dists[: offset + k], scores[: offset + k]
        hits = []
        for position in range(offset, min(offset + k, len(all_ids))):
            item = gallery.get(all_ids[position])
            s = scores[position]
            hits.append(
                Hit(
                    rank=position + 1,
                    id=all_ids[position],
                    distance=int(all_dists[position]),
                    score=None if s is None else s / bits,
                    metadata=item["metadata"] if item else {},
                )
            )
        explain = radius is not None and not len(all_ids) and explain_empty
        pages.append(Page(hits, len(all_ids), _nearest(gallery, codes[row], candidates) if explain else None))
    return pages

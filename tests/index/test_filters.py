"""Filtered search (index.search.search_pages(filter=...)) against a brute-force oracle: filter
the items in Python, then rank them all by (Hamming distance, insertion order); k-NN, radius
(inclusive) and pagination, with many ties, after removals, on the flat and MIH stores."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("faiss")

from index.faiss_store import FaissCodeStore
from index.search import FilterUnsupported, check_filter, matches, search_pages
from model.runtime.errors import UserError

BITS = 24
LABELS = ["dog", "cat", "bird"]


def oracle_match(meta: dict[str, Any], flt: dict[str, Any]) -> bool:
    """The filter semantics written out: equal with the same JSON type, or a list holding it."""

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, bool) or isinstance(b, bool):
            return type(a) is type(b) and a == b
        if isinstance(a, str) or isinstance(b, str):
            return type(a) is type(b) and a == b
        return isinstance(a, int | float) and a == b

    for key, value in flt.items():
        if key not in meta:
            return False
        stored = meta[key]
        if not (same(stored, value) or (isinstance(stored, list) and any(same(s, value) for s in stored))):
            return False
    return True


def oracle(
    items: list[tuple[str, np.ndarray, dict[str, Any]]], q: np.ndarray, flt: dict[str, Any]
) -> list[tuple[str, int]]:
    """Every matching item by (distance, insertion order)."""
    kept = [
        (i, int(np.unpackbits(np.bitwise_xor(code, q)).sum()), pos)
        for pos, (i, code, meta) in enumerate(items)
        if oracle_match(meta, flt)
    ]
    return [(i, d) for i, d, _ in sorted(kept, key=lambda t: (t[1], t[2]))]


def make_items(rng: np.random.Generator, n: int) -> list[tuple[str, np.ndarray, dict[str, Any]]]:
    """Tie-heavy codes (a few centres with few flipped bits) and varied metadata."""
    centres = rng.integers(0, 256, (4, BITS // 8), dtype=np.uint8)
    items = []
    for i in range(n):
        bits = np.unpackbits(centres[i % 4])
        bits[rng.choice(BITS, size=int(rng.integers(0, 3)), replace=False)] ^= 1
        meta: dict[str, Any] = {"n": int(i % 5), "odd": bool(i % 2), "name": f"item {i}"}
        choice = i % 4
        if choice == 0:
            meta["labels"] = LABELS[i % 3]
        elif choice == 1:
            meta["labels"] = [LABELS[i % 3], LABELS[(i + 1) % 3]]
        elif choice == 2:
            meta["labels"] = {"labels": "dog"}  # an object never matches, even holding the value
        if i % 7 == 0:
            meta["n"] = float(meta["n"])  # 2.0 matches 2
        items.append((f"id{i:03d}", np.packbits(bits), meta))
    return items


FILTERS: list[dict[str, Any]] = [
    {"labels": "dog"},
    {"labels": "cat"},
    {"labels": "dog", "odd": True},
    {"n": 2},
    {"n": 2.0},
    {"odd": False},
    {"n": 1, "labels": "bird"},
    {"labels": "fish"},
    {"missing": "x"},
    {"name": "item 3"},
    {"odd": 1},  # a number never matches a boolean
]


@pytest.fixture(params=["flat", "mih"])
def filled(request) -> tuple[FaissCodeStore, list[tuple[str, np.ndarray, dict[str, Any]]], np.ndarray]:
    rng = np.random.default_rng(5)
    items = make_items(rng, 120)
    store = FaissCodeStore(BITS, index=request.param)
    for start in range(0, len(items), 25):
        chunk = items[start : start + 25]
        store.add([i for i, _, _ in chunk], np.stack([c for _, c, _ in chunk]), [m for _, _, m in chunk])
    removed = {f"id{i:03d}" for i in range(0, 120, 9)}
    store.remove(removed)
    kept = [it for it in items if it[0] not in removed]
    queries = np.stack([kept[0][1], kept[1][1], rng.integers(0, 256, BITS // 8, dtype=np.uint8)])
    return store, kept, queries


def test_matches_is_the_oracle() -> None:
    for _, _, meta in make_items(np.random.default_rng(1), 40):
        for flt in FILTERS:
            assert matches(meta, flt) == oracle_match(meta, flt), (meta, flt)


def test_candidates_are_the_matching_items_in_insertion_order(filled) -> None:
    store, items, _ = filled
    for flt in FILTERS:
        ids, order, codes = store.candidates(flt)
        want = [(i, c) for i, c, m in items if oracle_match(m, flt)]
        assert ids == [i for i, _ in want], flt
        assert list(order) == sorted(order)
        np.testing.assert_array_equal(
            codes.reshape(-1, BITS // 8), np.stack([c for _, c in want]).reshape(-1, BITS // 8) if want else codes
        )


@pytest.mark.parametrize("windows", [[(0, 5)], [(3, 4)], [(0, 200)], [(10, 7)], [(90, 5)]])
def test_knn_pages_match_the_oracle(filled, windows) -> None:
    store, items, queries = filled
    for flt in FILTERS:
        for q in queries:
            want = oracle(items, q, flt)
            (page,) = search_pages(store, q[None, :], windows, filter=flt)
            offset, k = windows[0]
            assert [(h.id, h.distance) for h in page.hits] == want[offset : offset + k], flt
            assert [h.rank for h in page.hits] == list(range(offset + 1, offset + 1 + len(page.hits)))
            assert page.found == min(offset + k, len(want))
            assert all(oracle_match(h.metadata, flt) for h in page.hits)


@pytest.mark.parametrize("radius", [0, 1, 2, 5, BITS])
def test_radius_pages_match_the_oracle(filled, radius: int) -> None:
    store, items, queries = filled
    windows = [(0, 3), (2, 4), (0, 1000)]
    for flt in FILTERS:
        pages = search_pages(store, queries, windows, radius, filter=flt, explain_empty=True)
        for q, page, (offset, k) in zip(queries, pages, windows, strict=True):
            want = [(i, d) for i, d in oracle(items, q, flt) if d <= radius]
            assert [(h.id, h.distance) for h in page.hits] == want[offset : offset + k], (flt, radius)
            assert page.found == len(want)
            if not want:
                every = oracle(items, q, flt)
                assert page.nearest == (every[0][1] if every else None)


def test_several_windows_in_one_call_and_ties_keep_insertion_order(filled) -> None:
    store, items, queries = filled
    flt = {"labels": "dog"}
    q = np.repeat(queries[:1], 3, axis=0)
    pages = search_pages(store, q, [(0, 4), (4, 4), (8, 4)], filter=flt)
    joined = [(h.id, h.distance) for p in pages for h in p.hits]
    assert joined == oracle(items, queries[0], flt)[:12]
    dists = [d for _, d in joined]
    assert dists == sorted(dists) and len(set(dists)) < len(dists)  # there are ties to order


def test_empty_filter_is_the_plain_search(filled) -> None:
    store, _, queries = filled
    plain = search_pages(store, queries, [(0, 10)] * 3)
    assert search_pages(store, queries, [(0, 10)] * 3, filter={}) == plain
    assert search_pages(store, queries, [(0, 10)] * 3, filter=None) == plain


def test_bad_filters_are_user_errors() -> None:
    for bad in ({"a": {"b": 1}}, {"a": [1]}, {"a": None}, {"": "x"}, {"a": float("nan")}, ["a"]):
        with pytest.raises(UserError):
            check_filter(bad)  # type: ignore[arg-type]
    assert check_filter({"a": 1, "b": True, "c": "x", "d": 1.5}) == {"a": 1, "b": True, "c": "x", "d": 1.5}


def test_a_store_without_candidates_refuses_a_filter() -> None:
    class Bare:
        backend = "milvus"

        def search(self, codes, k):  # pragma: no cover - never reached
            raise AssertionError

    with pytest.raises(FilterUnsupported, match="milvus"):
        search_pages(Bare(), np.zeros((1, 3), dtype=np.uint8), [(0, 1)], filter={"a": "b"})  # type: ignore[arg-type]


def test_journaled_gallery_delegates(tmp_path) -> None:
    from index.gallery import Gallery, GalleryInfo
    from index.journal import JournaledGallery

    rng = np.random.default_rng(3)
    items = make_items(rng, 30)
    gallery = Gallery.create(tmp_path / "g", GalleryInfo(kind="text", bits=BITS, model_checksum="m" * 64))
    journaled = JournaledGallery(gallery)
    try:
        journaled.add([i for i, _, _ in items], np.stack([c for _, c, _ in items]), [m for _, _, m in items])
        q = items[3][1]
        (page,) = search_pages(journaled, q[None, :], [(1, 5)], filter={"labels": "cat"})
        assert [(h.id, h.distance) for h in page.hits] == oracle(items, q, {"labels": "cat"})[1:6]
    finally:
        journaled.close()

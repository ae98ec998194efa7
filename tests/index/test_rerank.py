"""Asymmetric re-ranking (index.search.search_pages(query_h=..., rerank=...)) against a brute-force
oracle: unpack every code to {-1,+1}, rank by (Hamming distance, insertion order), re-rank the
first R (or every item) by h . b with a stable sort; k-NN, radius, filters and paging, on the flat
and MIH stores and on a store without `candidates` (as Milvus)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("faiss")

from index.faiss_store import FaissCodeStore
from index.search import asymmetric_scores, byte_tables, check_rerank, search_pages
from model.runtime.errors import UserError

BITS = 24
N = 60


def make_items(rng: np.random.Generator) -> list[tuple[str, np.ndarray, dict[str, Any]]]:
    """Tie-heavy codes (a few centres, few flipped bits) so both distance and score ties occur."""
    centres = rng.integers(0, 256, (4, BITS // 8), dtype=np.uint8)
    items = []
    for i in range(N):
        bits = np.unpackbits(centres[i % 4])
        bits[rng.choice(BITS, size=int(rng.integers(0, 4)), replace=False)] ^= 1
        items.append((f"item-{i}", np.packbits(bits), {"odd": bool(i % 2)}))
    return items


def oracle(
    items: list[tuple[str, np.ndarray, dict[str, Any]]],
    q: np.ndarray,
    h: np.ndarray,
    rerank: Any,
    radius: int | None,
    flt: dict[str, Any],
) -> list[tuple[str, int, float | None]]:
    """The whole re-ranked ranking as (id, distance, score or None), written out directly."""
    rows = []
    for pos, (item_id, code, meta) in enumerate(items):
        if any(meta.get(k) != v for k, v in flt.items()):
            continue
        b = np.unpackbits(code).astype(np.float64) * 2 - 1
        d = int(np.unpackbits(np.bitwise_xor(code, q)).sum())
        if radius is not None and d > radius:
            continue
        rows.append((item_id, d, float(h @ b), pos))
    hamming = sorted(rows, key=lambda r: (r[1], r[3]))
    if rerank == "all":
        return [(i, d, s / BITS) for i, d, s, _ in sorted(rows, key=lambda r: (-r[2], r[3]))]
    head = sorted(hamming[:rerank], key=lambda r: -r[2])  # Python's sort is stable
    return [(i, d, s / BITS) for i, d, s, _ in head] + [(i, d, None) for i, d, _, _ in hamming[rerank:]]


class NoCandidates:
    """A store without `candidates` (like Milvus): re-ranking goes through search / get."""

    def __init__(self, store: FaissCodeStore) -> None:
        self.store = store

    def search(self, codes: np.ndarray, k: int) -> Any:
        return self.store.search(codes, k)

    def range_search(self, codes: np.ndarray, radius: int) -> Any:
        return self.store.range_search(codes, radius)

    def get(self, id: str) -> Any:
        return self.store.get(id)

    def ids(self) -> list[str]:
        return self.store.ids()

    def __len__(self) -> int:
        return len(self.store)


@pytest.fixture(params=["flat", "mih", "no-candidates"])
def setup(request: pytest.FixtureRequest) -> tuple[Any, list[tuple[str, np.ndarray, dict[str, Any]]]]:
    rng = np.random.default_rng(3)
    items = make_items(rng)
    store = FaissCodeStore(BITS, index="flat" if request.param == "no-candidates" else request.param)
    store.add([i for i, _, _ in items], np.stack([c for _, c, _ in items]), [m for _, _, m in items])
    store.remove(["item-5", "item-17"])  # insertion order keeps its gaps
    items = [it for it in items if it[0] not in {"item-5", "item-17"}]
    return (NoCandidates(store) if request.param == "no-candidates" else store), items


def queries(rng: np.random.Generator, items: list, n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Query h on a grid of quarters (sums are exact, so score ties are real ties) and their codes."""
    h = rng.integers(-3, 4, (n, BITS)).astype(np.float64) / 4
    h[0] = np.unpackbits(items[7][1]).astype(np.float64) - 0.5  # a query sitting on an item
    return h, np.packbits(h >= 0, axis=1)


def flatten(pages: list) -> list[list[tuple[str, int, float | None]]]:
    return [[(hit.id, hit.distance, hit.score) for hit in page.hits] for page in pages]


@pytest.mark.parametrize("rerank", [1, 5, 13, 200, "all"])
@pytest.mark.parametrize("window", [(0, 10), (3, 7), (8, 20), (50, 10)])
def test_knn_matches_oracle(setup, rerank, window) -> None:
    store, items = setup
    h, codes = queries(np.random.default_rng(0), items)
    pages = search_pages(store, codes, [window] * len(codes), query_h=h, rerank=rerank)
    offset, k = window
    for row, got in enumerate(flatten(pages)):
        want = oracle(items, codes[row], h[row], rerank, None, {})
        assert got == want[offset : offset + k]
        assert [hit.rank for hit in pages[row].hits] == list(range(offset + 1, offset + 1 + len(got)))
        assert pages[row].found == min(offset + k, len(items))


@pytest.mark.parametrize("rerank", [3, 40, "all"])
@pytest.mark.parametrize("radius", [0, 4, 9])
def test_radius_and_filter_match_oracle(setup, rerank, radius) -> None:
    store, items = setup
    h, codes = queries(np.random.default_rng(1), items)
    for flt in ({}, {"odd": True}):
        if flt and isinstance(store, NoCandidates):
            continue  # filters need `candidates`
        pages = search_pages(
            store, codes, [(2, 6)] * len(codes), radius, query_h=h, rerank=rerank, filter=flt, explain_empty=True
        )
        for row, got in enumerate(flatten(pages)):
            want = oracle(items, codes[row], h[row], rerank, radius, flt)
            assert got == want[2:8]
            assert pages[row].found == len(want)


def test_knn_filter_matches_oracle(setup) -> None:
    store, items = setup
    if isinstance(store, NoCandidates):
        pytest.skip("filters need `candidates`")
    h, codes = queries(np.random.default_rng(2), items)
    for rerank in (4, "all"):
        pages = search_pages(store, codes, [(1, 9)] * len(codes), query_h=h, rerank=rerank, filter={"odd": False})
        for row, got in enumerate(flatten(pages)):
            assert got == oracle(items, codes[row], h[row], rerank, None, {"odd": False})[1:10]


def test_plain_search_has_no_score(setup) -> None:
    store, items = setup
    h, codes = queries(np.random.default_rng(4), items)
    plain = search_pages(store, codes, [(0, 10)] * len(codes))
    assert all(hit.score is None for page in plain for hit in page.hits)
    # rerank=1 keeps the Hamming order (one item re-ranked alone) and only scores the first
    one = search_pages(store, codes, [(0, 10)] * len(codes), query_h=h, rerank=1)
    for a, b in zip(plain, one, strict=True):
        assert [x.id for x in a.hits] == [x.id for x in b.hits]
        assert b.hits[0].score is not None and all(x.score is None for x in b.hits[1:])


def test_scores_from_tables_equal_the_dot_product() -> None:
    rng = np.random.default_rng(5)
    for bits in (8, 16, 64, 128):
        h = rng.normal(size=bits)
        b = rng.choice([-1.0, 1.0], size=(300, bits))
        packed = np.packbits(b > 0, axis=1)
        assert byte_tables(h).shape == (bits // 8, 256)
        np.testing.assert_allclose(asymmetric_scores(h, packed), b @ h, rtol=0, atol=1e-9)
        same = asymmetric_scores(h, np.repeat(packed[:1], 3, axis=0))
        assert same[0] == same[1] == same[2]


def test_bad_arguments() -> None:
    store = FaissCodeStore(BITS)
    store.add(["a"], np.zeros((1, BITS // 8), dtype=np.uint8))
    codes = np.zeros((1, BITS // 8), dtype=np.uint8)
    for bad in (0, -1, True, "some", 2.5):
        with pytest.raises(UserError):
            check_rerank(bad)
    with pytest.raises(ValueError, match="query_h"):
        search_pages(store, codes, [(0, 1)], rerank=5)
    with pytest.raises(ValueError, match="query_h"):
        search_pages(store, codes, [(0, 1)], rerank=5, query_h=np.zeros((1, BITS - 8)))
    page = search_pages(store, codes, [(0, 1)], rerank="all", query_h=np.ones((1, BITS)))[0]
    assert page.hits[0].score == -1.0  # b = all -1, h = all +1

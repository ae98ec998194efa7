"""MilvusCodeStore against a real embedded Milvus Lite, checked against two independent
oracles: the FAISS backend on the same data, and brute-force numpy Hamming distances."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import uuid4

import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # milvus_lite imports the deprecated pkg_resources
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
pytest.importorskip("faiss")

from pymilvus import DataType, MilvusClient

from index import milvus_store
from index.faiss_store import FaissCodeStore
from index.milvus_store import STORE_FILE, MilvusCodeStore
from index.store import CodeStore
from model.runtime.codes import hamming_distance_matrix
from model.runtime.errors import UserError

MakeStore = Callable[..., MilvusCodeStore]


# ------------------------------------------------------------------ data and oracles
def tie_heavy_codes(rng: np.random.Generator, n: int, bits: int, n_distinct: int = 6, flip_bits: int = 3) -> np.ndarray:
    """Packed codes from a few prototypes with a few low bits flipped: many exact duplicates
    and many equal distances, so ties straddle every k cut."""
    protos = rng.integers(0, 2, size=(n_distinct, bits), dtype=np.uint8)
    unpacked = protos[rng.integers(0, n_distinct, size=n)].copy()
    unpacked[:, :flip_bits] ^= rng.integers(0, 2, size=(n, flip_bits), dtype=np.uint8)
    return np.packbits(unpacked, axis=1)


def oracle_knn(codes: np.ndarray, ids: list[str], q: np.ndarray, k: int) -> list[tuple[list[str], np.ndarray]]:
    """Brute force: the k nearest per query by (distance, insertion order = list order)."""
    out = []
    for row in hamming_distance_matrix(q, codes):
        pos = sorted(range(len(ids)), key=lambda p: (row[p], p))[:k]
        out.append(([ids[p] for p in pos], row[pos]))
    return out


def oracle_range(codes: np.ndarray, ids: list[str], q: np.ndarray, r: int) -> list[tuple[list[str], np.ndarray]]:
    """Brute force: every item with distance <= r per query, same order."""
    out = []
    for row in hamming_distance_matrix(q, codes):
        pos = [p for p in sorted(range(len(ids)), key=lambda p: (row[p], p)) if row[p] <= r]
        out.append(([ids[p] for p in pos], row[pos]))
    return out


def assert_knn(
    store: MilvusCodeStore, faiss: FaissCodeStore, codes: np.ndarray, ids: list[str], q: np.ndarray, k: int
) -> None:
    """Milvus == FAISS == brute force, ids, order and distances."""
    got_ids, got_d = store.search(q, k)
    ref_ids, ref_d = faiss.search(q, k)
    assert got_d.dtype == np.int64 and got_d.shape == (len(q), min(k, len(ids)))
    assert got_ids == ref_ids, k
    np.testing.assert_array_equal(got_d, ref_d)
    for j, (o_ids, o_d) in enumerate(oracle_knn(codes, ids, q, k)):
        assert got_ids[j] == o_ids, (k, j)
        np.testing.assert_array_equal(got_d[j], o_d)


def assert_range(
    store: MilvusCodeStore, faiss: FaissCodeStore, codes: np.ndarray, ids: list[str], q: np.ndarray, r: int
) -> None:
    got = store.range_search(q, r)
    ref = faiss.range_search(q, r)
    assert len(got) == len(q)
    for (g_ids, g_d), (f_ids, f_d), (o_ids, o_d) in zip(got, ref, oracle_range(codes, ids, q, r)):
        assert g_ids == f_ids == o_ids, r
        assert g_d.dtype == np.int64
        np.testing.assert_array_equal(g_d, f_d)
        np.testing.assert_array_equal(g_d, o_d)


def fill(stores: list, ids: list[str], codes: np.ndarray, batch: int = 37) -> None:
    """Add the same items to every store, in batches (the counter must carry across calls)."""
    for s in range(0, len(ids), batch):
        meta = [{"i": i} for i in range(s, min(len(ids), s + batch))]
        for store in stores:
            store.add(ids[s : s + batch], codes[s : s + batch], meta)


class AdversarialTies:
    """Wraps the MilvusClient: searches return valid hits (exact distances, a valid top-limit
    set) with ties ordered largest pk first, which Milvus is free to do."""

    def __init__(self, inner: MilvusClient) -> None:
        self._inner = inner

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def search(self, collection_name: str, *, limit: int, **kwargs) -> list[list]:
        res = self._inner.search(collection_name, limit=milvus_store.MAX_TOPK, **kwargs)
        return [sorted(hits, key=lambda h: (h["distance"], -h["id"]))[:limit] for hits in res]


class ShortHits:
    """Wraps the MilvusClient: every search returns at most its first `cap` hits, like an IVF
    search whose probed lists hold only `cap` items."""

    def __init__(self, inner: MilvusClient, cap: int) -> None:
        self._inner = inner
        self._cap = cap

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def search(self, collection_name: str, **kwargs) -> list[list]:
        return [hits[: self._cap] for hits in self._inner.search(collection_name, **kwargs)]


# ------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> Iterator[str]:
    """One Milvus Lite instance (one db file) for the module; each test uses its own collections."""
    path = str(tmp_path_factory.mktemp("milvus") / "gallery.db")
    yield path
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(path)


@pytest.fixture
def make_store(uri: str) -> Iterator[MakeStore]:
    """Factory of stores on fresh collections, closed after the test."""
    made: list[MilvusCodeStore] = []

    def make(bits: int, collection: str | None = None, **kwargs) -> MilvusCodeStore:
        store = MilvusCodeStore(bits, uri, collection or f"c_{uuid4().hex}", **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture(scope="module", params=[16, 32, 64])
def gallery(request, uri: str):
    """A tie-heavy plus random gallery with some removals, in Milvus and in FAISS."""
    bits = request.param
    rng = np.random.default_rng(bits)
    codes = np.concatenate(
        [tie_heavy_codes(rng, 220, bits), rng.integers(0, 256, size=(80, bits // 8), dtype=np.uint8)]
    )
    ids = [f"item-{i:04d}" for i in range(len(codes))]
    store = MilvusCodeStore(bits, uri, f"gallery_{bits}")
    faiss = FaissCodeStore(bits)
    fill([store, faiss], ids, codes)
    gone = set(rng.choice(ids, size=40, replace=False).tolist())
    assert store.remove(gone) == faiss.remove(gone) == 40
    keep = [p for p in range(len(ids)) if ids[p] not in gone]
    queries = np.concatenate([codes[rng.integers(0, len(codes), 8)], tie_heavy_codes(rng, 4, bits), codes[:1] ^ 0xFF])
    yield store, faiss, codes[keep], [ids[p] for p in keep], queries
    store.close()


# ------------------------------------------------------------------- search parity
def test_knn_matches_faiss_and_brute_force(gallery):
    store, faiss, codes, ids, queries = gallery
    assert len(store) == len(faiss) == len(ids)
    for k in (1, 3, 10, 50, len(ids) - 1, len(ids), len(ids) + 5):
        assert_knn(store, faiss, codes, ids, queries, k)


def test_range_search_is_inclusive_and_matches_faiss(gallery):
    store, faiss, codes, ids, queries = gallery
    bits = store.bits
    dist = hamming_distance_matrix(queries, codes)
    for r in sorted({0, 1, 2, bits // 4, bits // 2, bits - 1, bits, bits + 7, int(dist.min()), int(np.median(dist))}):
        assert_range(store, faiss, codes, ids, queries, r)
    assert all(len(i) == len(ids) for i, _ in store.range_search(queries, bits))


def test_empty_store_and_k_larger_than_gallery(make_store: MakeStore):
    store = make_store(32)
    q = np.zeros((2, 4), dtype=np.uint8)
    ids, d = store.search(q, 5)
    assert ids == [[], []] and d.shape == (2, 0)
    assert [(i, d.tolist()) for i, d in store.range_search(q, 32)] == [([], []), ([], [])]
    assert store.search(q[:0], 3)[0] == [] and store.range_search(q[:0], 3) == []
    codes = np.zeros((3, 4), dtype=np.uint8)
    codes[1, 0] = 1
    store.add(["a", "b", "c"], codes)
    ids, d = store.search(q[:1], 10)
    assert ids == [["a", "c", "b"]]
    np.testing.assert_array_equal(d, [[0, 0, 1]])
    assert store.search(q[0], 0)[1].shape == (1, 0)  # a single 1-D code is one query


@pytest.mark.parametrize("bits", [16, 64])
def test_tie_order_does_not_depend_on_milvus_tie_order(make_store: MakeStore, bits: int):
    rng = np.random.default_rng(40 + bits)
    codes = tie_heavy_codes(rng, 150, bits)
    ids = [f"t{i}" for i in range(150)]
    store, faiss = make_store(bits), FaissCodeStore(bits)
    fill([store, faiss], ids, codes)
    store._client = AdversarialTies(store._client)
    queries = codes[rng.integers(0, 150, 10)]
    for k in (1, 5, 30):
        assert_knn(store, faiss, codes, ids, queries, k)
    assert_range(store, faiss, codes, ids, queries, bits // 4)


def tie_heavy_pair_with_gaps(
    make_store: MakeStore, rng: np.random.Generator, n: int, n_distinct: int, removed: int, prefix: str
) -> tuple[MilvusCodeStore, FaissCodeStore, np.ndarray, list[str]]:
    """A 16-bit Milvus store and its FAISS oracle holding the same tie-heavy codes, with
    `removed` random items then removed from both (gaps in the pk space); returns the stores
    and the codes and ids left, in insertion order."""
    codes = tie_heavy_codes(rng, n, 16, n_distinct=n_distinct)
    ids = [f"{prefix}{i}" for i in range(n)]
    store, faiss = make_store(16), FaissCodeStore(16)
    fill([store, faiss], ids, codes)
    gone = set(rng.choice(ids, size=removed, replace=False).tolist())
    assert store.remove(gone) == faiss.remove(gone) == removed
    keep = [p for p in range(n) if ids[p] not in gone]
    return store, faiss, codes[keep], [ids[p] for p in keep]


def test_result_cap_is_worked_around_by_pk_windows(make_store: MakeStore, monkeypatch):
    """With the cap lowered to 32, capped range searches, ties straddling the cut beyond the
    cap, and k above the cap all go through the pk-window scan, over sparse windows."""
    monkeypatch.setattr(milvus_store, "MAX_TOPK", 32)
    rng = np.random.default_rng(7)
    store, faiss, codes, ids = tie_heavy_pair_with_gaps(make_store, rng, 300, 3, 90, "w")
    store._client = AdversarialTies(store._client)
    queries = codes[rng.integers(0, len(ids), 5)]
    for k in (5, 31, 32, 40, len(ids), 1000):
        assert_knn(store, faiss, codes, ids, queries, k)
    for r in (0, 2, 16):
        assert_range(store, faiss, codes, ids, queries, r)
    assert store.ids() == faiss.ids() == ids


def test_short_search_results_are_answered_exactly(make_store: MakeStore, monkeypatch):
    """Searches that come back with fewer than k hits (as BIN_IVF_FLAT's may) are redone by the
    exact path over every pk window (cap lowered to 32: sparse windows after removals), tie
    order included, and counted in ``stats``."""
    monkeypatch.setattr(milvus_store, "MAX_TOPK", 32)
    rng = np.random.default_rng(9)
    store, faiss, codes, ids = tie_heavy_pair_with_gaps(make_store, rng, 200, 4, 60, "s")
    store._client = ShortHits(store._client, 3)
    queries = codes[rng.integers(0, len(ids), 6)]
    for n_search, k in enumerate((4, 10, 33, len(ids), len(ids) + 5), start=1):
        assert_knn(store, faiss, codes, ids, queries, k)
        assert store.stats["exact_fallbacks"] == n_search * len(queries)


def test_real_topk_cap(make_store: MakeStore):
    """More items than Milvus's 16384 cap at distance 0: the straddling tie, k above the cap
    and the range search all need every one of them."""
    n = milvus_store.MAX_TOPK + 600
    rng = np.random.default_rng(3)
    codes = np.zeros((n, 2), dtype=np.uint8)
    codes[-500:] = rng.integers(0, 256, size=(500, 2), dtype=np.uint8)
    ids = [f"r{i}" for i in range(n)]
    store, faiss = make_store(16), FaissCodeStore(16)
    fill([store, faiss], ids, codes, batch=6000)
    q = np.zeros((1, 2), dtype=np.uint8)
    for k in (10, milvus_store.MAX_TOPK + 50):
        got_ids, got_d = store.search(q, k)
        ref_ids, ref_d = faiss.search(q, k)
        assert got_ids == ref_ids and np.array_equal(got_d, ref_d)
    [(got_ids, got_d)] = store.range_search(q, 0)
    [(ref_ids, ref_d)] = faiss.range_search(q, 0)
    assert len(got_ids) > milvus_store.MAX_TOPK
    assert got_ids == ref_ids and np.array_equal(got_d, ref_d)


# ---------------------------------------------------------------- items and ids
def test_large_adds_insert_in_bounded_batches_with_consecutive_pks(make_store: MakeStore, monkeypatch):
    """An add larger than the per-call row cap goes in several insert calls (pymilvus's row
    packing is quadratic in rows per call), and the pks stay consecutive across them."""
    monkeypatch.setattr(milvus_store, "_INSERT_ROWS", 7)
    rng = np.random.default_rng(12)
    codes = rng.integers(0, 256, size=(35, 4), dtype=np.uint8)
    ids = [f"b{i}" for i in range(35)]
    store, faiss = make_store(32), FaissCodeStore(32)
    sizes: list[int] = []
    insert = store._client.insert
    monkeypatch.setattr(store._client, "insert", lambda name, rows: sizes.append(len(rows)) or insert(name, rows))
    for st in (store, faiss):
        st.add(ids[:30], codes[:30])
        st.add(ids[30:], codes[30:])
    assert sizes == [7, 7, 7, 7, 2, 5]
    assert store._next_id == 35 and store._max_pk() == 34 and store.ids() == ids
    assert_knn(store, faiss, codes, ids, codes[:4], 12)


def test_add_failing_in_a_later_insert_call_leaves_nothing(make_store: MakeStore, monkeypatch):
    """An add whose third insert call fails has stored its first two calls' rows: they are
    deleted before the error propagates, so the store reads as before (oracle: FAISS with the
    first add only), and the same ids can be added again."""
    monkeypatch.setattr(milvus_store, "_INSERT_ROWS", 5)
    rng = np.random.default_rng(13)
    codes = rng.integers(0, 256, size=(30, 4), dtype=np.uint8)
    ids = [f"f{i}" for i in range(30)]
    store, faiss = make_store(32), FaissCodeStore(32)
    for st in (store, faiss):
        st.add(ids[:8], codes[:8])
    calls: list[int] = []
    insert = store._client.insert

    def failing_insert(name: str, rows: list) -> object:
        calls.append(len(rows))
        if len(calls) == 3:
            raise ConnectionError("server went away")
        return insert(name, rows)

    monkeypatch.setattr(store._client, "insert", failing_insert)
    with pytest.raises(ConnectionError):
        store.add(ids[8:], codes[8:])
    assert calls == [5, 5, 5]
    assert len(store) == 8 and store.ids() == ids[:8]
    assert_knn(store, faiss, codes[:8], ids[:8], codes[8:12], 8)
    monkeypatch.setattr(store._client, "insert", insert)
    for st in (store, faiss):
        st.add(ids[8:], codes[8:])
    assert store.ids() == faiss.ids() == ids
    assert_knn(store, faiss, codes, ids, codes[:4], 12)


def test_add_remove_get_and_awkward_ids(make_store: MakeStore):
    store = make_store(16)
    odd = ['quote"d', "single'q", "back\\slash", "new\nline", "cr\rx", "nul\x00x", "ünï😀", "a,b]", ""]
    ids = [f"x{i}" for i in range(10)] + odd
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, size=(len(ids), 2), dtype=np.uint8)
    meta = [{"i": i, "tags": ["a", "b"], "nested": {"x": 1.5, "none": None}} for i in range(len(ids))]
    store.add(ids, codes, meta)
    assert isinstance(store, CodeStore)
    assert len(store) == len(ids) and store.ids() == ids
    for i, sid in enumerate(ids):
        assert sid in store
        item = store.get(sid)
        assert item["id"] == sid and item["metadata"] == meta[i]
        assert item["code"].dtype == np.uint8
        np.testing.assert_array_equal(item["code"], codes[i])
    got, d = store.search(codes, 1)
    assert [row[0] for row in got] == ids and not d.any()  # codes are distinct
    assert store.get("missing") is None and "missing" not in store and 3 not in store
    assert store.remove([*odd[:4], "missing", "\ud800"]) == 4
    assert store.remove(odd[:4]) == 0
    assert len(store) == len(ids) - 4 and store.ids() == [i for i in ids if i not in odd[:4]]
    assert store.get(odd[0]) is None and odd[0] not in store
    store.add([odd[0]], codes[:1])  # re-adding a removed id is allowed, at the back of the tie order
    assert store.ids()[-1] == odd[0]
    assert store.search(codes[:1], 2)[0] == [["x0", odd[0]]]


def test_duplicate_ids_rejected_store_unchanged(make_store: MakeStore):
    store = make_store(32)
    rng = np.random.default_rng(9)
    codes = tie_heavy_codes(rng, 50, 32)
    ids = [f"d{i}" for i in range(50)]
    store.add(ids, codes)
    before = store.search(codes[:5], 10)
    new = np.zeros((2, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match="already present"):
        store.add(["fresh", ids[3]], new)
    with pytest.raises(ValueError, match="within call"):
        store.add(["x", "x"], new)
    assert len(store) == 50 and "fresh" not in store and "x" not in store
    after = store.search(codes[:5], 10)
    assert before[0] == after[0] and np.array_equal(before[1], after[1])
    store.add(["fresh", "x"], new)
    assert len(store) == 52 and store.ids()[-2:] == ["fresh", "x"]


def test_validation_errors(make_store: MakeStore, uri: str):
    store = make_store(16)
    bad_adds = [
        (["a"], np.zeros((1, 4), dtype=np.uint8), None),  # wrong width
        (["a"], np.zeros((1, 2), dtype=np.int64), None),  # not packed
        (["a", "b"], np.zeros((1, 2), dtype=np.uint8), None),  # count mismatch
        (["a"], np.zeros((1, 2), dtype=np.uint8), [{}, {}]),  # metadata count
        (["a"], np.zeros((1, 2), dtype=np.uint8), [{"x": object()}]),  # not JSON
        ([1], np.zeros((1, 2), dtype=np.uint8), None),  # not a str id
        (["\ud800"], np.zeros((1, 2), dtype=np.uint8), None),  # not UTF-8 encodable
        (["y" * 40000], np.zeros((1, 2), dtype=np.uint8), None),  # too long for VARCHAR
    ]
    for ids, codes, meta in bad_adds:
        with pytest.raises(ValueError):
            store.add(ids, codes, meta)
    assert len(store) == 0
    q = np.zeros((1, 2), dtype=np.uint8)
    for bad in (-1, 1.5):
        with pytest.raises(ValueError):
            store.search(q, bad)
        with pytest.raises(ValueError):
            store.range_search(q, bad)
    for kwargs in ({"bits": 12}, {"bits": True}, {"index_type": "HNSW"}, {"index_type": "BIN_IVF_FLAT"}, {"nprobe": 0}):
        with pytest.raises((ValueError, UserError)):  # a choice the user made (index type) is a UserError
            MilvusCodeStore(**{"bits": 16, "uri": uri, "collection": "never_made", **kwargs})
    with pytest.raises(UserError, match="collection name"):
        MilvusCodeStore(16, uri, "bad-name")
    with pytest.raises(UserError, match="no collection"):
        MilvusCodeStore(16, uri, "never_made", create=False)


# ----------------------------------------------------------------- persistence
def test_save_load_round_trip(make_store: MakeStore, tmp_path: Path):
    rng = np.random.default_rng(5)
    codes = tie_heavy_codes(rng, 120, 64)
    ids = [f"s{i}" for i in range(120)]
    store, faiss = make_store(64), FaissCodeStore(64)
    fill([store, faiss], ids, codes)
    store.remove(ids[110:])  # the largest pks are gone: the counter must not go back
    faiss.remove(ids[110:])
    store.save(tmp_path / "s")
    assert [p.name for p in (tmp_path / "s").iterdir()] == [STORE_FILE]
    state = json.loads((tmp_path / "s" / STORE_FILE).read_text())
    assert state["backend"] == "milvus" and state["bits"] == 64 and state["next_id"] == 120
    assert state["collection"] == store.collection and Path(state["uri"]).is_absolute()
    store.close()

    loaded = MilvusCodeStore.load(tmp_path / "s")
    assert loaded.bits == 64 and len(loaded) == 110 and loaded.ids() == ids[:110]
    q = codes[rng.integers(0, 110, 6)]
    assert_knn(loaded, faiss, codes[:110], ids[:110], q, 20)
    assert_range(loaded, faiss, codes[:110], ids[:110], q, 16)
    assert loaded.get(ids[30])["metadata"] == {"i": 30}
    np.testing.assert_array_equal(loaded.get(ids[30])["code"], codes[30])
    loaded.add(["new"], codes[[0]])  # ranks after every existing tie
    faiss.add(["new"], codes[[0]])
    got, _ = loaded.search(codes[[0]], len(loaded))
    assert got == faiss.search(codes[[0]], len(faiss))[0] and got[0].index("new") > got[0].index(ids[0])
    loaded.close()


def test_reopen_without_sidecar_recovers_the_counter(make_store: MakeStore):
    store = make_store(16)
    codes = np.zeros((5, 2), dtype=np.uint8)
    store.add([f"o{i}" for i in range(5)], codes)
    other = make_store(16, store.collection)  # a second handle finds the counter in Milvus
    other.add(["late"], codes[:1])
    assert store.search(codes[:1], 6)[0] == [["o0", "o1", "o2", "o3", "o4", "late"]]


def test_crash_during_save_keeps_previous_sidecar(make_store: MakeStore, tmp_path: Path, monkeypatch):
    store = make_store(16)
    store.add(["a"], np.zeros((1, 2), dtype=np.uint8))
    store.save(tmp_path)
    before = (tmp_path / STORE_FILE).read_text()
    store.add(["b"], np.zeros((1, 2), dtype=np.uint8))

    def crash(src, dst):
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        store.save(tmp_path)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == [STORE_FILE]
    assert (tmp_path / STORE_FILE).read_text() == before
    store.save(tmp_path)
    assert json.loads((tmp_path / STORE_FILE).read_text())["next_id"] == 2


def test_dim_mismatch_and_foreign_collections_refused(make_store: MakeStore, uri: str, tmp_path: Path):
    store = make_store(32)
    with pytest.raises(UserError, match="32-bit codes, not 64"):
        MilvusCodeStore(64, uri, store.collection)
    store.save(tmp_path)
    state = json.loads((tmp_path / STORE_FILE).read_text())
    (tmp_path / STORE_FILE).write_text(json.dumps({**state, "bits": 16}))
    with pytest.raises(UserError, match="32-bit codes, not 16"):
        MilvusCodeStore.load(tmp_path)
    (tmp_path / STORE_FILE).write_text(json.dumps({**state, "backend": "faiss"}))
    with pytest.raises(ValueError, match="not a Milvus store"):
        MilvusCodeStore.load(tmp_path)
    client = MilvusClient(uri, alias="foreign")
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.BINARY_VECTOR, dim=8)
    client.create_collection("foreign", schema=schema)
    client.close()
    with pytest.raises(UserError, match="not a code store"):
        MilvusCodeStore(8, uri, "foreign")

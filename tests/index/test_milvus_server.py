"""MilvusCodeStore against a real standalone Milvus server (PyPI `milvus` 2.3.5), not Milvus
Lite: read-your-writes without sleeping, exact parity with the FAISS store over sealed and
growing segments, duplicate-id and remove semantics, BIN_IVF_FLAT, and a server restart on the
same data. One server for the module, in a fresh temporary data directory, reachable on
127.0.0.1 only (bench/milvus_recall.py's LocalMilvus); skipped where the `milvus` package is
missing or the server does not start in time."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # pymilvus may import the deprecated pkg_resources
    pytest.importorskip("pymilvus")
pytest.importorskip("milvus")  # the embedded standalone server package
pytest.importorskip("faiss")

from bench.milvus_recall import LocalMilvus, wait_indexed
from index.errors import DuplicateIdError
from index.faiss_store import FaissCodeStore
from index.milvus_store import MilvusCodeStore
from model.runtime.codes import hamming_distance_matrix

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LocalMilvus]:
    """One Milvus server for the module: fresh data dir, 127.0.0.1, a free port; stopped at teardown."""
    srv = LocalMilvus(tmp_path_factory.mktemp("milvus-server"))
    try:
        srv.start(START_TIMEOUT_S)
    except (RuntimeError, OSError) as exc:
        srv.close()
        pytest.skip(f"standalone Milvus did not start: {str(exc).splitlines()[0]}")
    yield srv
    srv.close()


@pytest.fixture
def stores(server: LocalMilvus) -> Iterator[list[MilvusCodeStore]]:
    """Stores the test opens (on fresh collections by default), closed afterwards."""
    made: list[MilvusCodeStore] = []
    yield made
    for store in made:
        store.close()


def new_store(
    server: LocalMilvus, made: list[MilvusCodeStore], bits: int, collection: str | None = None, **kwargs
) -> MilvusCodeStore:
    store = MilvusCodeStore(bits, server.uri, collection or f"c_{uuid4().hex}", **kwargs)
    made.append(store)
    return store


def random_codes(rng: np.random.Generator, n: int, bits: int, dup_share: float = 0.1) -> np.ndarray:
    """Random packed codes, a share of them copies of earlier rows (exact ties at every width)."""
    codes = rng.integers(0, 256, size=(n, bits // 8), dtype=np.uint8)
    dup = rng.choice(np.arange(1, n), size=int(n * dup_share), replace=False)
    codes[dup] = codes[rng.integers(0, dup)]
    return codes


def assert_same(
    store: MilvusCodeStore, faiss: FaissCodeStore, queries: np.ndarray, ks: list[int], radii: list[int]
) -> None:
    """Milvus == FAISS: ids, order (ties by insertion) and distances, k-NN and radius search."""
    for k in ks:
        got_ids, got_d = store.search(queries, k)
        ref_ids, ref_d = faiss.search(queries, k)
        assert got_ids == ref_ids, k
        assert got_d.dtype == np.int64
        np.testing.assert_array_equal(got_d, ref_d)
    for r in radii:
        for (g_ids, g_d), (f_ids, f_d) in zip(
            store.range_search(queries, r), faiss.range_search(queries, r), strict=True
        ):
            assert g_ids == f_ids, r
            np.testing.assert_array_equal(g_d, f_d)


# ------------------------------------------------------------------ read your writes
def test_reads_see_writes_immediately(server: LocalMilvus, stores: list[MilvusCodeStore]):
    """Every read right after a write (no sleep, no flush) sees it, in this handle and in a
    second client on the same collection."""
    store = new_store(server, stores, 64)
    other = new_store(server, stores, 64, store.collection)
    rng = np.random.default_rng(11)
    codes = rng.integers(0, 256, size=(40, 8), dtype=np.uint8)
    ids = [f"w{i}" for i in range(40)]
    for i in range(0, 40, 8):
        store.add(ids[i : i + 8], codes[i : i + 8], [{"i": j} for j in range(i, i + 8)])
        for reader in (store, other):
            assert len(reader) == i + 8
            assert ids[i + 7] in reader
            item = reader.get(ids[i + 3])
            assert item is not None and item["metadata"] == {"i": i + 3}
            np.testing.assert_array_equal(item["code"], codes[i + 3])
            got, d = reader.search(codes[i : i + 8], 1)
            assert [row[0] for row in got] == ids[i : i + 8] and not d.any()
    for sid in ids[:10]:
        assert store.remove([sid]) == 1
        for reader in (store, other):
            assert reader.get(sid) is None and sid not in reader
            got, _ = reader.search(codes[: ids.index(sid) + 1], 40)
            assert all(sid not in row for row in got)
            assert all(sid not in row for row, _ in reader.range_search(codes[:2], 64))
    assert len(other) == 30 and other.ids() == ids[10:]
    other.add(["late"], codes[:1])  # the second handle's counter comes after the first's pks
    got, d = store.search(codes[:1], 1)
    assert got == [["late"]] and store.ids()[-1] == "late"


# ------------------------------------------------------------------ parity with FAISS
@pytest.mark.parametrize("bits", [32, 64, 128])
def test_bin_flat_matches_faiss(server: LocalMilvus, stores: list[MilvusCodeStore], bits: int):
    """Random codes with duplicates, added in batches with a flush in between (sealed and
    growing segments) and some removed: the same results, distances and tie order as FAISS."""
    rng = np.random.default_rng(bits)
    n = 3000
    codes = random_codes(rng, n, bits)
    ids = [f"r{i:05d}" for i in range(n)]
    store, faiss = new_store(server, stores, bits), FaissCodeStore(bits)
    for s in range(0, n, 700):
        for st in (store, faiss):
            st.add(ids[s : s + 700], codes[s : s + 700])
        if s == 1400:
            store._client.flush(store.collection)
    gone = rng.choice(ids, size=300, replace=False).tolist()
    assert store.remove(gone) == faiss.remove(gone) == 300
    assert len(store) == len(faiss) == n - 300 and store.ids() == faiss.ids()
    queries = np.concatenate([codes[rng.integers(0, n, 12)], rng.integers(0, 256, (4, bits // 8), dtype=np.uint8)])
    dist = hamming_distance_matrix(queries, codes)
    radii = sorted({0, 1, bits // 4, int(np.percentile(dist, 1)), int(np.percentile(dist, 5))})
    assert_same(store, faiss, queries, [1, 10, 100, n - 300, n], radii)


def test_duplicate_ids_and_remove_like_faiss(server: LocalMilvus, stores: list[MilvusCodeStore]):
    """The same operations on both stores: the same errors, counts, ids and rankings."""
    store, faiss = new_store(server, stores, 32), FaissCodeStore(32)
    rng = np.random.default_rng(5)
    codes = random_codes(rng, 60, 32, dup_share=0.3)
    ids = [f"d{i}" for i in range(60)]
    both = (store, faiss)
    for st in both:
        st.add(ids, codes)
    bad = [(["fresh", ids[3]], codes[:2], "already present"), (["x", "x"], codes[:2], "within call")]
    for bad_ids, bad_codes, match in bad:
        for st in both:
            with pytest.raises(DuplicateIdError, match=match):
                st.add(bad_ids, bad_codes)
    assert "fresh" not in store and "x" not in store and len(store) == len(faiss) == 60
    assert store.remove([*ids[:5], "missing", "\ud800", ids[0]]) == faiss.remove([*ids[:5], "missing", ids[0]]) == 5
    assert store.remove(ids[:5]) == faiss.remove(ids[:5]) == 0
    for st in both:
        st.add([ids[0], "fresh"], codes[[10, 10]])  # a re-added id ranks after every earlier tie
    assert store.ids() == faiss.ids() and store.ids()[-2:] == [ids[0], "fresh"]
    assert_same(store, faiss, codes[[10, 11, 12]], [1, 5, 57], [0, 4, 32])


# ------------------------------------------------------------------ BIN_IVF_FLAT
def test_ivf_flat_on_a_server(server: LocalMilvus, stores: list[MilvusCodeStore], tmp_path: Path):
    """BIN_IVF_FLAT is offered on a server; probing every list is exact, after the segments
    are sealed and indexed too; reopening keeps the index type, the sidecar keeps nprobe."""
    rng = np.random.default_rng(3)
    n, nlist = 4000, 16
    codes = random_codes(rng, n, 64)
    ids = [f"v{i}" for i in range(n)]
    store = new_store(server, stores, 64, index_type="BIN_IVF_FLAT", nlist=nlist, nprobe=nlist)
    faiss = FaissCodeStore(64)
    for st in (store, faiss):
        st.add(ids, codes)
    store.save(tmp_path)  # flushes: the segment is sealed and gets its IVF index
    queries = codes[rng.integers(0, n, 8)]
    assert_same(store, faiss, queries, [1, 10, 50], [0, 12])
    again = new_store(server, stores, 64, store.collection)  # index_type is the collection's
    assert again.index_type == "BIN_IVF_FLAT"
    loaded = MilvusCodeStore.load(tmp_path)
    stores.append(loaded)
    assert loaded.index_type == "BIN_IVF_FLAT" and loaded.nprobe == nlist
    few = new_store(server, stores, 64, store.collection, nprobe=1)  # approximate, but answers
    got, d = few.search(queries, 10)
    assert d.shape == (8, 10) and (d[:, 0] == 0).all()  # a gallery code's own list is the one probed
    assert all(len(set(row)) == 10 for row in got)


def test_ivf_short_results_are_answered_exactly(server: LocalMilvus, stores: list[MilvusCodeStore]):
    """20k random codes in 64 IVF lists: a range search settling ties at the cut that comes
    back short leaves the k-NN hits standing, and where the probed lists hold fewer than k
    items the query is answered exactly, as by a brute-force oracle, instead of raising."""
    rng = np.random.default_rng(29)
    n = 20_000
    codes = random_codes(rng, n, 64)
    ids = [f"s{i}" for i in range(n)]
    store = new_store(server, stores, 64, index_type="BIN_IVF_FLAT", nlist=64, nprobe=8)
    store.add(ids, codes)
    wait_indexed(store)  # sealed segments with their IVF index, as served
    queries = np.concatenate([codes[rng.integers(0, n, 12)], rng.integers(0, 256, (12, 8), dtype=np.uint8)])
    dist = hamming_distance_matrix(queries, codes)
    pos = {sid: p for p, sid in enumerate(ids)}

    got_ids, got_d = store.search(queries, 10)  # approximate, but k results in (distance, insertion) order
    assert got_d.shape == (len(queries), 10)
    for j, (row, d) in enumerate(zip(got_ids, got_d)):
        p = [pos[sid] for sid in row]
        np.testing.assert_array_equal(d, dist[j, p])
        assert len(set(p)) == 10 and sorted(zip(d, p)) == list(zip(d, p))

    store.nprobe = 1  # one list of ~n/64 items: every query is short of k
    before = store.stats["exact_fallbacks"]
    k = 5000
    got_ids, got_d = store.search(queries, k)
    assert store.stats["exact_fallbacks"] - before == len(queries)
    for j, (row, d) in enumerate(zip(got_ids, got_d)):
        want = np.lexsort((np.arange(n), dist[j]))[:k]
        assert row == [ids[p] for p in want], j
        np.testing.assert_array_equal(d, dist[j, want])


# ------------------------------------------------------------------ restart (last: it restarts the server)
def test_data_survives_a_server_restart(server: LocalMilvus, stores: list[MilvusCodeStore], tmp_path: Path):
    """Stop and start the server on the same data directory: the saved (flushed) items and
    those added after the save are all there, ranked as before, and writes go on."""
    rng = np.random.default_rng(17)
    codes = random_codes(rng, 900, 64)
    ids = [f"p{i}" for i in range(900)]
    store, faiss = new_store(server, stores, 64), FaissCodeStore(64)
    for st in (store, faiss):
        st.add(ids[:600], codes[:600], [{"i": i} for i in range(600)])
    store.save(tmp_path)
    for st in (store, faiss):
        st.add(ids[600:], codes[600:], [{"i": i} for i in range(600, 900)])
        st.remove(ids[590:610])
    queries = codes[rng.integers(0, 900, 6)]
    before = store.search(queries, 25), store.range_search(queries, 16)
    for st in stores:
        st.close()
    stores.clear()

    server.stop()
    server.start(START_TIMEOUT_S)

    loaded = MilvusCodeStore.load(tmp_path)
    stores.append(loaded)
    assert len(loaded) == len(faiss) == 880 and loaded.ids() == faiss.ids()
    assert loaded.get(ids[700]) is not None and loaded.get(ids[700])["metadata"] == {"i": 700}
    assert loaded.get(ids[600]) is None
    after = loaded.search(queries, 25), loaded.range_search(queries, 16)
    assert after[0][0] == before[0][0] and np.array_equal(after[0][1], before[0][1])
    assert [i for i, _ in after[1]] == [i for i, _ in before[1]]
    assert_same(loaded, faiss, queries, [1, 10, 880], [8, 20])
    for st in (loaded, faiss):
        st.add(["after-restart"], codes[:1])
    assert loaded.search(codes[:1], 3)[0] == faiss.search(codes[:1], 3)[0]
    assert loaded.ids()[-1] == "after-restart"

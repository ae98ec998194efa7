"""Tests for the FAISS binary code store against a brute-force numpy oracle."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path

import faiss
import numpy as np
import pytest

from index.faiss_store import GPU_MAX_K, FaissCodeStore, padded_bits_for
from model.runtime.codes import hamming_distance_matrix, pack_codes, unpack_codes

BITS = [16, 32, 64, 128]


def tie_heavy_codes(rng: np.random.Generator, n: int, bits: int, n_distinct: int = 6, flip_bits: int = 3):
    """Packed codes drawn from few prototypes, each with a few low bits flipped, so
    there are many exact duplicates and many equal distances."""
    protos = rng.integers(0, 2, size=(n_distinct, bits), dtype=np.uint8)
    unpacked = protos[rng.integers(0, n_distinct, size=n)].copy()
    flips = rng.integers(0, 2, size=(n, flip_bits), dtype=np.uint8)
    unpacked[:, :flip_bits] ^= flips
    return np.packbits(unpacked, axis=1)


def oracle_knn(db: np.ndarray, order: list[int], q: np.ndarray, k: int):
    """Top-k (positions into db, distances) sorted by (distance, insertion order)."""
    dist = hamming_distance_matrix(q, db)
    out = []
    for row in dist:
        idx = sorted(range(len(order)), key=lambda j: (row[j], order[j]))[:k]
        out.append((idx, row[idx]))
    return out


def build(bits: int, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    codes = tie_heavy_codes(rng, n, bits)
    ids = [f"item-{i:04d}" for i in range(n)]
    store = FaissCodeStore(bits)
    # add in a few batches to exercise the incremental counter
    for s in range(0, n, 37):
        store.add(ids[s : s + 37], codes[s : s + 37], [{"i": i} for i in range(s, min(n, s + 37))])
    return store, ids, codes, rng


def assert_knn_matches(store, ids, codes, queries, k):
    got_ids, got_d = store.search(queries, k)
    exp = oracle_knn(codes, list(range(len(ids))), queries, k)
    assert got_d.shape == (len(queries), min(k, len(ids)))
    assert got_d.dtype.kind == "i"
    for j, (pos, d) in enumerate(exp):
        assert got_ids[j] == [ids[p] for p in pos]
        np.testing.assert_array_equal(got_d[j], d)


# --------------------------------------------------------------------- codes
@pytest.mark.parametrize("bits", [*BITS, 24, 48])
def test_pack_unpack_round_trip(bits):
    rng = np.random.default_rng(bits)
    signs = rng.choice(np.array([-1, 1], dtype=np.int8), size=(9, bits))
    packed = pack_codes(signs)
    assert packed.dtype == np.uint8 and packed.shape == (9, bits // 8)
    np.testing.assert_array_equal(unpack_codes(packed, bits), signs)
    assert unpack_codes(packed, bits).dtype == np.int8
    # {0,1} / bool inputs give the same packing
    np.testing.assert_array_equal(pack_codes(signs > 0), packed)
    np.testing.assert_array_equal(pack_codes((signs > 0).astype(np.int64)), packed)


def test_pack_bit_order_big_endian():
    code = -np.ones((1, 8), dtype=np.int8)
    code[0, 0] = 1
    assert pack_codes(code)[0, 0] == 0b10000000


@pytest.mark.parametrize(
    "bad",
    [np.ones(8), np.ones((2, 12)), np.array([[0, 1, 2, 1, 0, 1, 0, 1]]), np.array([[-1, 0, 1, 1, 1, 1, 1, 1]])],
)
def test_pack_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        pack_codes(bad)


def test_unpack_rejects_bad_input():
    with pytest.raises(ValueError):
        unpack_codes(np.zeros((2, 3), dtype=np.uint8), 16)
    with pytest.raises(ValueError):
        unpack_codes(np.zeros((2, 2), dtype=np.int32), 16)
    with pytest.raises(ValueError):
        unpack_codes(np.zeros((2, 2), dtype=np.uint8), 12)


def test_hamming_oracle_small():
    a = pack_codes(np.array([[1] * 8 + [-1] * 8]))
    b = pack_codes(np.array([[1] * 16, [-1] * 16, [1] * 8 + [-1] * 8]))
    np.testing.assert_array_equal(hamming_distance_matrix(a, b), [[8, 8, 0]])


def test_padding_widths():
    assert padded_bits_for(16) == 32
    assert padded_bits_for(24) == 32
    assert padded_bits_for(40) == 64
    assert padded_bits_for(48) == 64
    assert padded_bits_for(64) == 64
    assert padded_bits_for(128) == 128


@pytest.mark.parametrize("bits", [16, 24, 40, 48])
def test_padded_widths_give_oracle_distances(bits):
    rng = np.random.default_rng(7)
    codes = rng.integers(0, 256, size=(60, bits // 8), dtype=np.uint8)
    store = FaissCodeStore(bits)
    assert store.padded_bits in (32, 64)
    store.add([str(i) for i in range(60)], codes)
    got_ids, got_d = store.search(codes[:10], 60)
    oracle = hamming_distance_matrix(codes[:10], codes)
    for j in range(10):
        np.testing.assert_array_equal(got_d[j], oracle[j, [int(x) for x in got_ids[j]]])
        np.testing.assert_array_equal(got_d[j], np.sort(oracle[j]))
    assert got_d.max() <= bits


# ------------------------------------------------------------------- search
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("k", [1, 3, 10, 50])
def test_knn_matches_oracle_with_ties(bits, k):
    store, ids, codes, rng = build(bits, 300, seed=bits + k)
    queries = np.concatenate([codes[rng.integers(0, 300, 12)], tie_heavy_codes(rng, 8, bits)])
    assert_knn_matches(store, ids, codes, queries, k)


def test_knn_k_larger_than_store_and_empty_store():
    store = FaissCodeStore(32)
    ids, d = store.search(np.zeros((2, 4), dtype=np.uint8), 5)
    assert ids == [[], []] and d.shape == (2, 0)
    codes = np.zeros((3, 4), dtype=np.uint8)
    codes[1, 0] = 1
    store.add(["a", "b", "c"], codes)
    ids, d = store.search(np.zeros((1, 4), dtype=np.uint8), 10)
    assert ids == [["a", "c", "b"]]
    np.testing.assert_array_equal(d, [[0, 0, 1]])


@pytest.mark.parametrize("bits", BITS)
def test_range_search_inclusive_matches_oracle(bits):
    store, ids, codes, rng = build(bits, 250, seed=100 + bits)
    queries = np.concatenate([codes[rng.integers(0, 250, 6)], tie_heavy_codes(rng, 4, bits)])
    dist = hamming_distance_matrix(queries, codes)
    radii = sorted({0, 1, 2, bits // 4, bits // 2, bits - 1, bits, int(dist.min()), int(np.median(dist))})
    for r in radii:
        res = store.range_search(queries, r)
        assert len(res) == len(queries)
        for j, (got_ids, got_d) in enumerate(res):
            pos = [p for p in sorted(range(len(ids)), key=lambda p: (dist[j, p], p)) if dist[j, p] <= r]
            assert got_ids == [ids[p] for p in pos], (r, j)
            np.testing.assert_array_equal(got_d, dist[j, pos])
    # r = bits returns everything
    assert all(len(i) == len(ids) for i, _ in store.range_search(queries, bits))


@pytest.mark.parametrize("bits", [8, 16, 24, 64, 128, 384])
def test_range_search_radius_equal_to_bits_is_accepted_and_returns_every_item(bits):
    """radius == bits (the code length) is a valid radius: every item, the query's complement (at
    distance exactly bits, the one item a "< bits" or exclusive bound would drop) included, in
    (distance, insertion) order; bits - 1 leaves out exactly the complement. Widths below and
    between FAISS' fast widths (8, 24 are padded) and above them (384)."""
    rng = np.random.default_rng(bits)
    query = rng.integers(0, 256, (1, bits // 8), dtype=np.uint8)
    codes = np.concatenate([~query, rng.integers(0, 256, (20, bits // 8), dtype=np.uint8), query, ~query])
    ids = [f"x{p}" for p in range(len(codes))]
    store = FaissCodeStore(bits)
    store.add(ids, codes)
    dist = hamming_distance_matrix(query, codes)[0]
    assert dist[0] == bits and dist[-1] == bits and dist[-2] == 0
    order = sorted(range(len(ids)), key=lambda p: (dist[p], p))
    [(got_ids, got_d)] = store.range_search(query, bits)
    assert got_ids == [ids[p] for p in order]
    np.testing.assert_array_equal(got_d, dist[order])
    assert got_ids[-2:] == ["x0", ids[-1]]  # both complements, last, in insertion order
    [(below, _)] = store.range_search(query, bits - 1)
    assert below == [ids[p] for p in order if dist[p] < bits]


@pytest.mark.parametrize("bits", [16, 64])
def test_remove_then_search(bits):
    store, ids, codes, rng = build(bits, 200, seed=5)
    gone = set(rng.choice(ids, size=70, replace=False).tolist())
    assert store.remove([*list(gone), "no-such-id"]) == 70
    assert store.remove(list(gone)) == 0
    assert len(store) == 130
    keep = [p for p in range(200) if ids[p] not in gone]
    kept_ids = [ids[p] for p in keep]
    kept_codes = codes[keep]
    for g in gone:
        assert g not in store and store.get(g) is None
    queries = codes[rng.integers(0, 200, 10)]
    for k in (1, 7, 40, 500):
        got_ids, _ = store.search(queries, k)
        assert not gone.intersection(x for row in got_ids for x in row)
        assert_knn_matches(store, kept_ids, kept_codes, queries, k)
    for r in (0, bits // 2, bits):
        dist = hamming_distance_matrix(queries, kept_codes)
        for j, (got_ids, _got_d) in enumerate(store.range_search(queries, r)):
            pos = [p for p in sorted(range(len(keep)), key=lambda p: (dist[j, p], p)) if dist[j, p] <= r]
            assert got_ids == [kept_ids[p] for p in pos]
    # re-adding a removed id is allowed and it goes to the back of the tie order
    g = sorted(gone)[0]
    store.add([g], codes[[ids.index(g)]])
    assert g in store and len(store) == 131


def test_duplicate_ids_rejected_store_unchanged():
    store, ids, codes, _rng = build(32, 50, seed=9)
    q = codes[:5]
    before = store.search(q, 10)
    new = np.zeros((2, 4), dtype=np.uint8)
    with pytest.raises(ValueError):
        store.add(["fresh", ids[3]], new)  # already present
    with pytest.raises(ValueError):
        store.add(["x", "x"], new)  # duplicate within call
    assert len(store) == 50 and "fresh" not in store and "x" not in store
    after = store.search(q, 10)
    assert before[0] == after[0]
    np.testing.assert_array_equal(before[1], after[1])
    store.add(["fresh", "x"], new)  # the counter/state is still usable
    assert len(store) == 52


def test_add_validation():
    store = FaissCodeStore(16)
    with pytest.raises(ValueError):
        store.add(["a"], np.zeros((1, 4), dtype=np.uint8))  # wrong width
    with pytest.raises(ValueError):
        store.add(["a"], np.zeros((1, 2), dtype=np.int64))  # not packed
    with pytest.raises(ValueError):
        store.add(["a", "b"], np.zeros((1, 2), dtype=np.uint8))  # count mismatch
    with pytest.raises(ValueError):
        store.add(["a"], np.zeros((1, 2), dtype=np.uint8), metadata=[{}, {}])
    with pytest.raises(ValueError):
        FaissCodeStore(12)
    assert len(store) == 0


def test_get_returns_code_and_metadata():
    store, ids, codes, _ = build(16, 40)
    item = store.get(ids[7])
    assert item["id"] == ids[7]
    assert item["code"].dtype == np.uint8
    np.testing.assert_array_equal(item["code"], codes[7])
    assert item["metadata"] == {"i": 7}
    assert store.get("missing") is None
    assert ids[7] in store and "missing" not in store


# --------------------------------------------------------------- persistence
def _same_results(a: FaissCodeStore, b: FaissCodeStore, q: np.ndarray, k: int = 20):
    ra, rb = a.search(q, k), b.search(q, k)
    assert ra[0] == rb[0]
    np.testing.assert_array_equal(ra[1], rb[1])
    for (ia, da), (ib, db) in zip(a.range_search(q, a.bits // 4), b.range_search(q, b.bits // 4)):
        assert ia == ib
        np.testing.assert_array_equal(da, db)


@pytest.mark.parametrize("bits", [16, 64])
def test_save_load_round_trip(tmp_path: Path, bits):
    store, ids, codes, rng = build(bits, 120, seed=3)
    store.remove(ids[10:20])
    store.save(tmp_path / "s")
    snap = (tmp_path / "s" / "CURRENT").read_text().strip()
    assert {p.name for p in (tmp_path / "s").iterdir()} == {"CURRENT", snap}
    assert {p.name for p in (tmp_path / "s" / snap).iterdir()} == {"index.faissbin", "metadata.sqlite", "store.json"}
    loaded = FaissCodeStore.load(tmp_path / "s")
    assert len(loaded) == len(store) and loaded.bits == bits
    assert loaded.ids() == store.ids()
    _same_results(store, loaded, codes[rng.integers(0, 120, 8)])
    a, b = loaded.get(ids[30]), store.get(ids[30])
    assert a["id"] == b["id"] and a["metadata"] == b["metadata"] == {"i": 30}
    np.testing.assert_array_equal(loaded.get(ids[30])["code"], codes[30])
    # internal counter continues: new items rank after existing ties
    loaded.add(["new"], codes[[0]])
    got, _ = loaded.search(codes[[0]], len(loaded))
    assert got[0].index("new") > got[0].index(ids[0])


def test_metadata_is_a_readable_sqlite_table(tmp_path: Path):
    store = FaissCodeStore(32)
    store.add(["a", "b"], np.zeros((2, 4), dtype=np.uint8), [{"path": "x/a.jpg", "labels": ["sky"]}, None])
    store.save(tmp_path / "s")
    snap = tmp_path / "s" / (tmp_path / "s" / "CURRENT").read_text().strip()
    with sqlite3.connect(snap / "metadata.sqlite") as db:
        rows = db.execute("SELECT id, metadata FROM items ORDER BY iid").fetchall()
    assert [(r[0], json.loads(r[1])) for r in rows] == [("a", {"path": "x/a.jpg", "labels": ["sky"]}), ("b", {})]


def test_metadata_must_be_json(tmp_path: Path):
    store = FaissCodeStore(32)
    with pytest.raises(ValueError, match="JSON"):
        store.add(["a"], np.zeros((1, 4), dtype=np.uint8), [{"bad": object()}])
    assert len(store) == 0 and "a" not in store


def test_each_save_replaces_the_previous_snapshot(tmp_path: Path):
    d = tmp_path / "s"
    store, _ids, _codes, _ = build(32, 30, seed=2)
    for _ in range(3):
        store.save(d)
    # the snapshot a save replaces is kept as the fallback (issue 10); older ones go
    assert sorted(p.name for p in d.iterdir()) == ["CURRENT", "snapshot-000002", "snapshot-000003"]


def _crashing_at(step: int, monkeypatch) -> dict:
    """Make the `step`-th os.replace or fsync of a save raise, like a crash at that point."""
    calls = {"n": 0}
    real_replace, real_fsync = os.replace, os.fsync

    def tick():
        calls["n"] += 1
        if calls["n"] == step:
            raise OSError("simulated crash")

    def replace(src, dst):
        tick()
        return real_replace(src, dst)

    def fsync(fd):
        tick()
        return real_fsync(fd)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def test_crash_at_any_step_of_save_keeps_previous_version(tmp_path: Path, monkeypatch):
    d = tmp_path / "s"
    store, ids, codes, rng = build(32, 80, seed=11)
    store.save(d)
    q = codes[rng.integers(0, 80, 6)]
    reference = FaissCodeStore.load(d)
    store.add([f"extra-{i}" for i in range(10)], codes[:10])
    store.remove(ids[:5])

    with monkeypatch.context() as m:
        calls = _crashing_at(10**9, m)
        store.save(tmp_path / "count")
        steps = calls["n"]
    assert steps >= 6  # files, snapshot dir, rename, CURRENT pointer

    for step in range(1, steps):
        with monkeypatch.context() as m:
            _crashing_at(step, m)
            with pytest.raises(OSError, match="simulated crash"):
                store.save(d)
        after_crash = FaissCodeStore.load(d)
        assert len(after_crash) == 80 and "extra-0" not in after_crash and ids[0] in after_crash, step
        _same_results(reference, after_crash, q)

    # a later successful save stores the new version and removes every leftover
    store.save(d)
    latest = FaissCodeStore.load(d)
    assert len(latest) == 85 and "extra-0" in latest and ids[0] not in latest
    _same_results(store, latest, q)
    assert len(list(d.iterdir())) == 3  # CURRENT, the new snapshot and the previous one (the fallback)


def test_crash_inside_a_file_write_keeps_previous_version(tmp_path: Path, monkeypatch):
    d = tmp_path / "s"
    store, _ids, codes, _ = build(16, 60, seed=12)
    store.save(d)
    store.add(["e1"], codes[[0]])

    def torn_write(index, name):
        Path(name).write_bytes(b"half an index")
        raise OSError("simulated crash")

    with monkeypatch.context() as m:
        m.setattr(faiss, "write_index_binary", torn_write)
        with pytest.raises(OSError):
            store.save(d)
    loaded = FaissCodeStore.load(d)
    assert len(loaded) == 60 and "e1" not in loaded


def test_load_refuses_a_corrupt_snapshot(tmp_path: Path):
    d = tmp_path / "s"
    store, _, _, _ = build(32, 20)
    store.save(d)
    snap = d / (d / "CURRENT").read_text().strip()
    data = bytearray((snap / "index.faissbin").read_bytes())
    data[-1] ^= 0xFF
    (snap / "index.faissbin").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        FaissCodeStore.load(d)
    with pytest.raises(FileNotFoundError):
        FaissCodeStore.load(tmp_path / "nothing-here")


# --------------------------------------------------------------- concurrency
def test_concurrent_search_while_adding_and_removing():
    bits = 64
    rng = np.random.default_rng(21)
    codes = tie_heavy_codes(rng, 2000, bits)
    ids = [f"id{i}" for i in range(2000)]
    store = FaissCodeStore(bits)
    store.add(ids[:1], codes[:1])
    errors: list[BaseException] = []
    done = threading.Event()

    def searcher():
        try:
            while not done.is_set():
                got, d = store.search(codes[:4], 10)
                for j, (row, dist) in enumerate(zip(got, d)):
                    assert len(row) == len(set(row)) == d.shape[1]
                    assert np.all(np.diff(dist) >= 0)
                    # each returned distance is the true distance of that id's code
                    truth = hamming_distance_matrix(codes[[j]], codes[[int(x[2:]) for x in row]])[0]
                    np.testing.assert_array_equal(dist, truth)
                for _, dist in store.range_search(codes[:2], 8):
                    assert np.all(dist <= 8)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def adder():
        try:
            for s in range(1, 2000, 50):
                store.add(ids[s : s + 50], codes[s : s + 50])
        except BaseException as e:  # pragma: no cover
            errors.append(e)
        finally:
            done.set()

    def remover():
        try:
            while not done.is_set():
                present = store.ids()
                store.remove([i for i in present if int(i[2:]) % 3 == 0])
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=f) for f in (searcher, searcher, adder, remover)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    store.remove([i for i in store.ids() if int(i[2:]) % 3 == 0])
    keep = [p for p in range(2000) if p % 3]
    assert store.ids() == [ids[p] for p in keep]
    assert_knn_matches(store, [ids[p] for p in keep], codes[keep], codes[:8], 25)


# ------------------------------------------- adversarial FAISS tie ordering
class _AdversarialTies:
    """Wraps the FAISS index; returns *valid* results (exact distances) but with ties
    resolved against insertion order (largest internal id first), and range results
    in reverse order — FAISS guarantees neither tie order nor range result order."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def search(self, q, k):
        n = self._inner.ntotal
        D, I = self._inner.search(q, n)  # everything, exact distances
        D2 = np.empty((len(q), k), dtype=D.dtype)
        I2 = np.empty((len(q), k), dtype=I.dtype)
        for j in range(len(q)):
            order = np.lexsort((-I[j], D[j]))[:k]
            D2[j], I2[j] = D[j, order], I[j, order]
        return D2, I2

    def range_search(self, q, r):
        lims, D, I = self._inner.range_search(q, r)
        D, I = D.copy(), I.copy()
        for j in range(len(q)):
            D[lims[j] : lims[j + 1]] = D[lims[j] : lims[j + 1]][::-1]
            I[lims[j] : lims[j + 1]] = I[lims[j] : lims[j + 1]][::-1]
        return lims, D, I


@pytest.mark.parametrize("bits", [16, 64])
@pytest.mark.parametrize("k", [1, 5, 30])
def test_tie_order_independent_of_faiss_tie_order(bits, k):
    store, ids, codes, rng = build(bits, 150, seed=40 + k)
    store._index = _AdversarialTies(store._index)
    queries = codes[rng.integers(0, 150, 10)]
    assert_knn_matches(store, ids, codes, queries, k)
    dist = hamming_distance_matrix(queries, codes)
    for j, (got_ids, _got_d) in enumerate(store.range_search(queries, bits // 4)):
        pos = [p for p in sorted(range(150), key=lambda p: (dist[j, p], p)) if dist[j, p] <= bits // 4]
        assert got_ids == [ids[p] for p in pos]


# ------------------------------------------------ GPU mirror, emulated on the CPU
class _EmulatedGpuIndex:
    """GpuIndexBinaryFlat's contract on the CPU: rows without ids, k <= 2048, no range
    search and no removal, and ties returned in reverse row order (unspecified on a GPU)."""

    def __init__(self, bits: int) -> None:
        self._flat = faiss.IndexBinaryFlat(bits)
        self.searches = 0

    @property
    def ntotal(self) -> int:
        return self._flat.ntotal

    def add(self, codes) -> None:
        self._flat.add(codes)

    def search(self, q, k):
        assert k <= GPU_MAX_K, "GpuIndexBinaryFlat supports k <= 2048"
        self.searches += 1
        D, I = self._flat.search(q, self._flat.ntotal)
        D2, I2 = np.empty((len(q), k), D.dtype), np.empty((len(q), k), I.dtype)
        for j in range(len(q)):
            order = np.lexsort((-I[j], D[j]))[:k]
            D2[j], I2[j] = D[j, order], I[j, order]
        return D2, I2


@pytest.mark.parametrize("bits", [16, 64])
def test_gpu_mirror_matches_oracle_through_adds_and_removes(bits):
    made: list[_EmulatedGpuIndex] = []

    def factory(b):
        made.append(_EmulatedGpuIndex(b))
        return made[-1]

    rng = np.random.default_rng(bits)
    codes = tie_heavy_codes(rng, 400, bits)
    ids = [f"g{i}" for i in range(400)]
    store = FaissCodeStore(bits, device="cuda", _gpu_factory=factory)
    assert store.device == "cuda"
    store.add(ids[:250], codes[:250])
    queries = np.concatenate([codes[:6], tie_heavy_codes(rng, 6, bits)])
    for k in (1, 9, 60):
        assert_knn_matches(store, ids[:250], codes[:250], queries, k)
    assert made[-1].searches > 0
    gone = set(ids[::3][:60])
    store.remove(gone)
    store.add(ids[250:], codes[250:])
    keep = [p for p in range(400) if ids[p] not in gone]
    before = len(made)
    for k in (1, 9, 60):
        assert_knn_matches(store, [ids[p] for p in keep], codes[keep], queries, k)
    assert len(made) == before  # 60 of 400 rows removed: tombstones, no rebuild
    assert made[-1].ntotal == 400


def test_gpu_mirror_hands_large_k_and_range_to_the_cpu_index():
    store = FaissCodeStore(32, device="cuda", _gpu_factory=_EmulatedGpuIndex)
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 256, (3000, 4), dtype=np.uint8)
    ids = [str(i) for i in range(3000)]
    store.add(ids, codes)
    assert_knn_matches(store, ids, codes, codes[:2], 2500)  # > 2048: CPU
    dist = hamming_distance_matrix(codes[:2], codes)
    got = store.range_search(codes[:2], 12)
    for j in range(2):
        assert sorted(got[j][0], key=int) == [ids[p] for p in np.flatnonzero(dist[j] <= 12)]


def test_cuda_without_gpu_is_a_clear_error():
    if faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="faiss-gpu"):
        FaissCodeStore(64, device="cuda")
    assert FaissCodeStore(64, device="auto").device == "cpu"


def test_gpu_mirror_removes_are_tombstones_until_a_quarter_is_dead():
    made: list[_EmulatedGpuIndex] = []

    def factory(b):
        made.append(_EmulatedGpuIndex(b))
        return made[-1]

    rng = np.random.default_rng(5)
    codes = tie_heavy_codes(rng, 400, 32)
    ids = [f"t{i}" for i in range(400)]
    store = FaissCodeStore(32, device="cuda", _gpu_factory=factory)
    store.add(ids, codes)
    live = list(range(400))
    for _step in range(1, 6):  # 5 x 10 removes = 12.5% dead: no rebuild
        gone = live[:10]
        store.remove([ids[p] for p in gone])
        live = live[10:]
        assert_knn_matches(store, [ids[p] for p in live], codes[live], codes[:8], 9)
    assert len(made) == 1 and made[0].ntotal == 400  # the removed rows stay on the "GPU"
    store.remove([ids[p] for p in live[:60]])  # now past a quarter: rebuilt once at the next search
    live = live[60:]
    assert_knn_matches(store, [ids[p] for p in live], codes[live], codes[:8], 9)
    assert len(made) == 2 and made[-1].ntotal == len(live)


def test_a_failed_gpu_add_is_never_searched_stale():
    class FailingOnce(_EmulatedGpuIndex):
        fail = True

        def add(self, codes) -> None:
            if FailingOnce.fail:
                FailingOnce.fail = False
                raise RuntimeError("cudaMalloc failed")
            super().add(codes)

    rng = np.random.default_rng(9)
    codes = rng.integers(0, 256, (200, 8), dtype=np.uint8)
    ids = [str(i) for i in range(200)]
    store = FaissCodeStore(64, device="cuda", _gpu_factory=FailingOnce)
    store.add(ids[:100], codes[:100])  # the GPU add fails after the commit: the mirror goes stale
    store.add(ids[100:], codes[100:])
    assert_knn_matches(store, ids, codes, codes[:5], 7)  # rebuilt from the CPU index, nothing missing


def test_gpu_mirror_resolves_deep_ties_on_the_gpu():
    made: list[_EmulatedGpuIndex] = []

    def factory(b):
        made.append(_EmulatedGpuIndex(b))
        return made[-1]

    codes = np.zeros((600, 4), dtype=np.uint8)  # 600 identical codes: one tie group of 600
    codes[300:] = 255
    ids = [f"d{i}" for i in range(600)]
    store = FaissCodeStore(32, device="cuda", _gpu_factory=factory)
    store.add(ids, codes)
    before = made[0].searches
    got, dist = store.search(codes[:1], 5)
    assert got[0] == ids[:5] and dist[0].tolist() == [0] * 5  # insertion order among the ties
    assert made[0].searches > before + 1  # fetched deeper on the GPU (no CPU range search needed)

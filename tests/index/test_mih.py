"""Multi-index hashing (index/mih.py) against the flat FaissCodeStore as the oracle: the same
ids, distances and tie order for k-NN and radius search, through adds, removes, tail merges,
rebuilds, save and load; and the `--index mih` gallery option end to end."""

from __future__ import annotations

import hashlib
import json
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

import index.mih as mih
from index.faiss_store import FaissCodeStore
from index.gallery import GALLERY_FILE, Gallery, GalleryInfo, GalleryMismatchError, open_or_create
from index.mih import MultiIndexHash, plan_tables


def random_codes(rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, bits // 8), dtype=np.uint8)


def clustered_codes(rng: np.random.Generator, n: int, bits: int, centres: np.ndarray, flip: float) -> np.ndarray:
    """Trained-like codes: a class centre with each bit flipped with probability `flip`."""
    unpacked = centres[rng.integers(0, len(centres), size=n)] ^ (rng.random((n, bits)) < flip)
    return np.packbits(unpacked.astype(np.uint8), axis=1)


def assert_same(flat: FaissCodeStore, other: FaissCodeStore, queries: np.ndarray, ks=(1, 10, 100), radii=range(9)):
    for k in ks:
        a_ids, a_d = flat.search(queries, k)
        b_ids, b_d = other.search(queries, k)
        assert b_ids == a_ids, f"k={k}"
        np.testing.assert_array_equal(b_d, a_d)
    for r in radii:
        for (a_ids, a_d), (b_ids, b_d) in zip(
            flat.range_search(queries, r), other.range_search(queries, r), strict=True
        ):
            assert b_ids == a_ids, f"radius={r}"
            np.testing.assert_array_equal(b_d, a_d)


@pytest.fixture
def small_thresholds(monkeypatch):
    """Merge the tail and compact dead slots often, so small galleries exercise both."""
    monkeypatch.setattr(mih, "TAIL_MIN", 16)
    monkeypatch.setattr(mih, "DEAD_MIN", 16)


# ------------------------------------------------------------------ pieces
@pytest.mark.parametrize("bits", [8, 16, 24, 32, 40, 64, 128, 256])
@pytest.mark.parametrize("n", [1, 100, 10_000, 10**6, 10**8])
def test_plan_tables(bits, n):
    lengths = plan_tables(bits, n)
    assert sum(lengths) == bits and max(lengths) - min(lengths) <= 1
    assert max(lengths) <= mih.MAX_SUBSTRING_BITS
    assert min(lengths) >= min(bits, mih.MIN_SUBSTRING_BITS) or len(lengths) == math.ceil(bits / mih.MAX_SUBSTRING_BITS)
    assert plan_tables(64, 10**7) == [22, 21, 21]  # about log2(n) bits per substring


@pytest.mark.parametrize("b", [1, 5, 12])
def test_masks_are_every_value_of_that_popcount(b):
    for s in range(b + 2):
        masks = mih._masks(b, s)
        assert len(masks) == len(set(masks.tolist())) == (math.comb(b, s) if s <= b else 0)
        assert all(bin(x).count("1") == s and x < 1 << b for x in masks.tolist())


def test_substring_keys_cover_the_code_bit_by_bit():
    rng = np.random.default_rng(0)
    for bits in (24, 72, 128):
        codes = random_codes(rng, 50, bits)
        tables = mih._Tables([bits // 3 + (t < bits % 3) for t in range(3)], 50)
        be = mih._be_words(codes, -(-bits // 64))
        unpacked = np.unpackbits(codes, axis=1)
        for t, (a, b) in enumerate(zip(tables.starts, tables.lengths)):
            expected = unpacked[:, a : a + b].astype(np.int64) @ (1 << np.arange(b - 1, -1, -1, dtype=np.int64))
            np.testing.assert_array_equal(tables.keys(be, t), expected)


# ------------------------------------------------------------- the oracle
@pytest.mark.parametrize("bits", [32, 64, 128])
@pytest.mark.parametrize("data", ["random", "clustered"])
def test_mih_store_matches_flat_through_adds_removes_and_reload(bits, data, tmp_path, small_thresholds):
    rng = np.random.default_rng([bits, data == "clustered"])
    centres = rng.integers(0, 2, size=(6, bits), dtype=np.uint8)

    def codes(n):
        if data == "random":
            return random_codes(rng, n, bits)
        out = clustered_codes(rng, n, bits, centres, rng.choice([0.02, 0.05, 0.1]))
        out[: n // 10] = out[n // 10 : 2 * (n // 10)]  # exact duplicates: ties
        return out

    flat, multi = FaissCodeStore(bits), FaissCodeStore(bits, index="mih")
    multi.mih.mode = "always"  # no cost-based fallback: every query goes through the tables
    live: list[str] = []
    counter = 0
    for round_ in range(6):
        n_add = int(rng.integers(50, 900))
        new = [f"x{counter + i}" for i in range(n_add)]
        counter += n_add
        batch = codes(n_add)
        for store in (flat, multi):
            store.add(new, batch, [{"i": i} for i in range(n_add)])
        live += new
        if round_ % 2:
            gone = [*list(rng.choice(live, size=min(len(live) // 3, 400), replace=False)), "absent"]
            assert flat.remove(gone) == multi.remove(gone)
            live = [i for i in live if i not in set(gone)]
        if round_ == 3:  # save, load: the tables are rebuilt from the stored codes
            multi.save(tmp_path / "g")
            multi = FaissCodeStore.load(tmp_path / "g", index="mih")
            multi.mih.mode = "always"
            assert len(multi.mih) == len(flat)
        queries = np.concatenate([codes(6), random_codes(rng, 2, bits)])
        queries[0] = flat.get(live[0])["code"]  # a stored code: distance-0 ties
        assert_same(flat, multi, queries)
    assert multi.mih.stats["mih"] > 0 and multi.mih.stats["fallback"] == 0
    assert multi.mih.stats["merges"] + multi.mih.stats["rebuilds"] >= 2


def test_big_k_and_radius_reach_everything(small_thresholds):
    rng = np.random.default_rng(3)
    flat, multi = FaissCodeStore(64), FaissCodeStore(64, index="mih")
    multi.mih.mode = "always"
    batch = random_codes(rng, 300, 64)
    for store in (flat, multi):
        store.add([str(i) for i in range(300)], batch)
    queries = random_codes(rng, 3, 64)
    assert_same(flat, multi, queries, ks=(299, 300, 1000), radii=(20, 32, 64, 100))


def test_interleaved_single_adds_and_removes_merge_into_the_tables(small_thresholds):
    rng = np.random.default_rng(4)
    centres = rng.integers(0, 2, size=(3, 32), dtype=np.uint8)
    flat, multi = FaissCodeStore(32), FaissCodeStore(32, index="mih")
    multi.mih.mode = "always"
    for i in range(300):
        code = clustered_codes(rng, 1, 32, centres, 0.05)
        for store in (flat, multi):
            store.add([f"a{i}"], code)
        if i % 7 == 3:
            victim = f"a{int(rng.integers(0, i + 1))}"
            assert flat.remove([victim]) == multi.remove([victim])
        if i % 25 == 0:
            assert_same(flat, multi, clustered_codes(rng, 2, 32, centres, 0.05), ks=(1, 10), radii=(0, 3))
    assert multi.mih.stats["merges"] > 0


def test_auto_mode_falls_back_and_stays_exact():
    rng = np.random.default_rng(5)
    flat, multi = FaissCodeStore(128), FaissCodeStore(128, index="mih")
    batch = random_codes(rng, 2000, 128)
    for store in (flat, multi):
        store.add([str(i) for i in range(2000)], batch)
    assert_same(flat, multi, random_codes(rng, 4, 128), ks=(10,), radii=(4,))
    # A small gallery scans faster than it probes: every query took the flat scan.
    assert multi.mih.stats["mih"] == 0 and multi.mih.stats["fallback"] + multi.mih.stats["skipped"] == 8


def test_hopeless_queries_skip_the_probe_after_a_streak(monkeypatch):
    h = MultiIndexHash(64)
    rng = np.random.default_rng(6)
    h.add(random_codes(rng, 1000, 64), np.arange(1000))
    monkeypatch.setattr(mih, "FLAT_FIXED_NS", 1e6)  # a budget that affords tables but not this probe
    monkeypatch.setattr(mih, "BUCKET_NS", 1e6)
    for _ in range(mih.SKIP_AFTER + mih.SKIP_PROBE_EVERY):
        assert h.knn(random_codes(rng, 1, 64)[0], 10) is None
    assert h.stats["fallback"] == mih.SKIP_AFTER + 1 and h.stats["skipped"] == mih.SKIP_PROBE_EVERY - 1
    h.mode = "never"
    assert h.range(random_codes(rng, 1, 64)[0], 3) is None


def test_a_probe_that_overruns_the_clock_gives_up_and_stays_exact(monkeypatch):
    """The cost model can be wrong on another machine or code length: a probe whose wall time
    passes BUDGET of the flat scan is given up after that step, and the store answers with the
    flat scan, the same results."""
    rng = np.random.default_rng(7)
    centres = rng.integers(0, 2, size=(8, 64), dtype=np.uint8).astype(bool)
    codes = clustered_codes(rng, 3000, 64, centres, 0.05)
    flat, multi = FaissCodeStore(64), FaissCodeStore(64, index="mih")
    for store in (flat, multi):
        store.add([str(i) for i in range(3000)], codes)
    monkeypatch.setattr(mih, "FLAT_FIXED_NS", 1e7)  # the model affords every probe ...
    ticks = iter(range(0, 10**15, 10**9))  # ... but each clock reading is a second later
    monkeypatch.setattr(mih.time, "perf_counter_ns", lambda: next(ticks))
    queries = clustered_codes(rng, 3, 64, centres, 0.05)
    assert_same(flat, multi, queries, ks=(1, 10), radii=(2,))
    assert multi.mih.stats["mih"] == 0 and multi.mih.stats["fallback"] > 0


def test_timed_flat_scans_calibrate_the_budget():
    """The store times its flat scans and the estimate of a flat scan's cost follows them."""
    h = MultiIndexHash(64)
    before = h.flat_cost_ns(1_000_000)
    for _ in range(40):  # a machine where a scan costs 0.5 ns per code
        h.observe_flat(seconds=(mih.FLAT_FIXED_NS + 0.5 * 1_000_000) * 1e-9, queries=1, n=1_000_000)
    assert h.flat_ns_per_code["knn"] == pytest.approx(0.5, rel=1e-3)
    assert h.flat_cost_ns(1_000_000) < before
    rng = np.random.default_rng(8)
    store = FaissCodeStore(64, index="mih")
    store.add([str(i) for i in range(2000)], random_codes(rng, 2000, 64))
    store.mih.mode = "never"
    store.search(random_codes(rng, 2, 64), 5)
    store.range_search(random_codes(rng, 2, 64), 3)
    assert all(v != mih.FLAT_NS_PER_CODE for v in store.mih.flat_ns_per_code.values())  # both scans were timed


# --------------------------------------------------------------- galleries
class _Model(SimpleNamespace):
    pass


def _model(bits=64):
    return _Model(bits=bits, checksum="c" * 64, info=SimpleNamespace(method="fake"))


def test_gallery_records_and_reopens_the_index(tmp_path):
    gallery = open_or_create(tmp_path / "g", "image", _model(), index="mih")
    assert json.loads((tmp_path / "g" / GALLERY_FILE).read_text())["index"] == "mih"
    gallery.store.add(["a", "b"], np.array([[1] * 8, [3] * 8], dtype=np.uint8))
    gallery.save()
    again = Gallery.open(tmp_path / "g")
    assert again.info.index == "mih" and again.store.index_type == "mih" and len(again.store.mih) == 2
    assert open_or_create(tmp_path / "g", "image", _model()).info.index == "mih"  # no preference: its own
    with pytest.raises(GalleryMismatchError, match="--rebuild --index flat"):
        open_or_create(tmp_path / "g", "image", _model(), index="flat")
    # The default is flat, and a gallery.json written before the field existed opens as flat.
    flat = open_or_create(tmp_path / "f", "image", _model())
    assert flat.info.index == "flat" and flat.store.mih is None
    info = json.loads((tmp_path / "f" / GALLERY_FILE).read_text())
    del info["index"]
    (tmp_path / "f" / GALLERY_FILE).write_text(json.dumps(info))
    assert Gallery.open(tmp_path / "f").info.index == "flat"
    with pytest.raises(ValueError):
        GalleryInfo(kind="image", bits=64, model_checksum="c", index="hnsw")


class _FakeEncoder:
    """Enough of an Encoder for build_gallery on texts: codes from a hash of each text."""

    bits, checksum, info = 64, "f" * 64, SimpleNamespace(method="fake")

    def encode_texts(self, texts):
        return np.stack([np.frombuffer(hashlib.sha256(t.encode()).digest()[:8], dtype=np.uint8) for t in texts])


def test_cli_index_flag_and_env_var(tmp_path, monkeypatch):
    import index.commands as commands
    from service.cli import app

    monkeypatch.setattr(commands, "_load_encoder", lambda *a, **k: _FakeEncoder())
    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(f"text number {i}" for i in range(40)) + "\n")
    runner = CliRunner()
    env = {"COLUMNS": "240"}
    result = runner.invoke(app, ["index", "--help"], env=env)
    help_text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", result.output)
    assert "--index" in help_text and "CMHASH_INDEX_TYPE" in help_text and "flat|mih" in help_text
    args = ["index", "--model", str(tmp_path), "--texts", str(texts), "--no-progress"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "m"), "--index", "mih"], env=env)
    assert result.exit_code == 0, result.output
    assert Gallery.open(tmp_path / "m").info.index == "mih"
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "m")], env=env)  # re-run: keeps mih
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "m")], env={**env, "CMHASH_INDEX_TYPE": "flat"})
    assert result.exit_code == 2 and "rebuild" in result.output
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "m"), "--rebuild", "--index", "flat"], env=env)
    assert result.exit_code == 0, result.output
    assert Gallery.open(tmp_path / "m").info.index == "flat"
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "e")], env={**env, "CMHASH_INDEX_TYPE": "mih"})
    assert result.exit_code == 0 and Gallery.open(tmp_path / "e").info.index == "mih"
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "x"), "--index", "hnsw"], env=env)
    assert result.exit_code == 2


def test_search_pages_through_a_mih_gallery_match_flat(tmp_path):
    from index.search import search_pages

    rng = np.random.default_rng(8)
    codes = random_codes(rng, 500, 64)
    codes[100:200] = codes[0]
    stores = [open_or_create(tmp_path / name, "text", _model(), index=name).store for name in ("flat", "mih")]
    stores[1].mih.mode = "always"
    for store in stores:
        store.add([f"t{i}" for i in range(500)], codes, [{"i": i} for i in range(500)])
    queries = codes[[0, 5, 7]]
    for radius in (None, 0, 6):
        a, b = (search_pages(s, queries, [(0, 10), (3, 20), (50, 60)], radius) for s in stores)
        assert a == b

"""A real gallery save (and a journal compaction) SIGKILLed at each fsync and rename, in a child
process (tests/index/crash_injector.py): the parent must always open a valid gallery holding
exactly the data of before or after the write, and a later save must work and clean up."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from index.gallery import Gallery, GalleryInfo
from index.journal import JournaledGallery
from tests.index.crash_injector import count_steps, crash_at

BITS = 16


def _codes(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, BITS // 8), dtype=np.uint8)


def _contents(store) -> dict[str, tuple[str, dict]]:
    out = {}
    for i in store.ids():
        item = store.get(i)
        out[i] = (bytes(item["code"]).hex(), item["metadata"])
    return out


def _make(path: Path) -> dict:
    g = Gallery.create(path, GalleryInfo(kind="text", bits=BITS, model_checksum="m" * 64))
    g.store.add([f"a{i}" for i in range(20)], _codes(20, 1), [{"i": i} for i in range(20)])
    g.save()
    return _contents(g.store)


def _save_job(path: str) -> None:
    g = Gallery.open(Path(path))
    g.store.remove(["a0", "a1"])
    g.store.add([f"b{i}" for i in range(5)], _codes(5, 2), [{"b": i} for i in range(5)])
    g.save()


def _expected_after(before: dict) -> dict:
    after = {k: v for k, v in before.items() if k not in ("a0", "a1")}
    for i, code in enumerate(_codes(5, 2)):
        after[f"b{i}"] = (bytes(code).hex(), {"b": i})
    return after


def test_save_killed_at_every_step_leaves_before_or_after(tmp_path: Path) -> None:
    pristine = tmp_path / "pristine"
    before = _make(pristine)
    after = _expected_after(before)
    probe = tmp_path / "probe"
    shutil.copytree(pristine, probe)
    steps = count_steps(_save_job, str(probe))
    assert steps >= 6  # files, snapshot dir, rename, parent dir, CURRENT.tmp, CURRENT rename, dir
    assert _contents(Gallery.open(probe).store) == after
    seen = set()
    for n in range(1, steps + 1):
        d = tmp_path / f"crash{n}"
        shutil.copytree(pristine, d)
        assert crash_at(n, _save_job, str(d)), n
        g = Gallery.open(d)
        got = _contents(g.store)
        assert got in (before, after), n
        assert g.fallback is None, n  # a crash never damages what CURRENT names
        seen.add("after" if got == after else "before")
        # the next save works, keeps the previous snapshot and removes the interrupted one
        g.store.add(["z"], _codes(1, 9))
        g.save()
        assert not [p for p in d.iterdir() if p.name.endswith(".tmp")], n
        assert _contents(Gallery.open(d).store) == {**got, "z": (bytes(_codes(1, 9)[0]).hex(), {})}
    assert seen == {"before", "after"}


def _journal_job(path: str) -> None:
    j = JournaledGallery(Gallery.open(Path(path)), compact_every=10_000)
    for i in range(3):
        j.add([f"c{i}"], _codes(1, 10 + i), [{"c": i}])
    j.remove(["a5"])
    j.compact()


def test_compaction_killed_at_every_step_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    pristine = tmp_path / "pristine"
    before = _make(pristine)
    writes = [("add", f"c{i}", (bytes(_codes(1, 10 + i)[0]).hex(), {"c": i})) for i in range(3)]
    writes.append(("remove", "a5", None))

    def state_after(k: int) -> dict:
        s = dict(before)
        for op, key, value in writes[:k]:
            if op == "add":
                s[key] = value
            else:
                s.pop(key, None)
        return s

    probe = tmp_path / "probe"
    shutil.copytree(pristine, probe)
    steps = count_steps(_journal_job, str(probe))
    for n in range(1, steps + 1):
        d = tmp_path / f"crash{n}"
        shutil.copytree(pristine, d)
        assert crash_at(n, _journal_job, str(d)), n
        j = JournaledGallery(Gallery.open(d))
        got = _contents(j.gallery.store)
        # the first step of JournaledGallery's open is an fsync; each write then fsyncs once before
        # it is acknowledged; the killed write may or may not have reached the file
        acked = max(0, min(len(writes), n - 2))
        assert got in (state_after(acked), state_after(min(acked + 1, len(writes)))), n
        j.close()
        assert _contents(JournaledGallery(Gallery.open(d)).gallery.store) == got, n

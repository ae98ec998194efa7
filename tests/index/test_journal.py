"""The gallery journal: acknowledged adds and removes survive a crash (no save, only the
journal), a crash at any step of compaction neither loses nor repeats a change, and a torn
last line (a write never acknowledged) is dropped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from index.gallery import Gallery, GalleryInfo
from index.journal import (
    JOURNAL_FILE,
    MARKER_FILE,
    JournaledGallery,
    JournalError,
    read_journal,
)
from index.snapshots import CURRENT

BITS = 32


def new_gallery(path: Path) -> Gallery:
    return Gallery.create(path, GalleryInfo(kind="image", bits=BITS, model_checksum="m" * 64))


def codes(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, BITS // 8), dtype=np.uint8)


def contents(gallery: Gallery) -> list[tuple[str, bytes, dict]]:
    """(id, code, metadata) of every item in insertion order."""
    store = gallery.store
    return [(i, bytes(store.get(i)["code"]), store.get(i)["metadata"]) for i in store.ids()]


def apply_ops(journaled: JournaledGallery, expected: dict[str, tuple[bytes, dict]]) -> None:
    """A mix of batch adds, single adds and removes, mirrored into `expected` (the oracle)."""
    batch = codes(5, 1)
    ids = [f"a{i}" for i in range(5)]
    journaled.add(ids, batch, [{"n": i} for i in range(5)])
    expected.update({i: (bytes(c), {"n": n}) for n, (i, c) in enumerate(zip(ids, batch))})
    removed = journaled.remove(["a1", "a3", "missing"])  # the removed items, read under the lock
    assert [(r["id"], bytes(r["code"]), r["metadata"]) for r in removed] == [
        ("a1", expected["a1"][0], {"n": 1}),
        ("a3", expected["a3"][0], {"n": 3}),
    ]
    del expected["a1"], expected["a3"]
    one = codes(1, 2)
    journaled.add(["a1"], one, [{"again": True}])  # re-added: now last in insertion order
    expected["a1"] = (bytes(one[0]), {"again": True})
    with pytest.raises(ValueError):
        journaled.add(["a0"], codes(1, 3))  # duplicate: refused, nothing journaled


def as_list(expected: dict[str, tuple[bytes, dict]]) -> list[tuple[str, bytes, dict]]:
    return [(i, code, meta) for i, (code, meta) in expected.items()]


def test_crash_without_save_keeps_every_acknowledged_change(tmp_path: Path) -> None:
    journaled = JournaledGallery(new_gallery(tmp_path / "g"), compact_every=1000)
    expected: dict[str, tuple[bytes, dict]] = {}
    apply_ops(journaled, expected)
    assert contents(journaled.gallery) == as_list(expected)
    # crash: the process dies, nothing saved; the snapshot on disk is still empty
    assert len(Gallery.open(tmp_path / "g").store) == 0
    reopened = JournaledGallery(Gallery.open(tmp_path / "g"))
    assert contents(reopened.gallery) == as_list(expected)
    assert reopened.pending == len(read_journal(tmp_path / "g")) == 8
    reopened.close()  # compacts: the snapshot alone now holds everything
    assert (tmp_path / "g" / JOURNAL_FILE).read_bytes() == b""
    assert contents(Gallery.open(tmp_path / "g")) == as_list(expected)


def test_compaction_every_n_and_torn_last_line(tmp_path: Path) -> None:
    journaled = JournaledGallery(new_gallery(tmp_path / "g"), compact_every=3)
    journaled.add(["x", "y"], codes(2, 4))
    assert journaled.pending == 2 and len(Gallery.open(tmp_path / "g").store) == 0
    journaled.add(["z"], codes(1, 5))
    assert journaled.pending == 0 and Gallery.open(tmp_path / "g").store.ids() == ["x", "y", "z"]
    journaled.remove(["y"])
    with open(tmp_path / "g" / JOURNAL_FILE, "ab") as f:  # a crash in the middle of an append
        f.write(b'{"seq": 99, "op": "add", "id": "torn", "co')
    reopened = JournaledGallery(Gallery.open(tmp_path / "g"))
    assert reopened.gallery.store.ids() == ["x", "z"]
    reopened.add(["w"], codes(1, 8))  # appended after the torn line was cut off
    assert JournaledGallery(Gallery.open(tmp_path / "g")).gallery.store.ids() == ["x", "z", "w"]


def test_damaged_journal_is_refused(tmp_path: Path) -> None:
    journaled = JournaledGallery(new_gallery(tmp_path / "g"))
    journaled.add(["x"], codes(1, 6))
    journal = tmp_path / "g" / JOURNAL_FILE
    journal.write_bytes(b"garbage\n" + journal.read_bytes())
    with pytest.raises(JournalError):
        JournaledGallery(Gallery.open(tmp_path / "g"))


@pytest.mark.parametrize("saved", [False, True])
def test_crash_during_compaction_neither_loses_nor_repeats(tmp_path: Path, saved: bool) -> None:
    """The marker is written, then (`saved`) the snapshot replaced, then the crash: before the
    journal is truncated."""
    path = tmp_path / "g"
    journaled = JournaledGallery(new_gallery(path))
    expected: dict[str, tuple[bytes, dict]] = {}
    apply_ops(journaled, expected)
    before = (path / CURRENT).read_text().strip()
    (path / MARKER_FILE).write_text(json.dumps({"before": before, "seq": 8}))
    if saved:
        journaled.gallery.save()
        assert (path / CURRENT).read_text().strip() != before
    reopened = JournaledGallery(Gallery.open(path))
    assert contents(reopened.gallery) == as_list(expected)
    assert reopened.pending == (0 if saved else 8)  # records already in the new snapshot are skipped
    reopened.add(["after"], codes(1, 7))  # numbered past the marker, so replayed next time
    expected["after"] = (bytes(codes(1, 7)[0]), {})
    assert contents(JournaledGallery(Gallery.open(path)).gallery) == as_list(expected)


class _FailingOs:
    """`os` as index.journal sees it, with the calls in `fail` raising OSError(ENOSPC)."""

    def __init__(self, *fail: str) -> None:
        self.fail = set(fail)

    def __getattr__(self, name: str):
        import os

        if name in self.fail:

            def failing(*args, **kwargs):
                raise OSError(28, "No space left on device")

            return failing
        return getattr(os, name)


def test_failed_append_is_cut_back_and_never_replayed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import index.journal as journal_module

    journaled = JournaledGallery(new_gallery(tmp_path / "g"))
    journaled.add(["ok"], codes(1, 1))
    size = (tmp_path / "g" / JOURNAL_FILE).stat().st_size
    monkeypatch.setattr(journal_module, "os", _FailingOs("fsync"))  # the bytes reach the file, the fsync fails
    with pytest.raises(OSError):
        journaled.add(["refused"], codes(1, 2))
    with pytest.raises(OSError):
        journaled.remove(["ok"])
    assert (tmp_path / "g" / JOURNAL_FILE).stat().st_size == size and journaled.ids() == ["ok"]
    monkeypatch.setattr(journal_module, "os", _FailingOs("fsync", "ftruncate"))  # cannot even cut back: read-only
    with pytest.raises(OSError):
        journaled.add(["torn"], codes(1, 3))
    assert not journaled.writable
    monkeypatch.undo()
    journaled.add(["after"], codes(1, 4))  # cut back first, then appended
    assert journaled.writable
    assert [r["id"] for r in read_journal(tmp_path / "g")] == ["ok", "after"]
    assert JournaledGallery(Gallery.open(tmp_path / "g")).ids() == ["ok", "after"]


def test_failed_compaction_keeps_the_write_and_is_retried(tmp_path: Path) -> None:
    journaled = JournaledGallery(new_gallery(tmp_path / "g"), compact_every=2)
    save = journaled.gallery.save

    def failing_save() -> None:
        raise OSError(28, "No space left on device")

    journaled.gallery.save = failing_save  # type: ignore[method-assign]
    journaled.add(["a", "b"], codes(2, 1))  # compaction fails: not raised, counted
    journaled.remove(["a"])
    assert journaled.take_compaction_failures() == 1 and journaled.take_compaction_failures() == 0
    assert journaled.pending == 3 and not list((tmp_path / "g").glob("*.tmp"))
    journaled.gallery.save = save  # type: ignore[method-assign]
    journaled.add(["c"], codes(1, 2))  # retried (after a short back-off) and done
    assert journaled.pending == 0 and Gallery.open(tmp_path / "g").store.ids() == ["b", "c"]

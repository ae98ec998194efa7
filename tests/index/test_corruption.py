"""Damaged gallery files on disk (no mocks): a truncated index or metadata file of the current
snapshot, a bad CURRENT pointer, a damaged journal line, and the startup sweep."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from index.gallery import FOLDED_FILE, CorruptGalleryError, Gallery, GalleryInfo
from index.journal import JOURNAL_FILE, JournaledGallery, JournalError
from index.snapshots import CURRENT, verify_snapshot
from index.sweep import sweep_gallery_dir, sweep_uploads

BITS = 16


def _codes(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, BITS // 8), dtype=np.uint8)


def _contents(store) -> dict[str, tuple[str, dict]]:
    return {i: (bytes(store.get(i)["code"]).hex(), store.get(i)["metadata"]) for i in store.ids()}


def _current(path: Path) -> Path:
    return path / (path / CURRENT).read_text().strip()


def _journaled(path: Path) -> dict:
    """A gallery with two compactions and journaled writes after them (the process then
    'dies': no close); returns the acknowledged contents."""
    Gallery.create(path, GalleryInfo(kind="text", bits=BITS, model_checksum="m" * 64))
    j = JournaledGallery(Gallery.open(path), compact_every=10_000)
    j.add([f"a{i}" for i in range(10)], _codes(10, 1), [{"a": i} for i in range(10)])
    j.compact()
    j.add([f"b{i}" for i in range(5)], _codes(5, 2), [{"b": i} for i in range(5)])
    j.remove(["a3"])
    j.compact()
    j.add(["c0", "c1"], _codes(2, 3), [{"c": 0}, {"c": 1}])
    j.remove(["a4", "b1"])
    acknowledged = _contents(j.gallery.store)
    _abandon(j)  # simulated crash: no final compaction
    return acknowledged


def _abandon(j: JournaledGallery) -> None:
    """Drop the journal's file handle without compacting (what a killed process leaves)."""
    fd = getattr(j, "_fd", None)
    if isinstance(fd, int):
        os.close(fd)
        j._fd = None
    elif getattr(j, "_file", None) is not None:
        j._file.close()


def test_compaction_snapshots_keep_the_previous_one_and_the_folded_journal(tmp_path: Path) -> None:
    _journaled(tmp_path / "g")
    snaps = sorted(p.name for p in (tmp_path / "g").iterdir() if p.name.startswith("snapshot-"))
    assert snaps == ["snapshot-000002", "snapshot-000003"]
    state = verify_snapshot(_current(tmp_path / "g"))
    assert state["previous"] == "snapshot-000002" and state["folded"]["base"] == "snapshot-000002"
    assert FOLDED_FILE in state["files"]


@pytest.mark.parametrize("victim", ["index.faissbin", "metadata.sqlite"])
def test_truncated_current_snapshot_falls_back_and_loses_nothing(tmp_path: Path, victim: str, caplog) -> None:
    d = tmp_path / "g"
    acknowledged = _journaled(d)
    f = _current(d) / victim
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with caplog.at_level(logging.ERROR, logger="cmhash.gallery"):
        j = JournaledGallery(Gallery.open(d))
    assert j.gallery.fallback is not None and j.gallery.fallback.used == "snapshot-000002"
    assert "fell back to snapshot-000002" in caplog.text and str(tmp_path) not in j.gallery.fallback.reason
    assert _contents(j.gallery.store) == acknowledged
    # new writes and a compaction after the fallback work, and the result reopens cleanly
    j.add(["d0"], _codes(1, 4))
    j.close()
    reopened = Gallery.open(d)
    assert reopened.fallback is None
    assert _contents(reopened.store) == {**acknowledged, "d0": (bytes(_codes(1, 4)[0]).hex(), {})}


@pytest.mark.parametrize("pointer", [b"garbage\n", b"snapshot-000099\n", b"\xff\xfe", None])
def test_bad_current_falls_back_to_the_newest_snapshot(tmp_path: Path, pointer: bytes | None) -> None:
    d = tmp_path / "g"
    acknowledged = _journaled(d)
    if pointer is None:
        (d / CURRENT).unlink()
    else:
        (d / CURRENT).write_bytes(pointer)
    j = JournaledGallery(Gallery.open(d))
    assert j.gallery.fallback is not None and j.gallery.fallback.kind == "current"
    assert _contents(j.gallery.store) == acknowledged
    assert (d / CURRENT).read_text().strip() == "snapshot-000003"  # repaired


def test_bad_current_and_damaged_newest_snapshot(tmp_path: Path) -> None:
    d = tmp_path / "g"
    acknowledged = _journaled(d)
    (d / CURRENT).write_text("nonsense")
    (d / "snapshot-000003" / "index.faissbin").write_bytes(b"")
    j = JournaledGallery(Gallery.open(d))
    assert _contents(j.gallery.store) == acknowledged


def test_fallback_that_would_lose_data_is_refused(tmp_path: Path) -> None:
    """A save outside compaction folds no journal: the older snapshot lacks its changes."""
    d = tmp_path / "g"
    g = Gallery.create(d, GalleryInfo(kind="text", bits=BITS, model_checksum="m" * 64))
    g.store.add(["x"], _codes(1, 1))
    g.save()
    (_current(d) / "index.faissbin").write_bytes(b"\0" * 10)
    with pytest.raises(CorruptGalleryError, match="cannot be recovered") as err:
        Gallery.open(d)
    assert str(tmp_path) not in str(err.value)


def test_every_snapshot_damaged_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "g"
    _journaled(d)
    for snap in d.glob("snapshot-*"):
        (snap / "metadata.sqlite").write_bytes(b"")
    with pytest.raises(CorruptGalleryError, match="no valid snapshot"):
        Gallery.open(d)


def test_damaged_journal_line_in_the_middle_refuses_the_gallery(tmp_path: Path) -> None:
    """Decision: a damaged record in the middle cannot be skipped safely (it may be an add that
    a later record removes, or the only copy of an acknowledged write), so the gallery is
    refused rather than opened with acknowledged records dropped; a torn LAST line (never
    acknowledged) is dropped as before."""
    d = tmp_path / "g"
    _journaled(d)
    lines = (d / JOURNAL_FILE).read_bytes().split(b"\n")
    lines[1] = lines[1][:7] + b"\x00garbage"
    (d / JOURNAL_FILE).write_bytes(b"\n".join(lines))
    with pytest.raises(JournalError):
        JournaledGallery(Gallery.open(d))
    # the file was left as it was: nothing acknowledged is thrown away
    assert (d / JOURNAL_FILE).read_bytes() == b"\n".join(lines)


def test_sweep_removes_leftovers_and_keeps_live_files(tmp_path: Path) -> None:
    d = tmp_path / "g"
    acknowledged = _journaled(d)
    (d / "CURRENT.tmp").write_text("snapshot-000009\n")
    (d / "gallery.json.tmp").write_text("{")
    (d / "snapshot-000004.tmp").mkdir()
    (d / "snapshot-000004.tmp" / "index.faissbin").write_bytes(b"half")
    shutil.copytree(d / "snapshot-000002", d / "snapshot-000001")  # a stale old snapshot
    (d / "snapshot-000005").mkdir()  # a newer, half-made snapshot named by nothing
    removed = sweep_gallery_dir(d)
    assert sorted(removed) == [
        "CURRENT.tmp",
        "gallery.json.tmp",
        "snapshot-000001",
        "snapshot-000004.tmp",
        "snapshot-000005",
    ]
    names = sorted(p.name for p in d.iterdir())
    assert names == ["CURRENT", "gallery.json", JOURNAL_FILE, "snapshot-000002", "snapshot-000003", "writer.lock"]
    assert _contents(JournaledGallery(Gallery.open(d)).gallery.store) == acknowledged

    uploads = tmp_path / "uploads"
    uploads.mkdir()
    live = "0123456789abcdef01234567-0123456789ab.png"
    orphan = "fedcba9876543210fedcba98-ba9876543210.jpg"
    half = "00000000000000000000aaaa-000000000000.png.tmp"
    (uploads / live).write_bytes(b"live")
    (uploads / orphan).write_bytes(b"orphan")
    (uploads / half).write_bytes(b"half")
    (uploads / "README.txt").write_text("not an upload")
    assert sorted(sweep_uploads(uploads, {live})) == sorted([orphan, half])
    assert sorted(p.name for p in uploads.iterdir()) == sorted(["README.txt", live])


def test_sweep_keeps_a_damaged_current_and_its_fallback(tmp_path: Path) -> None:
    d = tmp_path / "g"
    acknowledged = _journaled(d)
    (_current(d) / "index.faissbin").write_bytes(b"")
    assert sweep_gallery_dir(d) == []
    assert _contents(Gallery.open(d).store) != {}  # still opens (from the fallback)
    assert _contents(JournaledGallery(Gallery.open(d)).gallery.store) == acknowledged
    assert json.loads((d / "snapshot-000003" / "store.json").read_text())["folded"]

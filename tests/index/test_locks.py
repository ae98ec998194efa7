"""One writer per gallery: a second writer is refused, in this process or another, and a
writer killed with SIGKILL leaves no stale lock behind."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from index.gallery import Gallery, GalleryInfo
from index.journal import JournaledGallery
from index.locks import GalleryBusyError, WriterLock


def make_gallery(path: Path) -> Gallery:
    gallery = Gallery.create(path, GalleryInfo(kind="text", bits=16, model_checksum="m", model_method="bi_ncmh"))
    gallery.save()
    return gallery


def test_writers_in_this_process_share_the_lock_until_the_last_closes(tmp_path: Path) -> None:
    first = JournaledGallery(make_gallery(tmp_path / "g"))
    with WriterLock(tmp_path / "g"):  # this process is the writer: shared, counted
        pass
    first.add(["a"], np.zeros((1, 2), dtype=np.uint8))
    assert _other_process_can_lock(tmp_path / "g") is False
    first.close()
    assert _other_process_can_lock(tmp_path / "g") is True  # released with the last holder


def _try_lock(path: str, out: multiprocessing.queues.Queue) -> None:  # type: ignore[name-defined]
    try:
        WriterLock(Path(path)).release()
        out.put(True)
    except GalleryBusyError:
        out.put(False)


def _other_process_can_lock(path: Path) -> bool:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_try_lock, args=(str(path), out))
    child.start()
    child.join(60)
    return bool(out.get(timeout=5))


def _hold(path: str, ready: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    JournaledGallery(Gallery.open(Path(path)))
    ready.set()
    signal.pause()


def test_another_process_is_refused_and_a_killed_writer_leaves_no_lock(tmp_path: Path) -> None:
    make_gallery(tmp_path / "g")
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    child = ctx.Process(target=_hold, args=(str(tmp_path / "g"), ready))
    child.start()
    try:
        assert ready.wait(30)
        with pytest.raises(GalleryBusyError, match=f"pid {child.pid}"):
            WriterLock(tmp_path / "g")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
    with WriterLock(tmp_path / "g"):  # the kernel dropped the dead writer's lock
        pass


def test_cmhash_index_refuses_a_gallery_a_server_writes(tiny_model_dir: Path, tmp_path: Path) -> None:
    from index.commands import build_gallery

    texts = tmp_path / "texts.txt"
    texts.write_text("a red square\na blue circle\n")
    build_gallery(tiny_model_dir, tmp_path / "g", texts=texts, progress=False)
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    child = ctx.Process(target=_hold, args=(str(tmp_path / "g"), ready))
    child.start()
    try:
        assert ready.wait(30)
        with pytest.raises(GalleryBusyError):
            build_gallery(tiny_model_dir, tmp_path / "g", texts=texts, progress=False)
        with pytest.raises(GalleryBusyError):
            build_gallery(tiny_model_dir, tmp_path / "g", texts=texts, rebuild=True, progress=False)
        assert not (tmp_path / "g.rebuild").exists() or not any((tmp_path / "g.rebuild").iterdir())
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
    assert build_gallery(tiny_model_dir, tmp_path / "g", texts=texts, progress=False).added == 0

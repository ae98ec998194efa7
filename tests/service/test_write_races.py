"""Concurrent adds and deletes of the same ids: for any interleaving, acknowledged adds minus
acknowledged deletes is what is present at the end (also after reopening from disk), a delete is
answered 404 only when it removed nothing, and the upload folder holds exactly the files of the
live image items."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from index.errors import DuplicateIdError
from index.gallery import Gallery, GalleryInfo
from index.journal import JournaledGallery
from service.settings import Settings
from tests.service.conftest import open_client, png_bytes
from tests.service.test_disk_full import live_files, upload_files

ADDERS = DELETERS = 4


def race(add, delete, ids: list[str], seconds: float) -> tuple[Counter[str], Counter[str], list[str]]:
    """ADDERS threads adding and DELETERS threads deleting `ids` (round robin) for `seconds`.
    `add(id, n)` / `delete(id)` return True when acknowledged, False when refused as expected
    (duplicate / absent). Returns acknowledged adds and deletes per id, and unexpected errors."""
    adds: Counter[str] = Counter()
    deletes: Counter[str] = Counter()
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(ADDERS + DELETERS)
    deadline = time.monotonic() + seconds

    def run(op, tally: Counter[str], worker: int) -> None:
        start.wait()
        n = 0
        while time.monotonic() < deadline:
            item_id = ids[(n + worker) % len(ids)]
            try:
                ok = op(item_id, n * 100 + worker) if op is add else op(item_id)
            except Exception as exc:  # every unexpected answer is collected
                with lock:
                    errors.append(f"{item_id}: {exc!r}")
                return
            if ok:
                with lock:
                    tally[item_id] += 1
            n += 1

    threads = [threading.Thread(target=run, args=(add, adds, w)) for w in range(ADDERS)]
    threads += [threading.Thread(target=run, args=(delete, deletes, w)) for w in range(DELETERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    assert not any(t.is_alive() for t in threads)
    return adds, deletes, errors


def expected_present(ids: list[str], adds: Counter[str], deletes: Counter[str]) -> set[str]:
    """Per id, acknowledged adds minus acknowledged deletes is 0 or 1: whether it is present."""
    present = set()
    for item_id in ids:
        balance = adds[item_id] - deletes[item_id]
        assert balance in (0, 1), f"{item_id}: {adds[item_id]} adds acknowledged, {deletes[item_id]} deletes"
        if balance:
            present.add(item_id)
    return present


def test_journaled_gallery_adds_and_removes_of_one_id(tmp_path: Path) -> None:
    path = tmp_path / "g"
    journaled = JournaledGallery(
        Gallery.create(path, GalleryInfo(kind="text", bits=32, model_checksum="m" * 64)), compact_every=50
    )  # compactions happen in the middle of the race too
    ids = ["same", "other"]

    def add(item_id: str, n: int) -> bool:
        code = np.random.default_rng(n).integers(0, 256, (1, 4), dtype=np.uint8)
        try:
            journaled.add([item_id], code, [{"n": n}])
        except DuplicateIdError:
            return False
        return True

    def delete(item_id: str) -> bool:
        removed = journaled.remove([item_id])
        assert [r["id"] for r in removed] in ([], [item_id])
        return bool(removed)

    adds, deletes, errors = race(add, delete, ids, 2.0)
    assert not errors and sum(adds.values()) > 20 and sum(deletes.values()) > 20, (adds, deletes, errors)
    present = expected_present(ids, adds, deletes)
    assert set(journaled.ids()) == present
    crashed = JournaledGallery(Gallery.open(path))  # the journal alone, as after a crash
    assert set(crashed.ids()) == present
    journaled.close()
    assert set(Gallery.open(path).store.ids()) == present


def test_concurrent_image_adds_and_deletes_of_one_id(make_settings) -> None:
    settings: Settings = make_settings(compact_every=7)
    ids = ["same"]
    blobs = [png_bytes(n % 4, 200 + n) for n in range(8)]
    with open_client(settings) as client:  # one client: its event loop runs every request (threads share it)
        statuses: Counter[str] = Counter()

        def add(item_id: str, n: int) -> bool:
            r = client.post(
                "/gallery/images",
                files={"files": (f"{n}.png", blobs[n % len(blobs)], "image/png")},
                data={"ids": item_id},
            )
            statuses[f"add {r.status_code}"] += 1
            assert r.status_code in (201, 409), r.text
            return r.status_code == 201

        def delete(item_id: str) -> bool:
            r = client.delete(f"/gallery/images/{item_id}")
            statuses[f"delete {r.status_code}"] += 1
            assert r.status_code in (200, 404), r.text
            return r.status_code == 200

        adds, deletes, errors = race(add, delete, ids, 4.0)
        assert not errors, errors
        assert adds["same"] >= 3 and deletes["same"] >= 3, statuses
        present = expected_present(ids, adds, deletes)
        assert ("same" in present) == (client.get("/gallery/images/same").status_code == 200), statuses
        assert client.get("/gallery/images").json()["count"] == 12 + len(present)
        assert upload_files(settings) == live_files(client)  # no orphan, none missing
    with open_client(settings) as client:  # reopened from disk
        assert ("same" in present) == (client.get("/gallery/images/same").status_code == 200)
        assert upload_files(settings) == live_files(client)
        if "same" in present:
            assert client.get("/gallery/images/same/file").status_code == 200


def test_concurrent_text_adds_and_deletes(make_settings) -> None:
    settings: Settings = make_settings(compact_every=5)
    ids = ["x", "y", "t00"]
    with open_client(settings) as client:  # one client: its event loop runs every request (threads share it)

        def add(item_id: str, n: int) -> bool:
            r = client.post("/gallery/texts", json={"items": [{"id": item_id, "text": f"a red square {n}"}]})
            assert r.status_code in (201, 409), r.text
            return r.status_code == 201

        def delete(item_id: str) -> bool:
            r = client.delete(f"/gallery/texts/{item_id}")
            assert r.status_code in (200, 404), r.text
            return r.status_code == 200

        adds, deletes, errors = race(add, delete, ids, 3.0)
        assert not errors, errors
        adds["t00"] += 1  # present before the race: its build is its acknowledged add
        present = expected_present(ids, adds, deletes)
        assert {i for i in ids if client.get(f"/gallery/texts/{i}").status_code == 200} == present
    with open_client(settings) as client:
        assert {i for i in ids if client.get(f"/gallery/texts/{i}").status_code == 200} == present

"""A full or failing disk under gallery writes: a refused write is answered 507 (disk full, quota)
or 503 (any other I/O error) with the error body and no server path, never becomes durable (not
after a restart either) and leaves no file behind; an acknowledged write stays even when the
compaction after it fails. The faults are injected into the file layer (`os` as the journal,
the upload writer or the snapshots see it); as root, a real 5 MB tmpfs is filled as well."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

import index.journal
import index.snapshots
import service.uploads
from index.journal import JOURNAL_FILE, read_journal
from service.settings import Settings
from tests.service.conftest import open_client, png_bytes


class FaultyOs:
    """Stands in for the `os` module inside one module: every name is the real one, except the
    calls named in `faults` (name -> errno), which fail; a failing `write` first writes half its
    buffer (a short write, as on a disk that fills up), then raises."""

    def __init__(self, **faults: int) -> None:
        self.faults = faults
        self._half_written = False

    def __getattr__(self, name: str) -> Any:
        if name in self.faults:
            code = self.faults[name]

            def fail(*args: Any, **kwargs: Any) -> Any:
                raise OSError(code, os.strerror(code))

            return fail
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        if "write" not in self.faults:
            return os.write(fd, data)
        if not self._half_written and len(data) > 1:
            self._half_written = True
            return os.write(fd, bytes(data[: len(data) // 2]))
        self._half_written = False
        raise OSError(self.faults["write"], os.strerror(self.faults["write"]))


@contextmanager
def faulty(module: types.ModuleType, **faults: int) -> Iterator[FaultyOs]:
    """`module` sees a FaultyOs as `os` while the block runs."""
    real = module.os  # type: ignore[attr-defined]
    fake = FaultyOs(**faults)
    module.os = fake  # type: ignore[attr-defined]
    try:
        yield fake
    finally:
        module.os = real  # type: ignore[attr-defined]


def leftovers(root: Path) -> list[Path]:
    """Temporary files anywhere under `root` (a failed write must leave none)."""
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def expect_refused(r: httpx.Response, status: int, *paths: Path) -> None:
    """The error body, the status's code, and no server path in the message."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == {507: "insufficient_storage", 503: "storage_unavailable"}[status]
    for path in paths:
        assert str(path) not in r.text and os.sep + path.name not in r.text, r.text


def add_text(client: TestClient, item_id: str, **extra: Any) -> httpx.Response:
    return client.post("/gallery/texts", json={"items": [{"id": item_id, "text": f"a red square {item_id}", **extra}]})


def add_image(client: TestClient, item_id: str, seed: int = 0) -> httpx.Response:
    return client.post(
        "/gallery/images",
        files={"files": (f"{item_id}.png", png_bytes(seed % 4, seed), "image/png")},
        data={"ids": item_id},
    )


def upload_files(settings: Settings) -> set[str]:
    folder = settings.image_gallery / "uploads"  # type: ignore[operator]
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


UPLOAD_NAME = re.compile(r"^[0-9a-f]{24}-[0-9a-f]{12}\.\w+$")  # how the service names stored uploads


def live_files(client: TestClient) -> set[str]:
    """The upload file names of the live image items (built items name their source files)."""
    ids = [
        h["id"]
        for h in client.post(
            "/search/image-to-image", files={"file": ("q.png", png_bytes(0), "image/png")}, data={"k": "1000"}
        ).json()["results"]
    ]
    names = set()
    for item_id in ids:
        path = client.get(f"/gallery/images/{item_id}").json()["metadata"].get("path")
        if path and UPLOAD_NAME.match(Path(path).name):
            names.add(Path(path).name)
    return names


JOURNAL_FAULTS = [
    pytest.param({"write": errno.ENOSPC}, 507, id="write-ENOSPC"),
    pytest.param({"write": errno.EDQUOT}, 507, id="write-EDQUOT"),
    pytest.param({"write": errno.EIO}, 503, id="write-EIO"),
    pytest.param({"fsync": errno.EIO}, 503, id="fsync-EIO"),  # the bytes were written: they must be cut back off
]


@pytest.mark.parametrize(("faults", "status"), JOURNAL_FAULTS)
def test_failed_journal_write_is_refused_and_never_durable(make_settings, faults: dict[str, int], status: int) -> None:
    settings: Settings = make_settings()
    roots = (settings.image_gallery, settings.text_gallery)
    with open_client(settings) as client:
        files_before = upload_files(settings)
        with faulty(index.journal, **faults):
            expect_refused(add_text(client, "refused_t"), status, *roots)  # type: ignore[arg-type]
            expect_refused(add_image(client, "refused_i"), status, *roots)  # type: ignore[arg-type]
            expect_refused(client.delete("/gallery/texts/t00"), status, *roots)  # type: ignore[arg-type]
        assert client.get("/gallery/texts/refused_t").status_code == 404
        assert client.get("/gallery/images/refused_i").status_code == 404
        assert client.get("/gallery/texts/t00").status_code == 200
        assert upload_files(settings) == files_before  # the refused image's file is gone too
        assert add_text(client, "after").status_code == 201  # the next write appends after the last good record
        assert add_image(client, "after_i", 3).status_code == 201
        for root in roots:
            assert not leftovers(root)  # type: ignore[arg-type]
        ids = [r["id"] for r in read_journal(settings.text_gallery)]  # type: ignore[arg-type]
        assert ids == ["after"]
    with open_client(settings) as client:  # after a restart: only what was acknowledged
        assert client.get("/gallery/texts/refused_t").status_code == 404
        assert client.get("/gallery/images/refused_i").status_code == 404
        assert client.get("/gallery/texts/t00").status_code == 200
        assert client.get("/gallery/texts/after").status_code == 200
        assert client.get("/gallery/images/after_i/file").status_code == 200
        assert upload_files(settings) == live_files(client)


@pytest.mark.parametrize(
    ("faults", "status"),
    [
        pytest.param({"write": errno.ENOSPC}, 507, id="write-ENOSPC"),
        pytest.param({"fsync": errno.EIO}, 503, id="fsync-EIO"),
        pytest.param({"replace": errno.ENOSPC}, 507, id="rename-ENOSPC"),
    ],
)
def test_failed_upload_write_leaves_no_file(make_settings, faults: dict[str, int], status: int) -> None:
    settings: Settings = make_settings()
    with open_client(settings) as client:
        files_before = upload_files(settings)
        with faulty(service.uploads, **faults):
            files = [("files", (f"u{i}.png", png_bytes(i, i), "image/png")) for i in range(2)]
            expect_refused(client.post("/gallery/images", files=files), status, settings.image_gallery)  # type: ignore[arg-type]
        assert client.get("/gallery/images/u0").status_code == 404
        assert upload_files(settings) == files_before and not leftovers(settings.image_gallery)  # type: ignore[arg-type]
        assert not read_journal(settings.image_gallery)  # type: ignore[arg-type]


def test_unrepairable_journal_refuses_writes_until_repaired(make_settings) -> None:
    """A failed append that cannot even be cut back off: writes are refused (reads still work)
    until the journal can be cut back; nothing is ever appended after the torn record."""
    settings: Settings = make_settings()
    journal = settings.text_gallery / JOURNAL_FILE  # type: ignore[operator]
    with open_client(settings) as client:
        with faulty(index.journal, write=errno.EIO, ftruncate=errno.EIO):
            expect_refused(add_text(client, "torn"), 503, settings.text_gallery)  # type: ignore[arg-type]
        assert journal.stat().st_size > 0  # half a record stays: the journal could not be cut back
        with faulty(index.journal, ftruncate=errno.EIO):
            r = add_text(client, "while_broken")
            expect_refused(r, 503, settings.text_gallery)  # type: ignore[arg-type]
            assert "read-only" in r.json()["error"]["message"]
            assert client.get("/gallery/texts/t00").status_code == 200
            assert client.post("/search/text-to-text", json={"text": "a red square"}).status_code == 200
        assert add_text(client, "repaired").status_code == 201  # cut back first, then appended
        assert [r["id"] for r in read_journal(settings.text_gallery)] == ["repaired"]  # type: ignore[arg-type]
    with open_client(settings) as client:
        assert [client.get(f"/gallery/texts/{i}").status_code for i in ("torn", "while_broken", "repaired")] == [
            404,
            404,
            200,
        ]


@pytest.mark.parametrize("where", ["marker", "save", "truncate"])
def test_failed_compaction_keeps_the_acknowledged_write(make_settings, where: str) -> None:
    """Compaction fails writing its marker (its temp file must go), saving the snapshot, or
    emptying the journal after the save: every append is answered 201, the failure is counted in
    /metrics, and a later write compacts."""
    settings: Settings = make_settings(compact_every=2)
    text_dir: Path = settings.text_gallery  # type: ignore[assignment]
    with open_client(settings) as client:
        journaled = client.app.state.cmhash.galleries["text"]  # type: ignore[attr-defined]
        real_save = journaled.gallery.save

        def failing_save() -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        module, faults = {
            "marker": (index.snapshots, {"replace": errno.ENOSPC}),  # journal.compacting.tmp written
            "save": (index.journal, {}),
            "truncate": (index.journal, {"ftruncate": errno.EIO}),
        }[where]
        if where == "save":
            journaled.gallery.save = failing_save
        with faulty(module, **faults):
            statuses = [add_text(client, f"c{i}").status_code for i in range(5)]
        journaled.gallery.save = real_save
        assert statuses == [201] * 5  # every append was durable: a failed compaction fails none of them
        metrics = client.get("/metrics").text
        name = "cmhash_gallery_compaction_failures_total"
        failures = [line for line in metrics.splitlines() if line.startswith(name)]
        assert failures and float(failures[0].split()[-1]) >= 1 and 'gallery="text"' in failures[0], failures
        assert not leftovers(text_dir) and not list(text_dir.glob("snapshot-*.tmp"))
        assert client.get("/gallery/texts").json()["pending"] >= 5
        for i in range(5, 9):  # compaction is retried by later writes, and now succeeds
            assert add_text(client, f"c{i}").status_code == 201
        assert client.get("/gallery/texts").json()["pending"] < 2
    with open_client(settings) as client:
        assert all(client.get(f"/gallery/texts/c{i}").status_code == 200 for i in range(9))


# ----------------------------------------------------------------------------- a real full disk


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 5 MB tmpfs (root only; skipped where it cannot be mounted)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    where = tmp_path / "tmpfs"
    where.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(where)], capture_output=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True, timeout=20, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=20, check=False)


def fill(path: Path, leave: int) -> None:
    """Fill the file system of `path` with `path` until about `leave` bytes are free."""
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    size = path.stat().st_size
    os.truncate(path, max(0, size - leave))


def test_full_tmpfs(tiny_model_dir: Path, gallery_templates: Path, tmpfs: Path) -> None:
    """Writes to galleries on a full 5 MB tmpfs: 201 or 507, nothing else; no temp file; after
    space is freed and the service restarted, exactly the acknowledged writes are there and the
    upload folder holds exactly the live items' files."""
    shutil.copytree(gallery_templates / "images", tmpfs / "images")
    shutil.copytree(gallery_templates / "texts", tmpfs / "texts")
    settings = Settings(
        model_dir=tiny_model_dir,
        image_gallery=tmpfs / "images",
        text_gallery=tmpfs / "texts",
        device="cpu",
        encoder_threads=1,
        compact_every=4,
    )
    filler = tmpfs / "filler"
    live = {"text": {f"t{i:02d}" for i in range(12)}, "image": {f"i{i:02d}" for i in range(12)}}
    statuses: list[int] = []
    with open_client(settings) as raw:
        client = TestClient(raw.app, raise_server_exceptions=False)
        fill(filler, 48 * 1024)
        for round_ in range(3):
            for n in range(40):
                item_id = f"r{round_}n{n}"
                kind = "image" if n % 3 == 0 else "text"
                if kind == "image":
                    r = add_image(client, item_id, n)
                else:
                    r = add_text(client, item_id, metadata={"pad": "p" * 2000})
                statuses.append(r.status_code)
                if r.status_code == 201:
                    live[kind].add(item_id)
                else:
                    expect_refused(r, 507, tmpfs)
                if n % 5 == 4 and live["text"]:  # a delete of an acknowledged item now and then
                    victim = sorted(live["text"])[0]
                    d = client.delete(f"/gallery/texts/{victim}")
                    statuses.append(d.status_code)
                    if d.status_code == 200:
                        live["text"].discard(victim)
                    else:
                        expect_refused(d, 507, tmpfs)
                assert not leftovers(tmpfs), leftovers(tmpfs)
            os.truncate(filler, max(0, filler.stat().st_size - 24 * 1024))  # some room again: writes resume
        assert 201 in statuses and 507 in statuses and set(statuses) <= {200, 201, 507}, statuses
    assert not leftovers(tmpfs)
    filler.unlink()
    with open_client(settings) as client:
        for kind, route in (("text", "/gallery/texts"), ("image", "/gallery/images")):
            assert client.get(route).json()["count"] == len(live[kind])
            for item_id in live[kind]:
                assert client.get(f"{route}/{item_id}").status_code == 200, item_id
        assert upload_files(settings) == live_files(client)

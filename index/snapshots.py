"""Crash-safe persistence of a multi-file store as numbered snapshot directories.

A save writes every file of a new ``snapshot-NNNNNN/`` (first as ``*.tmp``), fsyncs them,
renames the directory into place and then atomically replaces the one-line ``CURRENT``
pointer. Loading follows ``CURRENT`` and verifies each file's SHA-256 from the snapshot's
``store.json``. A crash at any point leaves ``CURRENT`` naming the previous, complete
snapshot; leftovers of an interrupted save are removed by the next successful one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

CURRENT = "CURRENT"
STATE_FILE = "store.json"
_SNAPSHOT = re.compile(r"^snapshot-(\d{6,})(\.tmp)?$")


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (so a rename inside it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically: temp file, fsync, rename, fsync the directory."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def _snapshots(path: Path) -> list[tuple[int, Path]]:
    found = []
    for child in path.iterdir() if path.is_dir() else ():
        m = _SNAPSHOT.match(child.name)
        if m:
            found.append((int(m.group(1)), child))
    return sorted(found)


def write_snapshot(path: Path, write: Callable[[Path], dict[str, Any]]) -> Path:
    """Make a new current snapshot in directory `path`.

    `write(tmp_dir)` writes the store's files into `tmp_dir` and returns its state (JSON-ready);
    the state plus each file's SHA-256 becomes the snapshot's ``store.json``. Returns the new
    snapshot directory."""
    path.mkdir(parents=True, exist_ok=True)
    existing = _snapshots(path)
    number = existing[-1][0] + 1 if existing else 1
    final = path / f"snapshot-{number:06d}"
    tmp = path / f"{final.name}.tmp"
    tmp.mkdir()
    try:
        state = dict(write(tmp))
        state["files"] = {f.name: sha256_file(f) for f in sorted(tmp.iterdir())}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")
        for f in tmp.iterdir():
            fsync_path(f)
        fsync_path(tmp)
        os.replace(tmp, final)
        fsync_path(path)
        write_atomic(path / CURRENT, final.name + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for _, old in existing:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_current(path: Path) -> tuple[Path, dict[str, Any]]:
    """(snapshot directory, state) of the current snapshot, every file's checksum verified."""
    pointer = path / CURRENT
    if not pointer.is_file():
        raise FileNotFoundError(f"{path} holds no saved store (no {CURRENT} file)")
    name = pointer.read_text(encoding="utf-8").strip()
    snap = path / name
    if not _SNAPSHOT.match(name) or name.endswith(".tmp") or not (snap / STATE_FILE).is_file():
        raise ValueError(f"{pointer} names {name!r}, which is not a complete snapshot")
    state = json.loads((snap / STATE_FILE).read_text(encoding="utf-8"))
    for fname, digest in state.get("files", {}).items():
        if not (snap / fname).is_file() or sha256_file(snap / fname) != digest:
            raise ValueError(f"{snap / fname} is missing or corrupt (checksum mismatch)")
    return snap, state

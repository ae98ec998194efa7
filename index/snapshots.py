"""Crash-safe persistence of a multi-file store as numbered snapshot directories.

A save writes every file of a new ``snapshot-NNNNNN/`` (first as ``*.tmp``), fsyncs them,
renames the directory into place and then atomically replaces the one-line ``CURRENT``
pointer. Loading follows ``CURRENT`` and verifies each file's SHA-256 from the snapshot's
``store.json``. A crash at any point leaves ``CURRENT`` naming the previous, complete
snapshot; leftovers of an interrupted save are removed by the next successful one.

Retention: a save keeps the snapshot it replaces (and, when that one is damaged, every
snapshot back to the newest valid one before it), so there are always two valid snapshots to
choose from once two saves happened. :func:`open_snapshot` falls back to the newest valid
snapshot when the one ``CURRENT`` names is damaged (or ``CURRENT`` itself is bad) and says
so in a :class:`Fallback`; whether falling back loses data is the caller's call (a gallery
replays the journal records the skipped snapshots folded in, see :mod:`index.gallery`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

CURRENT = "CURRENT"
STATE_FILE = "store.json"
_SNAPSHOT = re.compile(r"^snapshot-(\d{6,})(\.tmp)?$")


class CorruptSnapshotError(ValueError):
    """A snapshot (or the CURRENT pointer) is missing files, damaged, or unreadable."""


@dataclass
class Fallback:
    """What :func:`open_snapshot` did instead of loading the snapshot CURRENT names."""

    wanted: str | None  # the snapshot CURRENT named (or the newest one, when CURRENT is bad)
    used: str  # the snapshot actually loaded
    reason: str  # why (no server paths: file and snapshot names only)
    kind: str  # "current" (CURRENT was bad) or "snapshot" (a damaged snapshot was skipped)
    skipped: list[Path] = field(default_factory=list)  # snapshots newer than `used` that were skipped, oldest first


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
    previous = current_name(path)
    final = path / f"snapshot-{number:06d}"
    tmp = path / f"{final.name}.tmp"
    tmp.mkdir()
    try:
        state = dict(write(tmp))
        state["previous"] = previous  # the snapshot this one replaces: retention and fallback follow it
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
    prune(path, final.name)
    return final


def _valid(snap: Path) -> bool:
    try:
        verify_snapshot(snap)
    except (OSError, ValueError):
        return False
    return True


def _previous(path: Path, snap: Path) -> Path | None:
    """The snapshot `snap` was saved over (its store.json's "previous"), else the newest one
    numbered below it."""
    try:
        prev = json.loads((snap / STATE_FILE).read_text(encoding="utf-8")).get("previous")
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        prev = None
    if isinstance(prev, str) and _SNAPSHOT.match(prev) and not prev.endswith(".tmp") and (path / prev).is_dir():
        return path / prev
    m = _SNAPSHOT.match(snap.name)
    below = [p for n, p in _snapshots(path) if m and n < int(m.group(1)) and not p.name.endswith(".tmp")]
    return below[-1] if below else None


def protected(path: Path, anchor: str | None = None) -> set[str]:
    """Names of the snapshots retention keeps: `anchor` (default: the one CURRENT names, or
    the newest when CURRENT is bad) and its chain of predecessors (each store.json names the
    snapshot it was saved over) back to and including the first valid one: the current and
    the previous valid snapshot, plus any damaged ones between them."""
    path = Path(path)
    if anchor is None:
        anchor = current_name(path)
        if anchor is None or not (path / anchor).is_dir():
            snaps = [p for _, p in _snapshots(path) if not p.name.endswith(".tmp")]
            anchor = snaps[-1].name if snaps else None
    if anchor is None:
        return set()
    keep = {anchor}
    snap: Path | None = path / anchor
    while snap is not None:
        snap = _previous(path, snap)
        if snap is None or snap.name in keep:
            break
        keep.add(snap.name)
        if _valid(snap):
            break
    return keep


def prune(path: Path, anchor: str | None = None) -> list[str]:
    """Remove leftovers of interrupted saves (``snapshot-*.tmp``) and snapshots retention
    does not keep (see :func:`protected`); returns the names removed. Snapshots newer than
    the anchor are left alone unless they are damaged (a complete, valid one is a save that
    crashed before it was made current: harmless, the next save numbers past it)."""
    path = Path(path)
    keep = protected(path, anchor)
    if not keep:
        return []
    top = max(int(_SNAPSHOT.match(k).group(1)) for k in keep)  # type: ignore[union-attr]
    removed = []
    for n, p in _snapshots(path):
        if p.name in keep:
            continue
        if p.name.endswith(".tmp") or n < top or not _valid(p):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed


def current_name(path: Path) -> str | None:
    """The snapshot name in ``CURRENT`` when it is a well-formed complete-snapshot name, else None."""
    try:
        name = (Path(path) / CURRENT).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name if _SNAPSHOT.match(name) and not name.endswith(".tmp") else None


def verify_snapshot(snap: Path) -> dict[str, Any]:
    """The state of snapshot directory `snap` after checking every file's SHA-256; raises
    CorruptSnapshotError naming the snapshot and file (not the directory above)."""
    try:
        state = json.loads((snap / STATE_FILE).read_text(encoding="utf-8"))
        if not isinstance(state, dict) or not isinstance(state.get("files"), dict):
            raise ValueError("no file list")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CorruptSnapshotError(f"{snap.name}/{STATE_FILE} is missing or corrupt ({type(exc).__name__})") from None
    for fname, digest in state["files"].items():
        if not (snap / fname).is_file() or sha256_file(snap / fname) != digest:
            raise CorruptSnapshotError(f"{snap.name}/{fname} is missing or corrupt (checksum mismatch)")
    return state


def open_snapshot(path: Path, load: Callable[[Path, dict[str, Any]], T]) -> tuple[T, Path, Fallback | None]:
    """``load(snapshot_dir, state)`` of the snapshot CURRENT names or, when it (or CURRENT) is
    damaged, of the newest valid snapshot before it: (result, snapshot dir, Fallback or None).

    A bad CURRENT (unreadable, naming no complete snapshot) is treated as naming the newest
    complete snapshot and is rewritten to name it (best effort), so later readers, like the
    journal's compaction marker check, see the pointer the store was loaded from. Any error of
    `load` (ValueError, OSError, RuntimeError) counts as damage. Raises FileNotFoundError when
    `path` holds no snapshot at all and CorruptSnapshotError when none is valid."""
    path = Path(path)
    snaps = [(n, p) for n, p in _snapshots(path) if not p.name.endswith(".tmp")]
    name = current_name(path)
    kind = "snapshot"
    if name is None or not (path / name).is_dir():
        if not snaps:
            if not (path / CURRENT).exists():
                raise FileNotFoundError(f"{path} holds no saved store (no {CURRENT} file)")
            raise CorruptSnapshotError(f"{CURRENT} is damaged and no snapshot is left")
        kind = "current"
        bad = name or "an unreadable name"
        name = snaps[-1][1].name
        reason = f"{CURRENT} named {bad}, which is not a complete snapshot; using {name}"
        prefix = reason + "; "
        with contextlib.suppress(OSError):
            write_atomic(path / CURRENT, name + "\n")
    top = int(_SNAPSHOT.match(name).group(1))  # type: ignore[union-attr]
    if kind == "snapshot":
        prefix = ""
    errors: list[str] = []
    tried: list[Path] = []
    for n, snap in reversed(snaps):
        if n > top:
            continue
        try:
            state = verify_snapshot(snap)
            result = load(snap, state)
        except (ValueError, OSError, RuntimeError) as exc:
            msg = str(exc) if isinstance(exc, CorruptSnapshotError) else f"{snap.name}: {type(exc).__name__}"
            errors.append(msg)
            tried.append(snap)
            continue
        if not tried and kind == "snapshot":
            return result, snap, None
        if tried:
            reason = prefix + "; ".join(errors) + f"; fell back to {snap.name}"
        return (
            result,
            snap,
            Fallback(wanted=name, used=snap.name, reason=reason, kind=kind, skipped=list(reversed(tried))),
        )
    raise CorruptSnapshotError(f"no valid snapshot: {'; '.join(errors) or 'none found'}")


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

"""Durable single-item changes to a gallery: an append-only journal beside its snapshots.

A full `Gallery.save` costs time proportional to the gallery, so a service cannot afford one
per upload. Instead each add or remove is appended to ``journal.jsonl`` (one JSON line per
item, fsync'd before the change is acknowledged) and the journal is replayed on open. Every
`compact_every` operations (and on close) the gallery is saved and the journal truncated.

A crash during compaction is safe: before saving, ``journal.compacting`` records the snapshot
that was current and the last journal sequence number. On open, if ``CURRENT`` has moved on
since, the save completed and the records up to that number are already in the snapshot, so
they are skipped; otherwise every record is replayed. Replay is idempotent (an add replaces
an item of the same id, a remove of an absent id does nothing), so a store that persists by
itself (Milvus) converges to the journaled state too. A torn last line (a crash while
appending, so never acknowledged) is dropped.

A write that fails leaves nothing behind: the journal is written through an unbuffered file
descriptor, and after a failed append (a full disk, an I/O error) it is cut back to its last
good length and fsync'd before the error is raised, so a refused change never becomes
durable. If even that fails, the gallery refuses writes (`JournalUnavailable`) until a later
attempt to cut it back succeeds, so nothing is ever appended after a torn record. A failed
compaction does not fail the change that triggered it (that change is journaled already): it
is logged, counted (`take_compaction_failures`) and retried on a later write.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from index.gallery import Gallery, GalleryInfo
from index.locks import WriterLock
from index.snapshots import CURRENT, fsync_path, write_atomic
from index.store import RangeResult, SearchResult

JOURNAL_FILE = "journal.jsonl"
MARKER_FILE = "journal.compacting"

log = logging.getLogger("cmhash.index")


class JournalUnavailable(OSError):
    """A failed append could not be cut back off the journal: writes are refused (reads work)."""


class JournalError(ValueError):
    """A journal line in the middle of the file is unreadable: the file was damaged."""


def _current_snapshot(path: Path) -> str | None:
    pointer = path / CURRENT
    return pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else None


def _parse(data: bytes, file: Path) -> tuple[list[dict[str, Any]], int]:
    """The records in `data` and the length of the prefix they occupy (a torn last line, one
    without its newline, is left out of both)."""
    records = []
    good = 0
    lines = data.split(b"\n")
    for number, line in enumerate(lines, start=1):
        if number == len(lines):  # the text after the last newline: empty, or a write cut short
            break
        if line.strip():
            try:
                records.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise JournalError(f"{file}:{number} is not a journal record: the journal is damaged") from None
        good += len(line) + 1
    return records, good


def read_journal(path: Path) -> list[dict[str, Any]]:
    """The records of ``path/journal.jsonl`` in order (a torn last line left out)."""
    file = Path(path) / JOURNAL_FILE
    return _parse(file.read_bytes(), file)[0] if file.is_file() else []


def _apply_journal(gallery: Gallery) -> tuple[int, int]:
    """Apply the journal's records that the current snapshot lacks to `gallery`'s store (see the
    module doc: a compaction marker whose snapshot is no longer current means its records are in
    the snapshot). Returns (the last sequence number, the records applied)."""
    path = gallery.path
    seq, skip_through, applied = 0, 0, 0
    marker = path / MARKER_FILE
    if marker.is_file():
        state = json.loads(marker.read_text(encoding="utf-8"))
        seq = int(state["seq"])  # new records must number past the marker's
        if _current_snapshot(path) != state["before"]:
            skip_through = seq
    store = gallery.store
    for record in read_journal(path):
        seq = max(seq, int(record["seq"]))
        if record["seq"] <= skip_through:
            continue
        if record["op"] == "add":
            code = np.frombuffer(bytes.fromhex(record["code"]), dtype=np.uint8)[None, :]
            store.remove([record["id"]])  # replay is an upsert, so re-applying a record is harmless
            store.add([record["id"]], code, [record["metadata"]])
        else:
            store.remove([record["id"]])
        applied += 1
    return seq, applied


def read_current(gallery: Gallery) -> int:
    """Bring a FAISS gallery opened read-only from its snapshot up to date with the changes a
    server journaled since (running, or killed before it compacted), in memory only: nothing on
    disk changes and no lock is taken. Returns the records applied. A Milvus gallery's store
    already holds every acknowledged change, so it is left as it is (0)."""
    if gallery.info.backend != "faiss":
        return 0
    return _apply_journal(gallery)[1]


def fold_journal(gallery: Gallery) -> int:
    """For a writer other than a server (`cmhash index`), holding the gallery's writer lock:
    replay the journal a server left (killed before it compacted) into `gallery`, save it and
    empty the journal, so that the writer's own changes come after the server's acknowledged
    ones and are never undone by a later replay. Returns the records replayed."""
    if not read_journal(gallery.path) and not (gallery.path / MARKER_FILE).is_file():
        return 0  # what a server leaves when it closes: an empty journal
    journaled = JournaledGallery(gallery)
    replayed = journaled.pending
    if not replayed:  # a compaction that crashed after saving: its snapshot holds everything
        journaled.compact()
    journaled.close()
    return replayed


class JournaledGallery:
    """A `Gallery` whose adds and removes are durable when they return (see module doc).

    Writes are serialised by a lock; reads (search, get, ids) go to the thread-safe store
    and see every acknowledged change. Callers use this interface, never `gallery.store`."""

    def __init__(self, gallery: Gallery, compact_every: int = 1000) -> None:
        if compact_every < 1:
            raise ValueError(f"compact_every must be positive, got {compact_every}")
        self.gallery = gallery
        self.compact_every = compact_every
        self._writer = WriterLock(gallery.path)  # one writer per gallery, taken before the journal is read
        self._lock = threading.Lock()
        self._seq = 0
        self._pending = 0
        try:
            self._replay()
        except BaseException:
            self._writer.release()
            raise
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        self._fd: int | None = os.open(self.path / JOURNAL_FILE, flags, 0o644)  # unbuffered: no bytes linger
        self._size = os.fstat(self._fd).st_size  # the last good length: every byte below it is acknowledged
        self._broken: OSError | None = None  # why the journal could not be cut back after a failed append
        self._compact_at = compact_every  # pending count that triggers the next compaction (backs off on failure)
        self._failed_compactions = 0  # failed compactions in a row (the retry backs off)
        self._unreported = 0  # failed compactions not yet taken by take_compaction_failures
        self._stats_lock = threading.Lock()
        fsync_path(self.path)  # a new journal's directory entry is durable before any write is acknowledged

    @property
    def path(self) -> Path:
        """The gallery directory."""
        return self.gallery.path

    @property
    def pending(self) -> int:
        """Journal records not yet folded into a snapshot."""
        return self._pending

    @property
    def info(self) -> GalleryInfo:
        """gallery.json: kind, bits, backend, the model checksum."""
        return self.gallery.info

    @property
    def bits(self) -> int:
        """Code length L."""
        return self.gallery.info.bits

    @property
    def device(self) -> str:
        """Where the store's k-NN runs ("cpu", or "cuda" with a GPU mirror)."""
        return str(getattr(self.gallery.store, "device", "cpu"))

    def search(self, codes: np.ndarray, k: int) -> SearchResult:
        """k nearest ids per query code, by (Hamming distance, insertion order)."""
        return self.gallery.store.search(codes, k)

    def range_search(self, codes: np.ndarray, radius: int) -> RangeResult:
        """Every item within `radius` (inclusive) per query code, in the same order."""
        return self.gallery.store.range_search(codes, radius)

    def get(self, id: str) -> dict[str, Any] | None:
        """The stored item (id, code, metadata), or None."""
        return self.gallery.store.get(id)

    def ids(self) -> list[str]:
        """Every id, in insertion order."""
        return self.gallery.store.ids()

    def candidates(self, filter: dict[str, Any]) -> tuple[list[str], np.ndarray, np.ndarray]:
        """The items matching a metadata filter (ids, insertion order, codes), from the store;
        `index.search.FilterUnsupported` when its backend has no `candidates`."""
        from index.search import filter_candidates

        return filter_candidates(self.gallery.store, filter)

    def __len__(self) -> int:
        return len(self.gallery.store)

    def __contains__(self, item: object) -> bool:
        return item in self.gallery.store

    def _replay(self) -> None:
        file = self.path / JOURNAL_FILE
        data = file.read_bytes() if file.is_file() else b""
        good = _parse(data, file)[1]
        if good < len(data):  # drop a torn last line, so the next append starts a fresh line
            with open(file, "r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())
        self._seq, self._pending = _apply_journal(self.gallery)

    @property
    def writable(self) -> bool:
        """False after a failed append that could not be cut back off the journal (until a later
        write manages to)."""
        return self._broken is None

    def _restore(self) -> None:
        """Cut the journal back to its last good length and make that durable; on failure the
        gallery refuses writes until a later call succeeds."""
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, self._size)
            os.fsync(self._fd)
        except OSError as exc:
            if self._broken is None:
                log.error(
                    "journal %s could not be cut back to %d bytes after a failed write (%s): "
                    "the gallery refuses writes until it can be",
                    self.path / JOURNAL_FILE,
                    self._size,
                    exc,
                )
            self._broken = exc
            return
        if self._broken is not None:
            log.warning(
                "journal %s cut back to %d bytes: the gallery accepts writes again",
                self.path / JOURNAL_FILE,
                self._size,
            )
        self._broken = None

    def _append(self, records: list[dict[str, Any]]) -> None:
        if self._fd is None:
            raise JournalUnavailable(errno.EBADF, "the gallery is closed")
        if self._broken is not None:
            self._restore()
            if self._broken is not None:
                raise JournalUnavailable(
                    errno.EIO,
                    "the gallery journal could not be repaired after a failed write; the gallery is read-only",
                ) from self._broken
        data = b"".join(json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n" for r in records)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except BaseException:
            self._restore()  # a refused change must not become durable, nor precede the next record
            raise
        self._size += len(data)

    def add(
        self, ids: Sequence[str], codes: np.ndarray, metadata: Sequence[dict[str, Any] | None] | None = None
    ) -> None:
        """Add items (all or none; a duplicate id raises `DuplicateIdError`, a failed write the
        OSError, and nothing is kept); durable on return."""
        ids = list(ids)
        metas = list(metadata) if metadata is not None else [None] * len(ids)
        with self._lock:
            self.gallery.store.add(ids, codes, metas)
            stored = [self.gallery.store.get(i) for i in ids]
            records = []
            for item in stored:
                assert item is not None  # just added under the lock
                self._seq += 1
                records.append(
                    {
                        "seq": self._seq,
                        "op": "add",
                        "id": item["id"],
                        "code": bytes(item["code"]).hex(),
                        "metadata": item["metadata"],
                    }
                )
            try:
                self._append(records)
            except BaseException:
                self.gallery.store.remove(ids)
                raise
            self._after_write(len(records))

    def remove(self, ids: Iterable[str]) -> list[dict[str, Any]]:
        """Remove the given ids that are present; returns the items removed (id, code, metadata,
        as read under the write lock, so they are exactly what this call removed), durable on
        return. A failed write raises its OSError and removes nothing."""
        with self._lock:
            store = self.gallery.store
            present = [item for item in (store.get(i) for i in dict.fromkeys(ids)) if item is not None]
            if not present:
                return []
            records = []
            for item in present:
                self._seq += 1
                records.append({"seq": self._seq, "op": "remove", "id": item["id"]})
            self._append(records)
            store.remove([item["id"] for item in present])
            self._after_write(len(records))
            return present

    def take_compaction_failures(self) -> int:
        """Compactions that failed since the last call (each was logged, and is retried later)."""
        with self._stats_lock:
            failures, self._unreported = self._unreported, 0
            return failures

    def _after_write(self, n: int) -> None:
        """Compact once enough changes are pending. The change is durable already, so a failed
        compaction is logged, counted and retried after a few more writes, never raised."""
        self._pending += n
        if self._pending < self._compact_at:
            return
        try:
            self._compact()
        except Exception as exc:
            self._failed_compactions += 1
            with self._stats_lock:
                self._unreported += 1
            retry_in = min(self.compact_every, 2 ** min(self._failed_compactions, 16))
            self._compact_at = self._pending + retry_in
            log.error(
                "compaction of the gallery at %s failed (%s: %s); its %d changes stay journaled, retried after %d more",
                self.path,
                type(exc).__name__,
                exc,
                self._pending,
                retry_in,
            )

    def compact(self) -> None:
        """Save the gallery and empty the journal."""
        with self._lock:
            self._compact()

    def _compact(self) -> None:
        """Save the gallery, then empty the journal; on failure no temporary file is left behind
        and every journaled change is still replayed on open."""
        assert self._fd is not None
        marker = self.path / MARKER_FILE
        try:
            write_atomic(marker, json.dumps({"before": _current_snapshot(self.path), "seq": self._seq}))
            self.gallery.save()
            os.ftruncate(self._fd, 0)
            self._size = 0
            os.fsync(self._fd)
            marker.unlink()
            fsync_path(self.path)
        except BaseException:
            for leftover in (marker.with_name(marker.name + ".tmp"), self.path / f"{CURRENT}.tmp"):
                with contextlib.suppress(OSError):
                    leftover.unlink(missing_ok=True)
            raise
        self._pending = 0
        self._compact_at = self.compact_every
        self._failed_compactions = 0
        self._broken = None  # the journal is empty now: nothing torn is left in it

    def close(self) -> None:
        """Compact when anything is pending, then close the journal file. A failed compaction is
        logged, not raised: the journal still holds every change, replayed on the next open."""
        with self._lock:
            if self._fd is None:
                return
            if self._pending or self._broken is not None:
                try:
                    self._compact()
                except Exception as exc:
                    log.error(
                        "compaction of the gallery at %s on close failed (%s: %s); its changes stay journaled",
                        self.path,
                        type(exc).__name__,
                        exc,
                    )
            os.close(self._fd)
            self._fd = None
            self._writer.release()

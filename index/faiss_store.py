"""Embedded FAISS binary code store keyed by external string ids.

Codes are packed uint8 arrays (``bits // 8`` bytes per code, see
:mod:`index.codes`).  Internally the store uses
``IndexBinaryIDMap2(IndexBinaryFlat(padded_bits))`` with int64 internal ids
drawn from a monotonically increasing counter, so internal id order is
insertion order.  Codes whose width has no CPU fast path (anything other than
32/64/128/256/512 bits) are padded with zero bytes up to the next fast width;
the padding is identical in every code, so Hamming distances are unchanged.

Result ordering is deterministic: by (Hamming distance, insertion order).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

__all__ = ["FaissCodeStore", "padded_bits_for"]

_FAST_WIDTHS = (32, 64, 128, 256, 512)
INDEX_FILE = "index.faissbin"
STORE_FILE = "store.json"
BACKUP_SUFFIX = ".bak"
_FORMAT_VERSION = 1


def padded_bits_for(bits: int) -> int:
    """Smallest FAISS CPU fast-path width >= ``bits`` (``bits`` itself above 512)."""
    for w in _FAST_WIDTHS:
        if bits <= w:
            return w
    return bits


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


class FaissCodeStore:
    """Binary hash code store with exact, deterministically ordered Hamming search."""

    def __init__(self, bits: int) -> None:
        if not isinstance(bits, (int, np.integer)) or isinstance(bits, bool):
            raise ValueError(f"bits must be an int, got {bits!r}")
        bits = int(bits)
        if bits <= 0 or bits % 8 != 0:
            raise ValueError(f"bits must be a positive multiple of 8, got {bits}")
        self.bits = bits
        self.code_bytes = bits // 8
        self.padded_bits = padded_bits_for(bits)
        self.padded_bytes = self.padded_bits // 8
        self._index = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(self.padded_bits))
        self._id_to_int: dict[str, int] = {}
        self._int_to_id: dict[int, str] = {}
        self._metadata: dict[int, dict[str, Any]] = {}
        self._next_id = 0
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ helpers
    def _check_codes(self, codes: np.ndarray, what: str = "codes") -> np.ndarray:
        arr = np.asarray(codes)
        if arr.ndim == 1 and arr.shape[0] == self.code_bytes:
            arr = arr[None, :]
        if arr.ndim != 2:
            raise ValueError(f"{what} must be 2-D (n x {self.code_bytes}), got shape {arr.shape}")
        if arr.dtype != np.uint8:
            raise ValueError(f"{what} must be packed uint8, got dtype {arr.dtype}")
        if arr.shape[1] != self.code_bytes:
            raise ValueError(
                f"{what} must have {self.code_bytes} bytes per code ({self.bits} bits), "
                f"got {arr.shape[1]}"
            )
        return arr

    def _pad(self, arr: np.ndarray) -> np.ndarray:
        if self.padded_bytes == self.code_bytes:
            return np.ascontiguousarray(arr)
        out = np.zeros((arr.shape[0], self.padded_bytes), dtype=np.uint8)
        out[:, : self.code_bytes] = arr
        return out

    # --------------------------------------------------------------- mutations
    def add(
        self,
        ids: Sequence[str],
        codes: np.ndarray,
        metadata: Sequence[dict] | None = None,
    ) -> None:
        """Add items. Any duplicate id (within the call or already stored) raises
        ``ValueError`` and nothing is added."""
        ids = list(ids)
        for i in ids:
            if not isinstance(i, str):
                raise ValueError(f"ids must be str, got {type(i).__name__}")
        arr = self._check_codes(codes)
        if arr.shape[0] != len(ids):
            raise ValueError(f"{len(ids)} ids but {arr.shape[0]} codes")
        if metadata is None:
            metas: list[dict[str, Any]] = [{} for _ in ids]
        else:
            metas = list(metadata)
            if len(metas) != len(ids):
                raise ValueError(f"{len(ids)} ids but {len(metas)} metadata entries")
            for m in metas:
                if m is not None and not isinstance(m, dict):
                    raise ValueError("metadata entries must be dicts or None")
            metas = [dict(m) if m is not None else {} for m in metas]
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            dups = sorted({i for i in ids if i in seen or seen.add(i)})
            raise ValueError(f"duplicate ids within call: {dups[:10]}")
        if not ids:
            return
        padded = self._pad(arr)
        with self._lock:
            present = [i for i in ids if i in self._id_to_int]
            if present:
                raise ValueError(f"ids already present: {present[:10]}")
            internal = np.arange(self._next_id, self._next_id + len(ids), dtype=np.int64)
            self._index.add_with_ids(padded, internal)
            self._next_id += len(ids)
            for sid, iid, m in zip(ids, internal.tolist(), metas):
                self._id_to_int[sid] = iid
                self._int_to_id[iid] = sid
                self._metadata[iid] = m

    def remove(self, ids: Iterable[str]) -> int:
        """Remove items by id; unknown ids are ignored. Returns the number removed."""
        with self._lock:
            internal = sorted({self._id_to_int[i] for i in ids if i in self._id_to_int})
            if not internal:
                return 0
            sel = faiss.IDSelectorBatch(np.asarray(internal, dtype=np.int64))
            removed = int(self._index.remove_ids(sel))
            if removed != len(internal):  # pragma: no cover - invariant violation
                raise RuntimeError(f"FAISS removed {removed} of {len(internal)} ids")
            for iid in internal:
                sid = self._int_to_id.pop(iid)
                del self._id_to_int[sid]
                self._metadata.pop(iid, None)
            return removed

    # ----------------------------------------------------------------- queries
    def __len__(self) -> int:
        with self._lock:
            return len(self._id_to_int)

    def __contains__(self, item: object) -> bool:
        with self._lock:
            return item in self._id_to_int

    def ids(self) -> list[str]:
        """All ids in insertion order."""
        with self._lock:
            return [self._int_to_id[i] for i in sorted(self._int_to_id)]

    def get(self, id: str) -> dict[str, Any] | None:
        with self._lock:
            iid = self._id_to_int.get(id)
            if iid is None:
                return None
            code = np.asarray(self._index.reconstruct(int(iid)), dtype=np.uint8)
            return {
                "id": id,
                "code": code[: self.code_bytes].copy(),
                "metadata": dict(self._metadata[iid]),
            }

    def _range_raw(self, q: np.ndarray, radius_excl: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Items with distance < ``radius_excl`` per query, sorted by (distance, internal id)."""
        lims, D, I = self._index.range_search(q, int(radius_excl))
        out = []
        for j in range(q.shape[0]):
            d = np.asarray(D[lims[j] : lims[j + 1]], dtype=np.int64)
            i = np.asarray(I[lims[j] : lims[j + 1]], dtype=np.int64)
            order = np.lexsort((i, d))
            out.append((d[order], i[order]))
        return out

    def search(self, codes: np.ndarray, k: int) -> tuple[list[list[str]], np.ndarray]:
        """k nearest ids per query, ordered by (Hamming distance, insertion order).

        Returns ``(ids, distances)``; ``distances`` is an int64 ``nq x k'`` array with
        ``k' = min(k, len(self))`` (every query gets exactly ``k'`` results)."""
        if int(k) != k or k < 0:
            raise ValueError(f"k must be a non-negative int, got {k!r}")
        k = int(k)
        q = self._pad(self._check_codes(codes, "query codes"))
        nq = q.shape[0]
        with self._lock:
            n = self._index.ntotal
            kk = min(k, n)
            if nq == 0 or kk == 0:
                return [[] for _ in range(nq)], np.zeros((nq, kk), dtype=np.int64)
            fetch = kk + 1 if kk < n else kk
            D, I = self._index.search(q, fetch)
            D = np.asarray(D, dtype=np.int64)
            I = np.asarray(I, dtype=np.int64)
            res_d = np.empty((nq, kk), dtype=np.int64)
            res_i = np.empty((nq, kk), dtype=np.int64)
            straddle: list[int] = []
            for j in range(nq):
                if fetch > kk and D[j, kk - 1] == D[j, kk]:
                    # Ties straddle the cut: FAISS may have dropped some equal-distance
                    # items with smaller internal ids. Resolved below by range search.
                    straddle.append(j)
                    continue
                # The top-kk distance multiset is exact; only tie order needs fixing.
                order = np.lexsort((I[j, :kk], D[j, :kk]))
                res_d[j] = D[j, :kk][order]
                res_i[j] = I[j, :kk][order]
            # Group straddling queries by radius so each group is one range_search call.
            by_radius: dict[int, list[int]] = {}
            for j in straddle:
                by_radius.setdefault(int(D[j, kk - 1]), []).append(j)
            for radius, rows in by_radius.items():
                for j, (d, i) in zip(rows, self._range_raw(q[rows], radius + 1)):
                    if len(d) < kk:  # pragma: no cover - invariant violation
                        raise RuntimeError("range search returned fewer items than k-NN")
                    res_d[j] = d[:kk]
                    res_i[j] = i[:kk]
            out_ids = [[self._int_to_id[int(x)] for x in row] for row in res_i]
        return out_ids, res_d

    def range_search(self, codes: np.ndarray, radius: int) -> list[tuple[list[str], np.ndarray]]:
        """All items with Hamming distance <= ``radius`` (inclusive) per query, ordered
        by (distance, insertion order)."""
        if int(radius) != radius or radius < 0:
            raise ValueError(f"radius must be a non-negative int, got {radius!r}")
        q = self._pad(self._check_codes(codes, "query codes"))
        with self._lock:
            if q.shape[0] == 0:
                return []
            if self._index.ntotal == 0:
                return [([], np.zeros(0, dtype=np.int64)) for _ in range(q.shape[0])]
            # FAISS returns distances strictly below the threshold.
            raw = self._range_raw(q, int(radius) + 1)
            return [([self._int_to_id[int(x)] for x in i], d) for d, i in raw]

    # ------------------------------------------------------------- persistence
    def save(self, path: Path | str) -> None:
        """Persist to directory ``path`` (``index.faissbin`` + ``store.json``).

        Crash-safe: both files are written to temp files and fsync'd first. Before
        ``index.faissbin`` is replaced, the currently valid index is kept as
        ``index.faissbin.bak``; ``store.json`` records the SHA-256 of its index, so if
        a crash lands between the two renames, :meth:`load` falls back to the backup
        and returns the previous version."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        idx_path = path / INDEX_FILE
        json_path = path / STORE_FILE
        bak_path = path / (INDEX_FILE + BACKUP_SUFFIX)
        idx_tmp = path / (INDEX_FILE + f".tmp.{os.getpid()}.{threading.get_ident()}")
        json_tmp = path / (STORE_FILE + f".tmp.{os.getpid()}.{threading.get_ident()}")
        with self._lock:
            try:
                faiss.write_index_binary(self._index, str(idx_tmp))
                _fsync_file(idx_tmp)
                state = {
                    "format_version": _FORMAT_VERSION,
                    "bits": self.bits,
                    "padded_bits": self.padded_bits,
                    "next_id": self._next_id,
                    "ntotal": int(self._index.ntotal),
                    "index_sha256": _sha256_file(idx_tmp),
                    "items": [
                        {"id": self._int_to_id[iid], "internal_id": iid, "metadata": self._metadata[iid]}
                        for iid in sorted(self._int_to_id)
                    ],
                }
                with open(json_tmp, "w", encoding="utf-8") as f:
                    json.dump(state, f)
                    f.flush()
                    os.fsync(f.fileno())
                # Make sure the backup holds the index the current store.json refers to.
                valid = _valid_index_file(path)
                if valid is not None and valid != bak_path:
                    bak_tmp = path / (INDEX_FILE + BACKUP_SUFFIX + ".tmp")
                    if bak_tmp.exists():
                        bak_tmp.unlink()
                    try:
                        os.link(valid, bak_tmp)
                    except OSError:
                        shutil.copyfile(valid, bak_tmp)
                        _fsync_file(bak_tmp)
                    os.replace(bak_tmp, bak_path)
                    _fsync_dir(path)
                os.replace(idx_tmp, idx_path)
                os.replace(json_tmp, json_path)
                _fsync_dir(path)
            finally:
                for tmp in (idx_tmp, json_tmp):
                    try:
                        tmp.unlink()
                    except FileNotFoundError:
                        pass
            try:
                bak_path.unlink()
            except FileNotFoundError:
                pass

    @classmethod
    def load(cls, path: Path | str) -> "FaissCodeStore":
        path = Path(path)
        json_path = path / STORE_FILE
        if not json_path.exists():
            raise FileNotFoundError(f"no {STORE_FILE} in {path}")
        with open(json_path, encoding="utf-8") as f:
            state = json.load(f)
        if state.get("format_version") != _FORMAT_VERSION:
            raise ValueError(f"unsupported store format {state.get('format_version')!r}")
        idx_file = _valid_index_file(path, state)
        if idx_file is None:
            raise ValueError(f"no index file in {path} matches {STORE_FILE} (corrupt store)")
        store = cls(int(state["bits"]))
        if store.padded_bits != int(state["padded_bits"]):
            raise ValueError("padded width mismatch")
        index = faiss.read_index_binary(str(idx_file))
        if not isinstance(index, faiss.IndexBinaryIDMap2):
            raise ValueError(f"unexpected index type {type(index).__name__}")
        if index.d != store.padded_bits or index.ntotal != len(state["items"]):
            raise ValueError("index does not match store metadata")
        store._index = index
        for item in state["items"]:
            sid, iid = item["id"], int(item["internal_id"])
            store._id_to_int[sid] = iid
            store._int_to_id[iid] = sid
            store._metadata[iid] = dict(item["metadata"])
        store._next_id = int(state["next_id"])
        return store


def _valid_index_file(path: Path, state: dict | None = None) -> Path | None:
    """The index file (main or backup) whose checksum matches ``store.json``."""
    if state is None:
        json_path = path / STORE_FILE
        if not json_path.exists():
            return None
        try:
            with open(json_path, encoding="utf-8") as f:
                state = json.load(f)
        except (OSError, ValueError):
            return None
    want = state.get("index_sha256")
    for cand in (path / INDEX_FILE, path / (INDEX_FILE + BACKUP_SUFFIX)):
        if cand.exists() and _sha256_file(cand) == want:
            return cand
    return None

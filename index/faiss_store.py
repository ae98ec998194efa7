"""Embedded FAISS binary code store keyed by external string ids, metadata in SQLite.

Codes are packed uint8 arrays (``bits // 8`` bytes per code, see :mod:`model.runtime.codes`).
The codes live in ``IndexBinaryIDMap2(IndexBinaryFlat(padded_bits))`` under int64 internal
ids drawn from an increasing counter, so internal id order is insertion order (the id map
keeps ids stable across ``remove_ids``, which shifts the rows of a bare flat index). Widths
without a CPU fast path (anything but 32/64/128/256/512 bits) are padded with zero bytes up
to the next fast width; the padding is the same in every code, so distances are unchanged.

The external ids and the user's metadata live in an SQLite table (``iid, id, metadata``):
in memory while the store is open, written to ``metadata.sqlite`` by :meth:`save`.

With ``device="cuda"`` a ``GpuIndexBinaryFlat`` mirror of the rows answers k-NN queries up
to k = 2048; it has no ids (a row -> internal id array maps back), no removal (it is rebuilt
on the next search) and no range search (the CPU index answers those and larger k).

Result ordering is deterministic: by (Hamming distance, insertion order), whatever order
FAISS returns ties in.

With ``index="mih"`` a :class:`index.mih.MultiIndexHash` beside the FAISS index answers the
CPU queries it can answer for less than a flat scan (exactly the same results); the others,
and k-NN on the GPU mirror, take the flat scan. It is fed by add/remove, rebuilt from the
stored codes on load, and never persisted.
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index.errors import DuplicateIdError
from index.mih import IndexType, MultiIndexHash
from index.snapshots import Fallback, open_snapshot, read_current, write_snapshot
from index.store import RangeResult, SearchResult
from model.runtime.choices import Device
from model.runtime.codes import check_packed
from model.runtime.installs import check_exclusive_installs

__all__ = ["GPU_MAX_K", "FaissCodeStore", "gpu_available", "padded_bits_for"]

_FAST_WIDTHS = (32, 64, 128, 256, 512)
log = logging.getLogger("cmhash.index")
GPU_MAX_K = 2048  # GpuIndexBinaryFlat's largest k
_TIE_MARGIN = 32  # extra neighbours fetched beyond k (at least k more) to see the whole tie group
INDEX_FILE = "index.faissbin"
DB_FILE = "metadata.sqlite"
_FORMAT_VERSION = 2
_SCHEMA = "CREATE TABLE items (iid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, metadata TEXT NOT NULL)"


def padded_bits_for(bits: int) -> int:
    """Smallest FAISS CPU fast-path width >= ``bits`` (``bits`` itself above 512)."""
    for w in _FAST_WIDTHS:
        if bits <= w:
            return w
    return bits


def gpu_available() -> bool:
    """True when this FAISS build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "GpuIndexBinaryFlat") and faiss.get_num_gpus() > 0


def _new_gpu_index(padded_bits: int) -> Any:
    """An empty ``GpuIndexBinaryFlat`` on GPU 0, sharing one set of GPU resources (streams,
    scratch memory) per process instead of allocating new ones for every rebuild."""
    return faiss.GpuIndexBinaryFlat(_gpu_resources(), padded_bits)


@functools.cache
def _gpu_resources() -> Any:
    return faiss.StandardGpuResources()


def _flat_storage(index: faiss.IndexBinaryIDMap) -> Any:
    """The code bytes (a SWIG ``std::vector<uint8_t>``) of the flat index inside ``index``."""
    inner = faiss.downcast_IndexBinary(index.index)
    return inner.xb  # type: ignore[attr-defined]  # faiss's stub omits IndexBinaryFlat.xb


class _GpuMirror:
    """The CPU index's rows on a GPU index without ids: ``row_iids[row]`` is the internal id.

    Rows are appended in insertion order. A removal leaves the row on the GPU as a tombstone
    (``row_iids[row] = -1``) that searches over-fetch past and drop, so removes cost nothing
    on the GPU; the mirror is rebuilt (once, at the next search) only when tombstones reach a
    quarter of its rows or k plus the tombstones would pass GPU_MAX_K. A GPU add that fails
    marks the mirror stale, so it is rebuilt from the CPU index before it is searched again."""

    def __init__(self, padded_bits: int, factory: Callable[[int], Any]) -> None:
        self.padded_bits = padded_bits
        self.factory = factory
        self.index = factory(padded_bits)
        self._iids = np.zeros(0, dtype=np.int64)  # capacity grows by doubling: no copy per add
        self.rows = 0
        self.dead = 0
        self.stale = False

    @property
    def row_iids(self) -> np.ndarray:
        """Internal id of each GPU row (-1 for removed rows)."""
        return self._iids[: self.rows]

    def add(self, codes: np.ndarray, iids: np.ndarray) -> None:
        if self.stale:
            return
        try:
            self.index.add(codes)
        except Exception:
            log.exception("GPU mirror add failed: the mirror is rebuilt from the CPU index before its next search")
            self.stale = True
            return
        if self.rows + len(iids) > len(self._iids):
            grown = np.empty(max(2 * len(self._iids), self.rows + len(iids), 1024), dtype=np.int64)
            grown[: self.rows] = self._iids[: self.rows]
            self._iids = grown
        self._iids[self.rows : self.rows + len(iids)] = iids
        self.rows += len(iids)

    def remove(self, iids: np.ndarray) -> None:
        """Tombstone the rows of `iids` (rows stay on the GPU until the next rebuild)."""
        if self.stale:
            return
        dead = np.isin(self.row_iids, iids)
        self._iids[: self.rows][dead] = -1
        self.dead += int(dead.sum())

    def needs_rebuild(self, k: int) -> bool:
        return self.stale or self.dead * 4 > max(self.rows, 1) or k + self.dead > GPU_MAX_K

    def rebuild(self, cpu: faiss.IndexBinaryIDMap2) -> None:
        codes = faiss.vector_to_array(_flat_storage(cpu)).reshape(-1, self.padded_bits // 8)
        self.index = self.factory(self.padded_bits)
        if len(codes):
            self.index.add(codes)
        self._iids = faiss.vector_to_array(cpu.id_map).astype(np.int64)
        self.rows, self.dead, self.stale = len(self._iids), 0, False

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, internal ids) of the k nearest live rows; missing results are -1.
        The caller rebuilds first when `needs_rebuild(k)`."""
        fetch = min(k + self.dead, self.rows)
        D, rows = self.index.search(q, fetch)
        rows = np.asarray(rows, dtype=np.int64)
        iids = np.where(rows >= 0, self.row_iids[np.clip(rows, 0, None)], -1)
        if not self.dead:
            return np.asarray(D)[:, :k], iids[:, :k]
        out_d = np.full((len(q), k), -1, dtype=np.int64)
        out_i = np.full((len(q), k), -1, dtype=np.int64)
        for j in range(len(q)):
            live = iids[j] >= 0
            d, i = np.asarray(D[j])[live][:k], iids[j][live][:k]
            out_d[j, : len(d)], out_i[j, : len(i)] = d, i
        return out_d, out_i


class FaissCodeStore:
    """Binary hash code store with exact, deterministically ordered Hamming search."""

    backend = "faiss"

    def __init__(
        self,
        bits: int,
        device: Device = "cpu",
        *,
        index: IndexType = "flat",
        _gpu_factory: Callable[[int], Any] | None = None,
    ) -> None:
        """An empty store of `bits`-bit codes; `device` "cuda" (or "auto" with a GPU) adds the
        GPU k-NN mirror; `index` "mih" adds multi-index hashing (index/mih.py). `_gpu_factory`
        replaces GpuIndexBinaryFlat (tests emulate it on CPU)."""
        if not isinstance(bits, (int, np.integer)) or isinstance(bits, bool):
            raise ValueError(f"bits must be an int, got {bits!r}")
        bits = int(bits)
        if bits <= 0 or bits % 8 != 0:
            raise ValueError(f"bits must be a positive multiple of 8, got {bits}")
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
        check_exclusive_installs("faiss")
        if index not in ("flat", "mih"):
            raise ValueError(f"index must be flat or mih, got {index!r}")
        self.bits = bits
        self.code_bytes = bits // 8
        self.padded_bits = padded_bits_for(bits)
        self.padded_bytes = self.padded_bits // 8
        self._index = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(self.padded_bits))
        self._db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        self._db.execute(_SCHEMA)
        self._next_id = 0
        self._lock = threading.RLock()
        self._gpu: _GpuMirror | None = None
        self.index_type: IndexType = index
        self.mih: MultiIndexHash | None = MultiIndexHash(bits) if index == "mih" else None  # --- mih
        self.snapshot: str | None = None  # the snapshot `load` read (set by load)
        self.fallback: Fallback | None = None  # set by load(fallback=True) when it skipped CURRENT's snapshot
        if _gpu_factory is None and (device == "cuda" or (device == "auto" and gpu_available())):
            if not gpu_available():
                raise RuntimeError(
                    "device 'cuda' was asked for but FAISS has no GPU support or sees no GPU "
                    "(install faiss-gpu on a machine with an NVIDIA GPU)"
                )
            _gpu_factory = _new_gpu_index
        if _gpu_factory is not None and device != "cpu":
            self._gpu = _GpuMirror(self.padded_bits, _gpu_factory)

    @property
    def device(self) -> str:
        """Where k-NN searches run: "cuda" with the GPU mirror, else "cpu"."""
        return "cpu" if self._gpu is None else "cuda"

    # ------------------------------------------------------------------ helpers
    def _check_codes(self, codes: np.ndarray, what: str = "codes") -> np.ndarray:
        return check_packed(codes, self.bits, what)

    def _pad(self, arr: np.ndarray) -> np.ndarray:
        if self.padded_bytes == self.code_bytes:
            return np.ascontiguousarray(arr)
        out = np.zeros((arr.shape[0], self.padded_bytes), dtype=np.uint8)
        out[:, : self.code_bytes] = arr
        return out

    def _names(self, iids: np.ndarray) -> dict[int, str]:
        """External ids of internal ids (one SQL query, any count)."""
        uniq = np.unique(iids)
        rows = self._db.execute(
            "SELECT iid, id FROM items WHERE iid IN (SELECT value FROM json_each(?))",
            (json.dumps(uniq.tolist()),),
        )
        return dict(rows.fetchall())

    @staticmethod
    def _metadata_json(ids: list[str], metadata: Sequence[dict[str, Any] | None] | None) -> list[str]:
        if metadata is None:
            return ["{}"] * len(ids)
        metas = list(metadata)
        if len(metas) != len(ids):
            raise ValueError(f"{len(ids)} ids but {len(metas)} metadata entries")
        out = []
        for sid, m in zip(ids, metas):
            if m is not None and not isinstance(m, dict):
                raise ValueError("metadata entries must be dicts or None")
            try:
                out.append(json.dumps(m or {}, ensure_ascii=False, allow_nan=False))
            except (TypeError, ValueError) as e:
                raise ValueError(f"metadata of {sid!r} is not JSON-serialisable: {e}") from None
        return out

    # --------------------------------------------------------------- mutations
    def add(
        self, ids: Sequence[str], codes: np.ndarray, metadata: Sequence[dict[str, Any] | None] | None = None
    ) -> None:
        """Add items. Any duplicate id (within the call or already stored) raises
        `DuplicateIdError` (a ValueError) and nothing is added."""
        ids = list(ids)
        for i in ids:
            if not isinstance(i, str) or not i:
                raise ValueError(f"ids must be non-empty str, got {i!r}")
        arr = self._check_codes(codes)
        if arr.shape[0] != len(ids):
            raise ValueError(f"{len(ids)} ids but {arr.shape[0]} codes")
        metas = self._metadata_json(ids, metadata)
        if len(set(ids)) != len(ids):
            dups = sorted(i for i, count in Counter(ids).items() if count > 1)
            raise DuplicateIdError(f"duplicate ids within call: {dups[:10]}")
        if not ids:
            return
        padded = self._pad(arr)
        with self._lock:
            present = [
                r[0]
                for r in self._db.execute(
                    "SELECT id FROM items WHERE id IN (SELECT value FROM json_each(?)) ORDER BY iid", (json.dumps(ids),)
                )
            ]
            if present:
                raise DuplicateIdError(f"ids already present: {present[:10]}")
            internal = np.arange(self._next_id, self._next_id + len(ids), dtype=np.int64)
            self._db.execute("BEGIN")
            try:
                self._db.executemany("INSERT INTO items VALUES (?, ?, ?)", zip(internal.tolist(), ids, metas))
                self._index.add_with_ids(padded, internal)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._next_id += len(ids)
            if self._gpu is not None:
                self._gpu.add(padded, internal)
            if self.mih is not None:  # --- mih
                self.mih.add(arr, internal)

    def remove(self, ids: Iterable[str]) -> int:
        """Remove items by id; unknown ids are ignored. Returns the number removed."""
        with self._lock:
            wanted = json.dumps(sorted({str(i) for i in ids}))
            internal = [
                r[0]
                for r in self._db.execute(
                    "SELECT iid FROM items WHERE id IN (SELECT value FROM json_each(?))", (wanted,)
                )
            ]
            if not internal:
                return 0
            removed = int(self._index.remove_ids(faiss.IDSelectorBatch(np.asarray(internal, dtype=np.int64))))
            if removed != len(internal):  # pragma: no cover - invariant violation
                raise RuntimeError(f"FAISS removed {removed} of {len(internal)} ids")
            self._db.execute("DELETE FROM items WHERE iid IN (SELECT value FROM json_each(?))", (json.dumps(internal),))
            if self._gpu is not None:
                self._gpu.remove(np.asarray(internal, dtype=np.int64))
            if self.mih is not None:  # --- mih
                self.mih.remove(np.asarray(internal, dtype=np.int64))
            return removed

    # ----------------------------------------------------------------- queries
    def __len__(self) -> int:
        with self._lock:
            return int(self._index.ntotal)

    def __contains__(self, item: object) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM items WHERE id = ?", (str(item),)).fetchone() is not None

    def ids(self) -> list[str]:
        """All ids in insertion order."""
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT id FROM items ORDER BY iid")]

    def get(self, id: str) -> dict[str, Any] | None:
        """``{"id", "code", "metadata"}`` of one item, or None when absent."""
        with self._lock:
            row = self._db.execute("SELECT iid, metadata FROM items WHERE id = ?", (str(id),)).fetchone()
            if row is None:
                return None
            code = np.asarray(self._index.reconstruct(int(row[0])), dtype=np.uint8)
            return {"id": id, "code": code[: self.code_bytes].copy(), "metadata": json.loads(row[1])}

    def candidates(self, filter: dict[str, Any]) -> tuple[list[str], np.ndarray, np.ndarray]:
        """The items whose metadata match `filter` (see `index.search.matches`): ids, internal
        ids (insertion order) and codes, in insertion order. One SQL query over the metadata
        (json_each: any key, same JSON type, or an element of a list), codes read in one batch."""
        clauses, params = [], []
        for key, value in filter.items():
            if isinstance(value, bool):
                kind, value = ("= 'true'" if value else "= 'false'"), int(value)
            elif isinstance(value, str):
                kind = "= 'text'"
            elif isinstance(value, int | float):
                kind = "IN ('integer', 'real')"
            else:
                raise ValueError(f"filter value of {key!r} must be a string, number or boolean")
            clauses.append(
                "EXISTS (SELECT 1 FROM json_each(items.metadata) top WHERE top.key = ? AND ("
                f"(top.type {kind} AND top.value = ?) OR (top.type = 'array' AND EXISTS ("
                f"SELECT 1 FROM json_each(top.value) e WHERE e.type {kind} AND e.value = ?))))"
            )
            params += [key, value, value]
        where = " AND ".join(clauses) or "1"
        with self._lock:
            rows = self._db.execute(f"SELECT iid, id FROM items WHERE {where} ORDER BY iid", params).fetchall()
            iids = np.asarray([r[0] for r in rows], dtype=np.int64)
            codes = np.zeros((len(rows), self.code_bytes), dtype=np.uint8)
            if len(rows):
                n = self._index.ntotal
                xb = _flat_storage(self._index).data()
                stored = faiss.rev_swig_ptr(xb, n * self.padded_bytes).reshape(n, self.padded_bytes)
                id_map = faiss.vector_to_array(self._index.id_map)  # internal id of each row, increasing
                at = np.searchsorted(id_map, iids)
                if not np.array_equal(id_map[np.minimum(at, n - 1)], iids):  # pragma: no cover - invariant
                    raise RuntimeError("FAISS rows do not match the metadata table")
                codes[:] = stored[at, : self.code_bytes]
        return [r[1] for r in rows], iids, codes

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

    def _knn_raw(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS k-NN (distances, internal ids), tie order unspecified: GPU when it can."""
        if self._gpu is not None and k <= GPU_MAX_K:
            if self._gpu.needs_rebuild(k):
                self._gpu.rebuild(self._index)
            return self._gpu.search(q, k)
        return self._index.search(q, k)

    def search(self, codes: np.ndarray, k: int) -> SearchResult:
        """k nearest ids per query, ordered by (Hamming distance, insertion order).

        Returns ``(ids, distances)``; ``distances`` is an int64 ``nq x k'`` array with
        ``k' = min(k, len(self))`` (every query gets exactly ``k'`` results)."""
        if isinstance(k, bool) or int(k) != k or k < 0:
            raise ValueError(f"k must be a non-negative int, got {k!r}")
        k = int(k)
        q = self._pad(self._check_codes(codes, "query codes"))
        nq = q.shape[0]
        with self._lock:
            n = self._index.ntotal
            kk = min(k, n)
            if nq == 0 or kk == 0:
                return [[] for _ in range(nq)], np.zeros((nq, kk), dtype=np.int64)
            res_d = np.empty((nq, kk), dtype=np.int64)
            res_i = np.empty((nq, kk), dtype=np.int64)
            flat = list(range(nq))
            if self.mih is not None and self._gpu is None:  # --- mih: what it answers skips the scan
                flat = []
                for j in range(nq):
                    got = self.mih.knn(q[j], kk)
                    if got is None:
                        flat.append(j)
                    else:
                        res_d[j], res_i[j] = got
            if flat:
                start = time.perf_counter()
                res_d[flat], res_i[flat] = self._flat_knn(q[flat], kk)
                if self.mih is not None and self._gpu is None:  # --- mih: keep its flat cost calibrated
                    self.mih.observe_flat(time.perf_counter() - start, len(flat), n)
            names = self._names(res_i)
            out_ids = [[names[int(x)] for x in row] for row in res_i]
        return out_ids, res_d

    def _flat_knn(self, q: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, internal ids), nq x kk, by (distance, internal id): the flat scan."""
        nq, n = q.shape[0], self._index.ntotal
        # Over-fetch so the group of items tied at the k-th distance is almost always
        # complete in what FAISS returns (its tie order is unspecified).
        fetch = min(n, kk + max(kk, _TIE_MARGIN))
        if self._gpu is not None and kk < GPU_MAX_K:
            fetch = min(fetch, GPU_MAX_K)
        D, I = self._knn_raw(q, fetch)
        D = np.asarray(D, dtype=np.int64)
        I = np.asarray(I, dtype=np.int64)
        res_d = np.empty((nq, kk), dtype=np.int64)
        res_i = np.empty((nq, kk), dtype=np.int64)
        straddle: list[int] = []
        for j in range(nq):
            if fetch < n and D[j, kk - 1] == D[j, fetch - 1]:
                # The tie group may extend past what was fetched: FAISS may have dropped
                # equal-distance items with smaller internal ids. Resolved by range search.
                straddle.append(j)
                continue
            # Every item at distance <= D[kk-1] was fetched; order by (distance, iid).
            order = np.lexsort((I[j], D[j]))[:kk]
            res_d[j] = D[j][order]
            res_i[j] = I[j][order]
        # On the GPU, fetch deeper (up to its k limit) before handing a tie group to the CPU.
        while straddle and self._gpu is not None and fetch < min(n, GPU_MAX_K):
            fetch = min(n, GPU_MAX_K, fetch * 4)
            D2, I2 = (np.asarray(x, dtype=np.int64) for x in self._knn_raw(q[straddle], fetch))
            still = []
            for row, j in enumerate(straddle):
                if fetch < n and D2[row, kk - 1] == D2[row, fetch - 1]:
                    still.append(j)
                    continue
                order = np.lexsort((I2[row], D2[row]))[:kk]
                res_d[j], res_i[j] = D2[row][order], I2[row][order]
            straddle = still
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
        return res_d, res_i

    def range_search(self, codes: np.ndarray, radius: int) -> RangeResult:
        """All items with Hamming distance <= ``radius`` (inclusive) per query, ordered
        by (distance, insertion order)."""
        if isinstance(radius, bool) or int(radius) != radius or radius < 0:
            raise ValueError(f"radius must be a non-negative int, got {radius!r}")
        q = self._pad(self._check_codes(codes, "query codes"))
        with self._lock:
            if q.shape[0] == 0:
                return []
            if self._index.ntotal == 0:
                return [([], np.zeros(0, dtype=np.int64)) for _ in range(q.shape[0])]
            if self.mih is None:
                # FAISS returns distances strictly below the threshold.
                raw = self._range_raw(q, int(radius) + 1)
            else:  # --- mih: what it answers skips the scan
                got = [self.mih.range(row, int(radius)) for row in q]
                flat = [j for j, g in enumerate(got) if g is None]
                start = time.perf_counter()
                scanned = iter(self._range_raw(q[flat], int(radius) + 1) if flat else [])
                if flat:  # keep its range-scan cost calibrated
                    self.mih.observe_flat(time.perf_counter() - start, len(flat), self._index.ntotal, "range")
                raw = [next(scanned) if g is None else g for g in got]
            names = self._names(np.concatenate([i for _, i in raw]))
            return [([names[int(x)] for x in i], d) for d, i in raw]

    # ------------------------------------------------------------- persistence
    def save(self, path: Path | str, extra: Callable[[Path], dict[str, Any]] | None = None) -> None:
        """Persist to directory ``path`` as a new snapshot (``index.faissbin``,
        ``metadata.sqlite`` and a ``store.json`` sidecar), made current by one atomic
        rename: a crash at any point leaves the previous snapshot loadable. `extra(tmp_dir)`
        may write more files into the snapshot; the entries it returns join store.json."""

        def write(tmp: Path) -> dict[str, Any]:
            faiss.write_index_binary(self._index, str(tmp / INDEX_FILE))
            target = sqlite3.connect(tmp / DB_FILE)
            try:
                self._db.backup(target)
            finally:
                target.close()
            state = {
                "format_version": _FORMAT_VERSION,
                "backend": self.backend,
                "bits": self.bits,
                "padded_bits": self.padded_bits,
                "next_id": self._next_id,
                "ntotal": int(self._index.ntotal),
            }
            if extra is not None:
                state.update(extra(tmp))
            return state

        with self._lock:
            self.snapshot = write_snapshot(Path(path), write).name

    @classmethod
    def load(
        cls, path: Path | str, device: Device = "cpu", *, fallback: bool = False, index: IndexType = "flat"
    ) -> FaissCodeStore:
        """Open the current snapshot of directory ``path`` (checksums verified). With
        `fallback`, a damaged current snapshot (or a bad CURRENT) makes it load the newest
        valid snapshot before it instead, and ``store.fallback`` says what was skipped (the
        caller decides whether that loses data); without, damage raises ValueError. `index`:
        the search index, as in the constructor (a gallery records it in gallery.json)."""
        if not fallback:
            snap, state = read_current(Path(path))
            store = cls._load_snapshot(snap, state, device, index)
            store.snapshot = snap.name
            return store
        store, snap, used = open_snapshot(Path(path), lambda s, st: cls._load_snapshot(s, st, device, index))
        store.snapshot = snap.name
        store.fallback = used
        return store

    @classmethod
    def _load_snapshot(
        cls, snap: Path, state: dict[str, Any], device: Device, index_type: IndexType = "flat"
    ) -> FaissCodeStore:
        """The store in verified snapshot directory `snap` with store.json `state`."""
        path = snap.name
        if state.get("backend") != cls.backend or state.get("format_version") != _FORMAT_VERSION:
            raise ValueError(
                f"{path}: not a FAISS code store of format {_FORMAT_VERSION} "
                f"(backend {state.get('backend')!r}, format {state.get('format_version')!r})"
            )
        store = cls(int(state["bits"]), device, index=index_type)
        index = faiss.read_index_binary(str(snap / INDEX_FILE))
        if not isinstance(index, faiss.IndexBinaryIDMap2):
            raise ValueError(f"{path}: unexpected index type {type(index).__name__}")
        if index.d != store.padded_bits or index.ntotal != int(state["ntotal"]):
            raise ValueError(f"{path}: index does not match {snap.name}'s store.json")
        source = sqlite3.connect(f"file:{snap / DB_FILE}?mode=ro", uri=True)
        try:
            source.backup(store._db)
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{path}/{DB_FILE}: {exc}") from None
        finally:
            source.close()
        (count,) = store._db.execute("SELECT count(*) FROM items").fetchone()
        if count != index.ntotal:
            raise ValueError(f"{path}: {count} metadata rows but {index.ntotal} codes")
        store._index = index
        store._next_id = int(state["next_id"])
        if store._gpu is not None:
            store._gpu.rebuild(index)
        if store.mih is not None and index.ntotal:  # --- mih: rows are in internal id order
            codes = faiss.vector_to_array(_flat_storage(index)).reshape(-1, store.padded_bytes)
            store.mih.add(codes[:, : store.code_bytes], faiss.vector_to_array(index.id_map).astype(np.int64))
        return store

"""Milvus binary code store: the :class:`~index.store.CodeStore` interface over a Milvus collection.

For galleries that outgrow one machine. ``uri`` is a Milvus server (``http://host:19530``)
or a local Milvus Lite file (``./gallery.db``, embedded, for tests and small setups).

One collection holds one store. Its schema:

* ``pk`` INT64 primary key: an insertion counter, so ties sort by insertion order exactly
  like :class:`~index.faiss_store.FaissCodeStore`;
* ``ext_id`` VARCHAR: the caller's string id, returned by searches;
* ``id_key`` VARCHAR: the UTF-8 hex of the id, the only form used inside filter
  expressions (Milvus string literals cannot express every character, newlines among them);
* ``code`` BINARY_VECTOR (dim = bits): the packed code (:mod:`model.runtime.codes`), metric HAMMING;
* ``meta`` JSON: the item's metadata.

Index: ``BIN_FLAT`` (exact; the only binary index Milvus Lite supports) or, on a server,
``BIN_IVF_FLAT`` (``nlist`` clusters, ``nprobe`` probed per search). IVF is approximate: it
may miss neighbours, so only ``BIN_FLAT`` has exact parity with the FAISS backend. A query
that IVF answers with fewer than k hits (its probed lists hold too few items) is answered
exactly instead, from the codes read window by window over the pk space and ranked in numpy;
``stats["exact_fallbacks"]`` counts such queries.

Exactness with ``BIN_FLAT``: k-NN fetches k+1 hits and, when ties straddle the k cut,
completes with an inclusive range search; results are ordered by (distance, pk). Milvus
caps a search at ``MAX_TOPK`` hits; a search that hits the cap is redone window by window
over the pk space (a window of ``MAX_TOPK`` consecutive pks holds at most ``MAX_TOPK``
items, so nothing is cut), which also serves k >= ``MAX_TOPK``.

Persistence: the data lives in Milvus. :meth:`MilvusCodeStore.save` flushes the collection
and writes a small JSON sidecar (uri, collection, bits, insertion counter; never the token);
:meth:`MilvusCodeStore.load` reconnects from it. :meth:`MilvusCodeStore.close` closes this
store's own connection.

Every read and write uses consistency level Strong, so a write is visible to the next
search, from this client or any other (on a real server too, without a flush). One writer at a
time per collection: the insertion counter lives in this object (recovered from the collection
when it is opened, and caught up before each add and pk-window read when another handle wrote
past it), so two concurrent writers could still reuse pks.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlparse
from uuid import uuid4

import numpy as np

from index.errors import DuplicateIdError
from index.store import MilvusIndexType
from model.runtime.codes import check_packed, hamming_distance_matrix
from model.runtime.errors import UserError

try:
    from pymilvus import DataType, MilvusClient
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("index.milvus_store needs the 'milvus' extra: pip install 'cmhash[milvus]'") from exc

__all__ = ["MAX_TOPK", "STORE_FILE", "MilvusCodeStore"]

MAX_TOPK = 16384  # Milvus's cap on a search's limit (topk), a query's limit and nq
STORE_FILE = "store.json"
INDEX_TYPES: tuple[str, ...] = get_args(MilvusIndexType)
_FORMAT_VERSION = 1
_PK, _EXT, _KEY, _CODE, _META = "pk", "ext_id", "id_key", "code", "meta"
_VARCHAR_MAX = 65535
_RESULT_BUDGET = 1 << 20  # hits per search call, bounds one response's size
_LOOKUP_BATCH = 1000  # ids per `in [...]` filter
_INSERT_BYTES = 16 << 20  # per insert call, well under Milvus's 64 MB request limit
# Rows per insert call. pymilvus (2.5) packs row inserts by appending each binary vector to a
# protobuf bytes field (`binary_vector += ...`), which copies the field every time: memory and
# time grow as rows^2 * bytes/code / 2 per call (10 GB of transient client memory for one
# call of 50k 64-bit codes). 2048 rows keep that at 2 MiB per code byte.
_INSERT_ROWS = 2048
_EXACT_QUERIES = 256  # queries per distance block in the exact fallback (256 x MAX_TOPK int64: 32 MiB)
_STRONG = "Strong"
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
_SERVER_SCHEMES = ("unix", "http", "https", "tcp", "grpc")

# Per query: distances, pks and ids, sorted by (distance, pk).
_Hits = tuple[np.ndarray, np.ndarray, list[str]]


def _is_lite(uri: str) -> bool:
    """True for a local Milvus Lite file, the way pymilvus decides it (no server scheme)."""
    return urlparse(uri).scheme.lower() not in _SERVER_SCHEMES


def _key(id: str) -> str:
    """The filter-safe form of an id (UTF-8 hex); ValueError when it cannot be stored."""
    try:
        key = id.encode("utf-8").hex()
    except UnicodeEncodeError as exc:
        raise ValueError(f"id {id!r} is not encodable as UTF-8") from exc
    if len(key) > _VARCHAR_MAX:
        raise ValueError(f"id is {len(key) // 2} bytes long; Milvus stores at most {_VARCHAR_MAX // 2}")
    return key


def _key_or_none(id: object) -> str | None:
    """The key of an id that could be stored, else None (such an id is never present)."""
    if not isinstance(id, str):
        return None
    try:
        return _key(id)
    except ValueError:
        return None


def _in_filter(field: str, values: Sequence[str]) -> str:
    """``field in ["v1", ...]`` for hex keys (no quoting problems by construction)."""
    quoted = ", ".join('"' + v + '"' for v in values)
    return f"{field} in [{quoted}]"


def _empty_hits() -> _Hits:
    return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), []


def _merge(a: _Hits, b: _Hits, keep: int | None) -> _Hits:
    """Union of two hit lists, sorted by (distance, pk), truncated to `keep`."""
    d = np.concatenate([a[0], b[0]])
    pk = np.concatenate([a[1], b[1]])
    ids = a[2] + b[2]
    order = np.lexsort((pk, d))[:keep]
    return d[order], pk[order], [ids[i] for i in order]


def _code_bytes(value: Any) -> np.ndarray:
    """A BINARY_VECTOR field as returned by a query (bytes, or a one-element list of bytes)."""
    if isinstance(value, list):
        value = value[0]
    return np.frombuffer(bytes(value), dtype=np.uint8).copy()


def _write_json_atomic(path: Path, state: dict[str, Any]) -> None:
    """Write JSON to `path` crash-safely: temp file, fsync, os.replace, fsync the directory."""
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}.{threading.get_ident()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MilvusCodeStore:
    """Binary hash code store in a Milvus collection, ranked like the FAISS backend."""

    backend = "milvus"

    def __init__(
        self,
        bits: int,
        uri: str,
        collection: str,
        *,
        token: str | None = None,
        index_type: str = "BIN_FLAT",
        nlist: int = 1024,
        nprobe: int = 128,
        create: bool = True,
    ) -> None:
        """Open `collection` at `uri`, creating it when absent and `create` is true.

        An existing collection keeps the index it was built with (`index_type` and `nlist`
        only apply on creation); one whose code dim differs from `bits`, or that lacks this
        store's fields, raises ValueError. `token` authenticates to a server ("user:password"
        or an API key); it is never saved."""
        if not isinstance(bits, (int, np.integer)) or isinstance(bits, bool):
            raise ValueError(f"bits must be an int, got {bits!r}")
        bits = int(bits)
        if bits <= 0 or bits % 8 != 0:
            raise ValueError(f"bits must be a positive multiple of 8, got {bits}")
        if index_type not in INDEX_TYPES:
            raise UserError(f"index_type must be one of {INDEX_TYPES}, got {index_type!r}")
        if not isinstance(collection, str) or not _NAME_RE.fullmatch(collection):
            raise UserError(f"invalid Milvus collection name {collection!r}")
        for name, value in (("nlist", nlist), ("nprobe", nprobe)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if _is_lite(uri):
            if index_type != "BIN_FLAT":
                raise UserError("Milvus Lite supports binary vectors only with index_type='BIN_FLAT'")
            uri = str(Path(uri).expanduser().resolve())
        self.bits = bits
        self.code_bytes = bits // 8
        self.uri = uri
        self.collection = collection
        self.nprobe = nprobe
        self.stats = {"exact_fallbacks": 0}  # queries an approximate search answered short, redone exactly
        self._lock = threading.RLock()
        # A private connection alias: pymilvus otherwise shares one connection per uri, and
        # closing any client on that uri would cut off every other store using it.
        self._client = MilvusClient(uri=uri, token=token or "", alias=f"cmhash-{uuid4().hex}")
        try:
            if self._client.has_collection(collection):
                self.index_type = self._check_collection()
            elif create:
                self._create_collection(index_type, nlist)
                self.index_type = index_type
            else:
                raise UserError(f"no collection {collection!r} at {uri}")
            self._client.load_collection(collection)
            self._next_id = self._max_pk() + 1
        except BaseException:
            self._client.close()
            raise

    # ----------------------------------------------------------------- setup
    def _create_collection(self, index_type: str, nlist: int) -> None:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(_PK, DataType.INT64, is_primary=True)
        schema.add_field(_EXT, DataType.VARCHAR, max_length=_VARCHAR_MAX)
        schema.add_field(_KEY, DataType.VARCHAR, max_length=_VARCHAR_MAX)
        schema.add_field(_CODE, DataType.BINARY_VECTOR, dim=self.bits)
        schema.add_field(_META, DataType.JSON)
        index_params = self._client.prepare_index_params()
        index_params.add_index(
            field_name=_CODE,
            index_type=index_type,
            metric_type="HAMMING",
            params={"nlist": nlist} if index_type == "BIN_IVF_FLAT" else {},
        )
        self._client.create_collection(self.collection, schema=schema, consistency_level=_STRONG)
        # The collection is empty, so there is no build to wait for: sync=False skips pymilvus's
        # fixed 0.5 s poll. The index itself exists once the call returns; the caller loads.
        self._client.create_index(self.collection, index_params, sync=False)

    def _check_collection(self) -> str:
        """Validate an existing collection's schema and index; returns its index type."""
        desc = self._client.describe_collection(self.collection)
        fields = {f["name"]: f for f in desc["fields"]}
        want = {
            _PK: DataType.INT64,
            _EXT: DataType.VARCHAR,
            _KEY: DataType.VARCHAR,
            _CODE: DataType.BINARY_VECTOR,
            _META: DataType.JSON,
        }
        if {n: fields[n]["type"] for n in want if n in fields} != want or not fields[_PK].get("is_primary"):
            raise UserError(f"collection {self.collection!r} is not a code store (fields {sorted(fields)})")
        dim = int(fields[_CODE]["params"]["dim"])
        if dim != self.bits:
            raise UserError(f"collection {self.collection!r} holds {dim}-bit codes, not {self.bits}")
        names = self._client.list_indexes(self.collection, field_name=_CODE)
        if not names:
            raise UserError(f"collection {self.collection!r} has no index on {_CODE!r}")
        index = self._client.describe_index(self.collection, names[0])
        if index.get("metric_type") != "HAMMING" or index.get("index_type") not in INDEX_TYPES:
            raise UserError(
                f"collection {self.collection!r} has a {index.get('index_type')}/{index.get('metric_type')} "
                f"index; expected one of {INDEX_TYPES} with HAMMING"
            )
        return str(index["index_type"])

    def _has_pk_at_least(self, pk: int) -> bool:
        rows = self._client.query(
            self.collection, filter=f"{_PK} >= {pk}", output_fields=[_PK], limit=1, consistency_level=_STRONG
        )
        return bool(rows)

    def _max_pk(self) -> int:
        """Largest stored pk (-1 when empty), by exponential then binary search: O(log n) queries."""
        if not self._has_pk_at_least(0):
            return -1
        lo, hi = 0, 1  # invariant: some pk >= lo, none >= hi
        while self._has_pk_at_least(hi):
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._has_pk_at_least(mid):
                lo = mid
            else:
                hi = mid
        return lo

    def _pk_end(self) -> int:
        """One past the largest pk: this handle's counter, caught up first when another handle
        on the collection has written past it (one query when it has not)."""
        if self._has_pk_at_least(self._next_id):
            self._next_id = self._max_pk() + 1
        return self._next_id

    # ------------------------------------------------------------- validation
    def _check_codes(self, codes: np.ndarray, what: str = "codes") -> np.ndarray:
        return check_packed(codes, self.bits, what)

    def _queries(self, codes: np.ndarray) -> list[bytes]:
        return [row.tobytes() for row in self._check_codes(codes, "query codes")]

    # -------------------------------------------------------------- mutations
    def add(
        self,
        ids: Sequence[str],
        codes: np.ndarray,
        metadata: Sequence[dict[str, Any] | None] | None = None,
    ) -> None:
        """Add items; a duplicate id (in the call or already stored) raises DuplicateIdError and adds
        nothing. Metadata must be JSON-serializable (it is stored in a JSON field)."""
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
            given = list(metadata)
            if len(given) != len(ids):
                raise ValueError(f"{len(ids)} ids but {len(given)} metadata entries")
            for m in given:
                if m is not None and not isinstance(m, dict):
                    raise ValueError("metadata entries must be dicts or None")
            metas = [dict(m) if m is not None else {} for m in given]
        meta_json = []
        for m in metas:
            try:
                meta_json.append(json.dumps(m))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"metadata must be JSON-serializable: {exc}") from exc
        if len(set(ids)) != len(ids):
            dups = sorted(i for i, count in Counter(ids).items() if count > 1)
            raise DuplicateIdError(f"duplicate ids within call: {dups[:10]}")
        keys = [_key(i) for i in ids]
        if not ids:
            return
        with self._lock:
            present = self._lookup(keys)
            if present:
                raise DuplicateIdError(f"ids already present: {[i for i, k in zip(ids, keys) if k in present][:10]}")
            base = self._pk_end()
            batch: list[dict[str, Any]] = []
            size = 0
            try:
                for j, (sid, key, m, mj) in enumerate(zip(ids, keys, metas, meta_json)):
                    row = {_PK: base + j, _EXT: sid, _KEY: key, _CODE: arr[j].tobytes(), _META: m}
                    batch.append(row)
                    size += 64 + self.code_bytes + 2 * len(key) + len(mj)  # key + raw id < 2 * key
                    if size >= _INSERT_BYTES or len(batch) == _INSERT_ROWS or j == len(ids) - 1:
                        self._client.insert(self.collection, batch)
                        self._next_id = batch[-1][_PK] + 1
                        batch, size = [], 0
            except BaseException:
                # An add spans several insert calls: a failed one leaves the earlier calls' rows
                # (and perhaps part of its own) stored. Delete every pk this add could have used,
                # so a refused add leaves nothing behind; its pks are not reused.
                self._next_id = base + len(ids)
                self._client.delete(self.collection, filter=f"{_PK} >= {base} and {_PK} < {base + len(ids)}")
                raise

    def remove(self, ids: Iterable[str]) -> int:
        """Remove items by id; unknown ids are ignored. Returns the number removed."""
        keys = sorted({k for k in map(_key_or_none, ids) if k is not None})
        with self._lock:
            pks = sorted(self._lookup(keys).values())
            for s in range(0, len(pks), _LOOKUP_BATCH):
                self._client.delete(self.collection, ids=pks[s : s + _LOOKUP_BATCH])
            return len(pks)

    # ---------------------------------------------------------------- queries
    def _lookup(self, keys: Sequence[str]) -> dict[str, int]:
        """pk of each stored key among `keys`."""
        found: dict[str, int] = {}
        for s in range(0, len(keys), _LOOKUP_BATCH):
            chunk = keys[s : s + _LOOKUP_BATCH]
            rows = self._client.query(
                self.collection,
                filter=_in_filter(_KEY, chunk),
                output_fields=[_PK, _KEY],
                limit=len(chunk),
                consistency_level=_STRONG,
            )
            found.update({r[_KEY]: int(r[_PK]) for r in rows})
        return found

    def __len__(self) -> int:
        rows = self._client.query(self.collection, filter="", output_fields=["count(*)"], consistency_level=_STRONG)
        return int(rows[0]["count(*)"])

    def __contains__(self, item: object) -> bool:
        key = _key_or_none(item)
        return key is not None and bool(self._lookup([key]))

    def ids(self) -> list[str]:
        """All ids in insertion order (read window by window over the pk space)."""
        with self._lock:
            rows: list[dict[str, Any]] = []
            for lo in range(0, self._pk_end(), MAX_TOPK):
                rows += self._client.query(
                    self.collection,
                    filter=f"{_PK} >= {lo} and {_PK} < {lo + MAX_TOPK}",
                    output_fields=[_PK, _EXT],
                    limit=MAX_TOPK,
                    consistency_level=_STRONG,
                )
        return [r[_EXT] for r in sorted(rows, key=lambda r: r[_PK])]

    def get(self, id: str) -> dict[str, Any] | None:
        """``{"id", "code", "metadata"}`` of one item, or None when absent."""
        key = _key_or_none(id)
        if key is None:
            return None
        rows = self._client.query(
            self.collection,
            filter=_in_filter(_KEY, [key]),
            output_fields=[_EXT, _CODE, _META],
            limit=1,
            consistency_level=_STRONG,
        )
        if not rows:
            return None
        row = rows[0]
        return {"id": row[_EXT], "code": _code_bytes(row[_CODE]), "metadata": dict(row[_META] or {})}

    def _search_params(self, extra: dict[str, Any]) -> dict[str, Any]:
        params = {"nprobe": self.nprobe} if self.index_type == "BIN_IVF_FLAT" else {}
        return {"metric_type": "HAMMING", "params": {**params, **extra}}

    def _raw_search(self, q: list[bytes], limit: int, extra: dict[str, Any], flt: str = "") -> list[_Hits]:
        """One Milvus search per chunk of queries; hits per query sorted by (distance, pk)."""
        out: list[_Hits] = []
        step = max(1, min(MAX_TOPK, _RESULT_BUDGET // limit))
        for s in range(0, len(q), step):
            res = self._client.search(
                self.collection,
                data=q[s : s + step],
                anns_field=_CODE,
                limit=limit,
                filter=flt,
                search_params=self._search_params(extra),
                output_fields=[_EXT],
                consistency_level=_STRONG,
            )
            for hits in res:
                d = np.rint(np.asarray([h["distance"] for h in hits], dtype=np.float64)).astype(np.int64)
                pk = np.asarray([h["id"] for h in hits], dtype=np.int64)
                ids = [h["entity"][_EXT] for h in hits]
                order = np.lexsort((pk, d))
                out.append((d[order], pk[order], [ids[i] for i in order]))
        return out

    def _scan(self, q: list[bytes], extra: dict[str, Any], keep: int | None) -> list[_Hits]:
        """Search window by window over the pk space, merging as it goes (keeping `keep`).

        A window of MAX_TOPK consecutive pks holds at most MAX_TOPK items, so a search
        limited to MAX_TOPK inside it returns every match: nothing is lost to the cap."""
        acc = [_empty_hits() for _ in q]
        for lo in range(0, self._pk_end(), MAX_TOPK):
            part = self._raw_search(q, MAX_TOPK, extra, f"{_PK} >= {lo} and {_PK} < {lo + MAX_TOPK}")
            acc = [_merge(a, b, keep) for a, b in zip(acc, part)]
        return acc

    def _range(self, q: list[bytes], radius: int, keep: int | None = None) -> list[_Hits]:
        """Every item with distance <= radius per query (the first `keep` when given).

        Milvus's HAMMING range search keeps ``range_filter <= distance < radius``, so the
        inclusive radius r is asked as radius r + 1. A query whose hits reach the MAX_TOPK cap
        may have lost some, and is redone by :meth:`_scan`."""
        extra = {"radius": min(radius, self.bits) + 1, "range_filter": 0}
        hits = self._raw_search(q, MAX_TOPK, extra)
        capped = [j for j, h in enumerate(hits) if len(h[0]) >= MAX_TOPK]
        if capped:
            for j, h in zip(capped, self._scan([q[j] for j in capped], extra, keep)):
                hits[j] = h
        return [(d[:keep], pk[:keep], ids[:keep]) for d, pk, ids in hits]

    def _exact(self, q: list[bytes], keep: int) -> list[_Hits]:
        """The first `keep` items per query by (distance, pk), ranked here from the codes.

        The codes are read window by window over the pk space with scalar queries, which are
        exact whatever the index (a filtered search on BIN_IVF_FLAT would still probe only
        nprobe lists); Hamming distances are computed in numpy."""
        qa = np.frombuffer(b"".join(q), dtype=np.uint8).reshape(len(q), self.code_bytes)
        acc = [_empty_hits() for _ in q]
        for lo in range(0, self._pk_end(), MAX_TOPK):
            rows = self._client.query(
                self.collection,
                filter=f"{_PK} >= {lo} and {_PK} < {lo + MAX_TOPK}",
                output_fields=[_PK, _EXT, _CODE],
                limit=MAX_TOPK,
                consistency_level=_STRONG,
            )
            if not rows:
                continue
            pk = np.asarray([r[_PK] for r in rows], dtype=np.int64)
            ext = [r[_EXT] for r in rows]
            codes = np.stack([_code_bytes(r[_CODE]) for r in rows])
            for s in range(0, len(q), _EXACT_QUERIES):
                dist = hamming_distance_matrix(qa[s : s + _EXACT_QUERIES], codes)
                for j, d in enumerate(dist, start=s):
                    order = np.lexsort((pk, d))[:keep]
                    acc[j] = _merge(acc[j], (d[order], pk[order], [ext[i] for i in order]), keep)
        return acc

    def search(self, codes: np.ndarray, k: int) -> tuple[list[list[str]], np.ndarray]:
        """k nearest ids per query, ordered by (Hamming distance, insertion order).

        Returns ``(ids, distances)``; ``distances`` is an int64 ``nq x k'`` array with
        ``k' = min(k, len(self))`` (every query gets exactly ``k'`` results)."""
        if int(k) != k or k < 0:
            raise ValueError(f"k must be a non-negative int, got {k!r}")
        k = int(k)
        q = self._queries(codes)
        nq = len(q)
        with self._lock:
            n = len(self)
            kk = min(k, n)
            if nq == 0 or kk == 0:
                return [[] for _ in range(nq)], np.zeros((nq, kk), dtype=np.int64)
            fetch = kk + 1 if kk < n else kk
            if fetch > MAX_TOPK:
                rows = self._scan(q, {}, kk)
            else:
                rows = self._raw_search(q, fetch, {})
                # Ties straddling the cut: Milvus may have kept equal-distance items with
                # larger pks. An inclusive range search at the cut distance settles them.
                by_radius: dict[int, list[int]] = {}
                for j, (d, _, _) in enumerate(rows):
                    if len(d) > kk and d[kk - 1] == d[kk]:
                        by_radius.setdefault(int(d[kk - 1]), []).append(j)
                # On BIN_IVF_FLAT the range search is approximate too and may come back with
                # fewer than kk hits: the k-NN hits (kk + 1 of them) then stand.
                for radius, js in by_radius.items():
                    for j, h in zip(js, self._range([q[j] for j in js], radius, kk)):
                        if len(h[0]) >= kk:
                            rows[j] = h
            # An IVF search probes only nprobe lists, which may hold fewer than kk items:
            # answer those queries exactly instead.
            short = [j for j, (d, _, _) in enumerate(rows) if len(d) < kk]
            if short:
                self.stats["exact_fallbacks"] += len(short)
                for j, h in zip(short, self._exact([q[j] for j in short], kk)):
                    rows[j] = h
        short = [j for j, (d, _, _) in enumerate(rows) if len(d) < kk]
        if short:  # only when another handle removed items between the count and the search
            raise RuntimeError(f"the collection holds fewer than {kk} items for queries {short[:10]}")
        return [ids[:kk] for _, _, ids in rows], np.stack([d[:kk] for d, _, _ in rows])

    def range_search(self, codes: np.ndarray, radius: int) -> list[tuple[list[str], np.ndarray]]:
        """All items with Hamming distance <= ``radius`` (inclusive) per query, ordered by
        (distance, insertion order)."""
        if int(radius) != radius or radius < 0:
            raise ValueError(f"radius must be a non-negative int, got {radius!r}")
        q = self._queries(codes)
        if not q:
            return []
        with self._lock:
            return [(ids, d) for d, _, ids in self._range(q, int(radius))]

    # ------------------------------------------------------------ persistence
    def save(self, path: Path | str) -> None:
        """Flush the collection, then write the connection sidecar ``store.json`` to directory
        `path` crash-safely. The data itself stays in Milvus; :meth:`load` reconnects."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._client.flush(self.collection)
            state = {
                "backend": "milvus",
                "format_version": _FORMAT_VERSION,
                "uri": self.uri,
                "collection": self.collection,
                "bits": self.bits,
                "index_type": self.index_type,
                "nprobe": self.nprobe,
                "next_id": self._next_id,
            }
            _write_json_atomic(path / STORE_FILE, state)

    @classmethod
    def load(cls, path: Path | str, *, token: str | None = None) -> MilvusCodeStore:
        """Reconnect to the collection a sidecar written by :meth:`save` names.

        The collection must exist and hold codes of the saved width (else ValueError)."""
        json_path = Path(path) / STORE_FILE
        if not json_path.exists():
            raise FileNotFoundError(f"no {STORE_FILE} in {path}")
        with open(json_path, encoding="utf-8") as f:
            state = json.load(f)
        if state.get("backend") != "milvus" or state.get("format_version") != _FORMAT_VERSION:
            raise ValueError(
                f"{json_path} is not a Milvus store sidecar (backend {state.get('backend')!r}, "
                f"format {state.get('format_version')!r})"
            )
        store = cls(
            int(state["bits"]),
            state["uri"],
            state["collection"],
            token=token,
            index_type=state["index_type"],
            nprobe=int(state["nprobe"]),
            create=False,
        )
        with store._lock:
            store._next_id = max(store._next_id, int(state["next_id"]))
        return store

    def close(self) -> None:
        """Close the connection (the data stays in Milvus)."""
        self._client.close()

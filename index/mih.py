"""Multi-index hashing (Norouzi, Punjani & Fleet): exact Hamming k-NN and range search that
probes hash tables of code substrings instead of scanning every code.

Each L-bit code is cut into m disjoint substrings of about log2(n) bits (``plan_tables``). By
the pigeonhole principle a code within Hamming distance r of the query has at least one
substring within floor(r/m) of the query's. The search probes the tables progressively: step
j = 0, 1, 2, ... probes table ``j % m`` at substring radius ``j // m`` (every substring value
at exactly that distance from the query's). After step j, every table t <= j % m has been
probed up to radius j // m and every later one up to j // m - 1, so a code missed so far has
substring distances summing to at least j + 1: **every code within distance j has been
found**. k-NN stops at the first step j where k found codes lie within j (the k-th distance is
then <= j and all its ties are found); range search stops after step ``radius``. Candidates
are verified with their full distance and ranked by (distance, insertion order), so results
are identical to a flat scan, ties included.

A table is a direct-address bucket array (CSR): ``offsets`` (2^b + 1 entries), ``rows``
(slot numbers sorted by (substring, slot)) and a copy of the codes in that order, so a bucket
is two reads and its candidates are verified from contiguous memory (random reads of a large
gallery cost a cache miss each). A candidate already found in another table is recognised from
its code (its substring distance there is within what that table has been probed to), so no
per-query "seen" set is kept. Substrings are at most
``MAX_SUBSTRING_BITS`` bits wide (offsets of 2^24 entries at most per table).

The structure keeps its own copy of the codes in insertion order ("slots") with their
internal ids. Adds go to a tail that searches scan directly and that is merged into the
tables (a linear merge, no re-sort) once it grows past ``TAIL_FRACTION`` of the gallery;
removals mark slots dead (skipped when found) and a rebuild compacts them once they pass
``DEAD_FRACTION``; the tables are rebuilt with a new substring length when the gallery
grows or shrinks 4x. All of that happens lazily at the next search. Nothing is persisted:
a loaded store rebuilds the structure from its stored codes at the first search.

Fallback: the cost of a probe is estimated (buckets read, candidates verified, Python steps,
calibrated on one core, see the ``*_NS`` constants) against the cost of the flat scan, which
the store keeps calibrated from the flat scans it times (``observe_flat``). A query whose
probe would cost more than ``BUDGET`` of the flat scan, by that estimate (scaled by how far
the clock has run ahead of it in this query) before a step or by the clock after one, is
given up (``None``), and the caller answers it with the flat scan: a query is never slower
than the flat scan by more than about that fraction and one step. After ``SKIP_AFTER``
give-ups in a row for the same kind of query only every ``SKIP_PROBE_EVERY``-th such query
tries MIH, so galleries where MIH cannot win (random long codes) run at the flat scan's speed.
"""

from __future__ import annotations

import math
import time
from functools import lru_cache
from typing import Literal

import numpy as np

__all__ = ["INDEX_TYPES", "IndexType", "Mode", "MultiIndexHash", "plan_tables"]

IndexType = Literal["flat", "mih"]  # a gallery's search index: flat scan, or multi-index hashing (this module)
INDEX_TYPES: tuple[str, ...] = ("flat", "mih")
ScanKind = Literal["knn", "range"]  # the two kinds of flat scan whose cost is calibrated apart
Mode = Literal["auto", "always", "never"]  # auto: cost-based fallback; always / never: tests, benchmarks

MIN_SUBSTRING_BITS = 8
MAX_SUBSTRING_BITS = 24
TAIL_MIN = 4096  # unindexed added codes scanned directly before a merge...
TAIL_FRACTION = 1 / 256  # ...or this fraction of the slots, whichever is larger
DEAD_MIN = 1024  # removed codes kept as dead slots before a compacting rebuild...
DEAD_FRACTION = 1 / 4  # ...or this fraction of the slots
REPLAN_FACTOR = 4  # rebuild with a new substring length when the gallery changes this much

# Cost model (nanoseconds, one core), measured on the 2-core AMD EPYC development machine
# (bench/mih_scale.py): FAISS IndexBinaryFlat scans ~2.3-3.3 ns per code per query.
FLAT_NS_PER_CODE = 2.5
FLAT_FIXED_NS = 60_000.0  # per query: the store's over-fetch, sort and id lookup
BUCKET_NS = 800.0  # per probed bucket: offset, row and code reads, each a cache miss in a large gallery
CANDIDATE_NS = 20.0  # per candidate: row and code reads, popcounts, its share of the results
STEP_NS = 25_000.0  # per probing step: the numpy calls' fixed cost
BUDGET = 0.15  # give a query up once its probe would cost more than this fraction of a flat scan
FLAT_EMA = 0.25  # weight of each timed flat scan in the running flat cost per code (observe_flat)
SKIP_AFTER = 4
SKIP_PROBE_EVERY = 16

_LIVE, _DEAD = 0, 1


def plan_tables(bits: int, n: int) -> list[int]:
    """Substring lengths (bits, summing to `bits`, first ones 1 longer) for `n` codes: about
    log2(n) bits each, clipped to [MIN_SUBSTRING_BITS, MAX_SUBSTRING_BITS] where the code allows."""
    target = min(max(math.log2(max(n, 2)), MIN_SUBSTRING_BITS), MAX_SUBSTRING_BITS)
    m = max(1, round(bits / target))
    m = max(m, math.ceil(bits / MAX_SUBSTRING_BITS))  # offsets of at most 2^24 entries
    m = min(m, max(1, bits // MIN_SUBSTRING_BITS))
    base, extra = divmod(bits, m)
    return [base + (t < extra) for t in range(m)]


@lru_cache(maxsize=256)
def _masks(b: int, s: int) -> np.ndarray:
    """Every b-bit value with exactly s bits set (int64, read-only)."""
    if s == 0:
        out = np.zeros(1, dtype=np.int64)
    elif s > b:
        out = np.zeros(0, dtype=np.int64)
    elif s == b:
        out = np.array([(1 << b) - 1], dtype=np.int64)
    else:  # the top bit clear, or set
        out = np.concatenate([_masks(b - 1, s), _masks(b - 1, s - 1) | (1 << (b - 1))])
    out.setflags(write=False)
    return out


def _be_words(codes: np.ndarray, words: int) -> np.ndarray:
    """Packed codes (n x bytes uint8) as big-endian uint64 words (n x words): code bit p is bit
    63 - p % 64 of word p // 64."""
    n, nbytes = codes.shape
    padded = np.zeros((n, words * 8), dtype=np.uint8)
    padded[:, :nbytes] = codes
    return padded.view(">u8").astype(np.uint64)


class _Tables:
    """The m substring tables over slots [0, built)."""

    def __init__(self, lengths: list[int], n_planned: int) -> None:
        self.lengths = lengths
        self.starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int).tolist()
        self.n_planned = n_planned
        self.offsets: list[np.ndarray] = []
        self.rows: list[np.ndarray] = []
        self.codes: list[np.ndarray] = []  # native-order code words in rows order
        self.built = 0
        self.masks_w: list[np.ndarray] | None = None  # per table, its substring's bits as words

    def keys(self, be: np.ndarray, t: int) -> np.ndarray:
        """Substring t of big-endian word rows `be` (n x words) as int64."""
        a, b = self.starts[t], self.lengths[t]
        w, off = divmod(a, 64)
        if off + b <= 64:
            key = be[:, w] >> np.uint64(64 - off - b)
        else:  # crosses into the next word
            lo = off + b - 64
            key = (be[:, w] << np.uint64(lo)) | (be[:, w + 1] >> np.uint64(64 - lo))
        return (key & np.uint64((1 << b) - 1)).astype(np.int64)


class MultiIndexHash:
    """Substring hash tables over a store's codes, answering exact k-NN and range queries in
    (distance, insertion order), or None when the flat scan is cheaper (see the module doc).

    `add` takes codes with increasing internal ids (above all earlier ones); results are
    (distances, internal ids). Not thread-safe: the owning store serialises calls."""

    def __init__(self, bits: int, mode: Mode = "auto", flat_ns_per_code: float = FLAT_NS_PER_CODE) -> None:
        self.bits = bits
        self.code_bytes = bits // 8
        self.words = -(-self.code_bytes // 8)
        self.mode: Mode = mode
        self.flat_ns_per_code: dict[ScanKind, float] = {"knn": flat_ns_per_code, "range": flat_ns_per_code}
        self._codes = np.zeros((0, self.words), dtype=np.uint64)  # native-order words (for popcounts)
        self._iids = np.zeros(0, dtype=np.int64)
        self._mark = np.zeros(0, dtype=np.uint8)
        self._n = 0  # slots in use
        self._dead = 0
        self._tables: _Tables | None = None
        self._streak: dict[tuple[str, int], int] = {}  # consecutive give-ups per kind of query
        self._asked: dict[tuple[str, int], int] = {}
        self.stats = {"mih": 0, "fallback": 0, "skipped": 0, "rebuilds": 0, "merges": 0}

    def __len__(self) -> int:
        return self._n - self._dead

    # ---------------------------------------------------------------- updates
    def _native(self, codes: np.ndarray) -> np.ndarray:
        padded = np.zeros((codes.shape[0], self.words * 8), dtype=np.uint8)
        padded[:, : self.code_bytes] = codes[:, : self.code_bytes]
        return padded.view(np.uint64)

    def add(self, codes: np.ndarray, iids: np.ndarray) -> None:
        """Append packed codes (n x bytes, at least bits/8 bytes) with increasing internal ids."""
        n_new = codes.shape[0]
        if not n_new:
            return
        need = self._n + n_new
        if need > len(self._iids):
            cap = max(need, 2 * len(self._iids), 1024)
            for name in ("_codes", "_iids", "_mark"):
                old = getattr(self, name)
                grown = np.zeros((cap, *old.shape[1:]), dtype=old.dtype)
                grown[: self._n] = old[: self._n]
                setattr(self, name, grown)
        self._codes[self._n : need] = self._native(codes)
        self._iids[self._n : need] = iids
        self._mark[self._n : need] = _LIVE
        self._n = need

    def remove(self, iids: np.ndarray) -> None:
        """Mark the slots of these internal ids dead (unknown ids are ignored)."""
        iids = np.asarray(iids, dtype=np.int64)
        if not len(iids) or not self._n:
            return
        pos = np.searchsorted(self._iids[: self._n], iids)
        inside = pos < self._n
        pos = pos[inside][self._iids[pos[inside]] == iids[inside]]
        pos = np.unique(pos[self._mark[pos] != _DEAD])
        self._mark[pos] = _DEAD
        self._dead += len(pos)

    # ---------------------------------------------------------------- building
    def _compact(self) -> None:
        keep = np.flatnonzero(self._mark[: self._n] != _DEAD)
        self._codes = self._codes[keep]
        self._iids = self._iids[keep]
        self._mark = np.zeros(len(keep), dtype=np.uint8)
        self._n, self._dead = len(keep), 0

    def _be_slots(self, lo: int, hi: int) -> np.ndarray:
        """Slots [lo, hi) as big-endian words."""
        return self._codes[lo:hi].view(np.uint8).reshape(hi - lo, self.words * 8).view(">u8").astype(np.uint64)

    def _slot_dtype(self) -> type:
        return np.int32 if len(self._iids) < 2**31 - 1 else np.int64

    def _build(self) -> None:
        """Compact dead slots and build every table over all slots."""
        if self._dead:
            self._compact()
        tables = _Tables(plan_tables(self.bits, self._n), self._n)
        dtype = self._slot_dtype()
        chunk = 1 << 20
        for t, b in enumerate(tables.lengths):
            keys = np.empty(self._n, dtype=np.int64)
            for lo in range(0, self._n, chunk):
                hi = min(self._n, lo + chunk)
                keys[lo:hi] = tables.keys(self._be_slots(lo, hi), t)
            counts = np.bincount(keys, minlength=1 << b)
            offsets: np.ndarray = np.zeros((1 << b) + 1, dtype=dtype)
            np.cumsum(counts, out=offsets[1:])
            tables.offsets.append(offsets)
            order = np.argsort(keys, kind="stable")
            del keys
            tables.rows.append(order.astype(dtype))
            tables.codes.append(self._codes[: self._n][order])
            del order
        tables.built = self._n
        self._tables = tables
        self.stats["rebuilds"] += 1

    def _merge_tail(self) -> None:
        """Insert slots [built, n) into the tables (each goes last in its bucket)."""
        tables = self._tables
        assert tables is not None
        lo, hi = tables.built, self._n
        be = self._be_slots(lo, hi)
        slots = np.arange(lo, hi, dtype=tables.rows[0].dtype)
        for t, b in enumerate(tables.lengths):
            keys = tables.keys(be, t)
            order = np.argsort(keys, kind="stable")
            offsets = tables.offsets[t]
            at = offsets[keys[order] + 1]
            tables.rows[t] = np.insert(tables.rows[t], at, slots[order])
            tables.codes[t] = np.insert(tables.codes[t], at, self._codes[lo:hi][order], axis=0)
            offsets[1:] += np.cumsum(np.bincount(keys, minlength=1 << b)).astype(offsets.dtype)
        tables.built = hi
        self.stats["merges"] += 1

    def prepare(self) -> None:
        """Bring the tables up to date (done by every search; call it to pay the build up front)."""
        live = len(self)
        t = self._tables
        if (
            t is None
            or self._dead > max(DEAD_MIN, DEAD_FRACTION * self._n)
            or (
                not t.n_planned / REPLAN_FACTOR <= max(live, 1) <= t.n_planned * REPLAN_FACTOR
                and plan_tables(self.bits, live) != t.lengths
            )
        ):
            self._build()
        elif self._n - t.built > max(TAIL_MIN, TAIL_FRACTION * self._n):
            self._merge_tail()

    # ---------------------------------------------------------------- search
    def observe_flat(self, seconds: float, queries: int, n: int, kind: ScanKind = "knn") -> None:
        """Calibrate the flat-scan cost the budget is a fraction of from a flat scan of `kind`
        ("knn" or "range") the caller just timed (`queries` queries over `n` codes): the model's
        constants were measured on one machine at 64 bits, and the bound must hold on any
        machine and code length."""
        if queries < 1 or n < 1:
            return
        per_code = max(0.05, (seconds * 1e9 / queries - FLAT_FIXED_NS) / n)
        self.flat_ns_per_code[kind] += FLAT_EMA * (per_code - self.flat_ns_per_code[kind])

    def flat_cost_ns(self, n: int, kind: ScanKind = "knn") -> float:
        """Estimated cost of one flat-scan query of `kind` over `n` codes."""
        return FLAT_FIXED_NS + self.flat_ns_per_code[kind] * n

    def _substring_masks(self, tables: _Tables) -> list[np.ndarray]:
        """Per table, the native-order words selecting its substring's bits."""
        if tables.masks_w is None:
            out = []
            for a, b in zip(tables.starts, tables.lengths):
                bits = np.zeros(self.words * 64, dtype=np.uint8)
                bits[a : a + b] = 1
                out.append(np.packbits(bits).view(np.uint64))
            tables.masks_w = out
        return tables.masks_w

    def _distances(self, qw: np.ndarray, slots: np.ndarray) -> np.ndarray:
        if self.words == 1:
            single: np.ndarray = np.bitwise_count(self._codes[slots, 0] ^ qw[0]).astype(np.int64)
            return single
        summed: np.ndarray = np.bitwise_count(self._codes[slots] ^ qw).sum(axis=1, dtype=np.int64)
        return summed

    def _try(self, kind: str, k: int) -> bool:
        """Whether to try MIH for this kind of query (not after a run of give-ups, but now and then)."""
        key = (kind, k)
        if self.mode != "auto" or self._streak.get(key, 0) < SKIP_AFTER:
            return True
        self._asked[key] = self._asked.get(key, 0) + 1
        return self._asked[key] % SKIP_PROBE_EVERY == 0

    def _outcome(self, kind: str, k: int, ok: bool) -> None:
        key = (kind, k)
        self._streak[key] = 0 if ok else self._streak.get(key, 0) + 1
        self.stats["mih" if ok else "fallback"] += 1

    def knn(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The min(k, len) nearest (distances, internal ids) of packed `query` (1-D) by
        (distance, insertion order); None when the flat scan is cheaper."""
        live = len(self)
        kk = min(int(k), live)
        if kk == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        kind_k = min(kk, 1 << 20).bit_length()
        if self.mode == "never" or not self._try("knn", kind_k):
            self.stats["skipped"] += 1
            return None
        out = self._probe(query, None, kk, live)
        self._outcome("knn", kind_k, out is not None)
        return out

    def range(self, query: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Every (distance, internal id) within `radius` (inclusive) of packed `query` (1-D) by
        (distance, insertion order); None when the flat scan is cheaper."""
        live = len(self)
        if live == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        radius = min(int(radius), self.bits)
        if self.mode == "never" or not self._try("range", radius):
            self.stats["skipped"] += 1
            return None
        out = self._probe(query, radius, 0, live)
        self._outcome("range", radius, out is not None)
        return out

    def _probe(self, query: np.ndarray, radius: int | None, kk: int, live: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Progressive probing (module doc) up to step `radius`, or for k-NN until `kk` codes
        are within the step; None when it would cost more than BUDGET of a flat scan."""
        kind: ScanKind = "knn" if radius is None else "range"
        budget = math.inf if self.mode == "always" else BUDGET * self.flat_cost_ns(live, kind)
        if budget < 2 * STEP_NS:  # a small gallery: not worth building tables for
            return None
        self.prepare()
        tables = self._tables
        assert tables is not None
        started = time.perf_counter_ns()  # the clock check: the estimate can be wrong on another machine
        spent = STEP_NS + CANDIDATE_NS * (self._n - tables.built)
        if spent > budget:
            return None
        q = np.ascontiguousarray(query[: self.code_bytes], dtype=np.uint8)[None, :]
        qw = self._native(q)[0]
        be = _be_words(q, self.words)
        qkeys = [int(tables.keys(be, t)[0]) for t in range(len(tables.lengths))]
        m = len(tables.lengths)
        masks_w = self._substring_masks(tables)
        found_s: list[np.ndarray] = []
        found_d: list[np.ndarray] = []
        hist = np.zeros(self.bits + 1, dtype=np.int64)
        tail_slots = np.arange(tables.built, self._n)
        if len(tail_slots):
            tail_slots = tail_slots[self._mark[tail_slots] != _DEAD]
            d = self._distances(qw, tail_slots)
            found_s.append(tail_slots)
            found_d.append(d)
            hist += np.bincount(d, minlength=self.bits + 1)
        probed = [-1] * m  # radius each table has been probed to
        within = 0  # found codes within the guaranteed radius j
        last = self.bits if radius is None else radius
        for j in range(last + 1):
            t, s = j % m, j // m
            b = tables.lengths[t]
            if s <= b:
                masks = _masks(b, s)
                cost = STEP_NS + BUCKET_NS * len(masks)
                elapsed = time.perf_counter_ns() - started
                scale = max(1.0, elapsed / spent)  # how far the model underestimates on this machine
                if spent + cost > budget or elapsed + scale * cost > budget:
                    return None
                offsets = tables.offsets[t]
                keys = masks ^ qkeys[t] if s else np.array([qkeys[t]])
                starts = offsets[keys]
                lens = offsets[keys + 1] - starts
                total = int(lens.sum())
                cost += CANDIDATE_NS * total
                if spent + cost > budget or elapsed + scale * cost > budget:
                    return None
                spent += cost
                if total:
                    nz = np.flatnonzero(lens)
                    starts, lens = starts[nz].astype(np.int64), lens[nz].astype(np.int64)
                    if len(nz) == 1:
                        idx = slice(int(starts[0]), int(starts[0] + lens[0]))
                    else:
                        ends = np.cumsum(lens)
                        idx = np.arange(total, dtype=np.int64) + np.repeat(starts - (ends - lens), lens)
                    x = tables.codes[t][idx] ^ qw
                    new = np.ones(total, dtype=bool)
                    for other in range(m):  # found already when within another table's probe
                        if other != t and probed[other] >= 0:
                            new &= np.bitwise_count(x & masks_w[other]).sum(axis=1) > probed[other]
                    slots = tables.rows[t][idx][new]
                    d = np.bitwise_count(x[new]).sum(axis=1, dtype=np.int64)
                    if self._dead:
                        live = self._mark[slots] != _DEAD
                        slots, d = slots[live], d[live]
                    found_s.append(slots)
                    found_d.append(d)
                    hist += np.bincount(d, minlength=self.bits + 1)
            probed[t] = min(s, b)
            if time.perf_counter_ns() - started > budget:
                return None
            within += int(hist[j])
            if radius is None and within >= kk:
                break
        slots = np.concatenate(found_s) if found_s else np.zeros(0, dtype=np.int64)
        d = np.concatenate(found_d) if found_d else np.zeros(0, dtype=np.int64)
        if radius is not None:
            keep = d <= radius
            slots, d = slots[keep], d[keep]
        order = np.lexsort((slots, d))
        if radius is None:
            order = order[:kk]
        return d[order], self._iids[slots[order]]

"""Hash-retrieval metrics over {-1,+1} codes: Hamming distances, MAP / MAP@k (per query and per
label), P-R by radius, P@k.

Conventions shared by every metric here:
- an item is relevant to a query when their multi-hot label vectors share at least one label;
- the ranking sorts the retrieval set by Hamming distance to the query, and ties keep the
  retrieval-set order (a stable sort), so results are deterministic and reproducible;
- queries are processed in chunks so memory stays bounded for large query x retrieval sets.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

# Printable names of the MAP variants, so reports say which one a number is.
MAP_VARIANTS: dict[str, str] = {
    "whole": "MAP (whole ranking, ties by retrieval order)",
    "top_k": "MAP@{k} (normalised by relevant in top {k}, ties by retrieval order)",
}

# Printable names of the keys returned by `precision_recall_by_radius`.
PR_VARIANTS: dict[str, str] = {
    "precision": "precision, pooled over queries (sum relevant retrieved / sum retrieved; "
    "queries retrieving nothing add nothing; NaN where no query retrieves anything)",
    "recall": "recall, pooled over queries (sum relevant retrieved / sum relevant)",
    "precision_macro": "precision, mean over the queries that retrieve >= 1 item at that radius",
    "recall_macro": "recall, mean over the queries that have >= 1 relevant item",
    "retrieved_per_query": "mean number of items within the radius, over all queries",
    "queries_with_results": "fraction of queries that retrieve >= 1 item at that radius",
}

# Query rows per chunk are chosen so one chunk holds about this many query x retrieval pairs.
_PAIRS_PER_CHUNK = 1 << 22


def map_variant_name(top_k: int | None) -> str:
    """The printable name of the MAP variant computed by `mean_average_precision(top_k=...)`."""
    if top_k is None:
        return MAP_VARIANTS["whole"]
    return MAP_VARIANTS["top_k"].format(k=top_k)


def _check_codes(codes: np.ndarray, name: str) -> np.ndarray:
    """Validate an n x L array of +-1 codes and return it as float32 (exact for +-1 values)."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n x bits), got shape {codes.shape}")
    if codes.shape[1] == 0:
        raise ValueError(f"{name} has zero bits")
    if not np.all(np.abs(codes) == 1):
        raise ValueError(f"{name} must contain only -1 and +1")
    return codes.astype(np.float32, copy=False)


def _check_labels(labels: np.ndarray, n: int, name: str) -> np.ndarray:
    """Validate an n x K multi-hot label matrix and return it as float32."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[0] != n:
        raise ValueError(f"{name} must be 2-D with {n} rows, got shape {labels.shape}")
    multi_hot: np.ndarray = (labels != 0).astype(np.float32)
    return multi_hot


def hamming_distances(query_codes: np.ndarray, retrieval_codes: np.ndarray) -> np.ndarray:
    """nq x nr int32 Hamming distances between +-1 codes, as (L - Q R^T) / 2.

    The product runs in float32: every partial sum of +-1 terms is an integer of magnitude
    <= L, which float32 represents exactly for L <= 2^24, so the result is exact whatever
    summation order or FMA the BLAS uses.
    """
    q = _check_codes(query_codes, "query_codes")
    r = _check_codes(retrieval_codes, "retrieval_codes")
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"code lengths differ: {q.shape[1]} vs {r.shape[1]} bits")
    bits = q.shape[1]
    if bits > 1 << 24:
        raise ValueError(f"{bits} bits exceed the exact float32 range")
    inner = q @ r.T
    distances: np.ndarray = ((bits - inner) / 2).round().astype(np.int32)
    return distances


def _prepared(
    query_codes: np.ndarray,
    retrieval_codes: np.ndarray,
    query_labels: np.ndarray,
    retrieval_labels: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validated float32 codes and labels with consistent shapes."""
    q = _check_codes(query_codes, "query_codes")
    r = _check_codes(retrieval_codes, "retrieval_codes")
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"code lengths differ: {q.shape[1]} vs {r.shape[1]} bits")
    ql = _check_labels(query_labels, len(q), "query_labels")
    rl = _check_labels(retrieval_labels, len(r), "retrieval_labels")
    if ql.shape[1] != rl.shape[1]:
        raise ValueError(f"label counts differ: {ql.shape[1]} vs {rl.shape[1]}")
    return q, r, ql, rl


def _chunks(n_query: int, n_retrieval: int) -> Iterator[slice]:
    """Slices of query rows, each covering about `_PAIRS_PER_CHUNK` query x retrieval pairs."""
    step = max(1, _PAIRS_PER_CHUNK // max(1, n_retrieval))
    for start in range(0, n_query, step):
        yield slice(start, min(start + step, n_query))


def _ranked_relevance(
    q: np.ndarray, r: np.ndarray, ql: np.ndarray, rl: np.ndarray
) -> Iterator[tuple[slice, np.ndarray]]:
    """Per query chunk: a bool matrix whose row i is the relevance of the items in query i's
    Hamming ranking (stable: ties keep retrieval order)."""
    bits = q.shape[1]
    # Small unsigned keys make numpy's stable argsort a radix sort (linear time).
    key_type = np.uint8 if bits <= np.iinfo(np.uint8).max else np.uint16
    for rows in _chunks(len(q), len(r)):
        inner = q[rows] @ r.T
        dist = ((bits - inner) / 2).round().astype(key_type)
        order = np.argsort(dist, axis=1, kind="stable")
        relevant = (ql[rows] @ rl.T) > 0
        yield rows, np.take_along_axis(relevant, order, axis=1)


def average_precisions(
    query_codes: np.ndarray,
    retrieval_codes: np.ndarray,
    query_labels: np.ndarray,
    retrieval_labels: np.ndarray,
    top_k: int | None = None,
) -> np.ndarray:
    """Per-query average precision (float64, length nq) over the Hamming ranking.

    AP = (1 / n_rel) * sum over relevant positions p of precision@p. With `top_k=None` the
    ranking is the whole retrieval set and n_rel counts all relevant items; with `top_k=k`
    the ranking is cut at k and n_rel counts the relevant items inside the top k (the MAP@k
    of DJSRH, Su et al. 2019, and its predecessors). A query with n_rel = 0 gets AP 0.
    `top_k` larger than the retrieval set is the whole ranking.
    """
    q, r, ql, rl = _prepared(query_codes, retrieval_codes, query_labels, retrieval_labels)
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    cut = len(r) if top_k is None else min(top_k, len(r))
    positions = np.arange(1, cut + 1, dtype=np.float64)
    ap = np.zeros(len(q), dtype=np.float64)
    for rows, relevance in _ranked_relevance(q, r, ql, rl):
        rel = relevance[:, :cut]
        hits = np.cumsum(rel, axis=1, dtype=np.int32)
        n_rel = hits[:, -1]
        summed = np.where(rel, hits / positions, 0.0).sum(axis=1)
        ap[rows] = np.divide(summed, n_rel, out=np.zeros_like(summed), where=n_rel > 0)
    return ap


def mean_average_precision(
    query_codes: np.ndarray,
    retrieval_codes: np.ndarray,
    query_labels: np.ndarray,
    retrieval_labels: np.ndarray,
    top_k: int | None = None,
) -> float:
    """Mean of `average_precisions` over all queries (those with no relevant item count as 0).

    `map_variant_name(top_k)` names the variant for printed output.
    """
    ap = average_precisions(query_codes, retrieval_codes, query_labels, retrieval_labels, top_k)
    return float(ap.mean()) if len(ap) else 0.0


def per_label_map(average_precision: np.ndarray, query_labels: np.ndarray) -> np.ndarray:
    """Per label column, the mean of the per-query APs (from `average_precisions`) over the
    queries that carry the label: the MAP of that label's queries, with the headline MAP's
    relevance and tie rules, so a weak label shows even when the overall MAP looks fine.
    float64 of length K; NaN for a label no query carries."""
    ap = np.asarray(average_precision, dtype=np.float64)
    if ap.ndim != 1:
        raise ValueError(f"average_precision must be 1-D (one AP per query), got shape {ap.shape}")
    carries = _check_labels(query_labels, len(ap), "query_labels").astype(np.float64)
    counts = carries.sum(axis=0)
    out = np.full(carries.shape[1], np.nan)
    means: np.ndarray = np.divide(ap @ carries, counts, out=out, where=counts > 0)
    return means


def precision_at_k(
    query_codes: np.ndarray,
    retrieval_codes: np.ndarray,
    query_labels: np.ndarray,
    retrieval_labels: np.ndarray,
    ks: Sequence[int],
) -> dict[int, float]:
    """Mean over queries of (relevant items in the top k of the Hamming ranking) / k, per k.

    Ties keep retrieval order. Each k must lie in 1..n_retrieval.
    """
    q, r, ql, rl = _prepared(query_codes, retrieval_codes, query_labels, retrieval_labels)
    ks = [int(k) for k in ks]
    bad = [k for k in ks if not 1 <= k <= len(r)]
    if bad:
        raise ValueError(f"k must lie in 1..{len(r)} (retrieval set size), got {bad}")
    totals = np.zeros(len(ks), dtype=np.float64)
    columns = np.asarray(ks, dtype=np.int64) - 1
    for _, relevance in _ranked_relevance(q, r, ql, rl):
        hits = np.cumsum(relevance, axis=1, dtype=np.int32)
        totals += hits[:, columns].sum(axis=0)
    n_query = max(1, len(q))
    return {k: float(totals[i] / (k * n_query)) for i, k in enumerate(ks)}


def precision_recall_by_radius(
    query_codes: np.ndarray,
    retrieval_codes: np.ndarray,
    query_labels: np.ndarray,
    retrieval_labels: np.ndarray,
) -> dict[str, np.ndarray]:
    """Precision and recall of Hamming-ball lookup (items at distance <= r) for r = 0..L.

    Returns arrays of length L + 1 under the keys "radius" and those of `PR_VARIANTS`.
    "precision" and "recall" pool counts over queries (micro-average): a query that retrieves
    nothing adds 0 to both sums, so the pooled precision is undefined (NaN) only where no
    query retrieves anything. The "_macro" keys average per-query ratios instead, over the
    queries where the ratio is defined (as common P-R code for cross-modal hashing does).
    """
    q, r, ql, rl = _prepared(query_codes, retrieval_codes, query_labels, retrieval_labels)
    bits = q.shape[1]
    width = bits + 1
    retrieved = np.zeros((len(q), width), dtype=np.int64)
    relevant_retrieved = np.zeros((len(q), width), dtype=np.int64)
    for rows in _chunks(len(q), len(r)):
        inner = q[rows] @ r.T
        dist = ((bits - inner) / 2).round().astype(np.int64)
        relevant = (ql[rows] @ rl.T) > 0
        n_rows = dist.shape[0]
        flat = dist + (np.arange(n_rows, dtype=np.int64) * width)[:, None]
        size = n_rows * width
        retrieved[rows] = np.bincount(flat.ravel(), minlength=size).reshape(n_rows, width)
        relevant_retrieved[rows] = np.bincount(flat[relevant], minlength=size).reshape(n_rows, width)
    retrieved = np.cumsum(retrieved, axis=1)
    relevant_retrieved = np.cumsum(relevant_retrieved, axis=1)
    n_relevant = relevant_retrieved[:, -1]  # at radius L every item is retrieved

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        out = np.full(np.shape(num), np.nan, dtype=np.float64)
        quotient: np.ndarray = np.divide(num, den, out=out, where=den > 0)
        return quotient

    has_results = retrieved > 0
    per_query_precision = ratio(relevant_retrieved, retrieved)
    n_with_results = has_results.sum(axis=0)
    has_relevant = n_relevant > 0
    per_query_recall = ratio(relevant_retrieved[has_relevant], n_relevant[has_relevant, None])
    n_query = max(1, len(q))
    return {
        "radius": np.arange(width),
        "precision": ratio(relevant_retrieved.sum(axis=0), retrieved.sum(axis=0)),
        "recall": ratio(relevant_retrieved.sum(axis=0), np.full(width, n_relevant.sum())),
        "precision_macro": ratio(np.where(has_results, per_query_precision, 0.0).sum(axis=0), n_with_results),
        "recall_macro": ratio(per_query_recall.sum(axis=0), np.full(width, has_relevant.sum())),
        "retrieved_per_query": retrieved.sum(axis=0) / n_query,
        "queries_with_results": n_with_results / n_query,
    }

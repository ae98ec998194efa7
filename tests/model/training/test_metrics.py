"""Retrieval metrics against plain loop-based oracles and a hand-worked example."""

from __future__ import annotations

import numpy as np
import pytest

from model.training import metrics
from model.training.metrics import (
    average_precisions,
    hamming_distances,
    map_variant_name,
    mean_average_precision,
    per_label_map,
    precision_at_k,
    precision_recall_by_radius,
)

# --- plain oracles -------------------------------------------------------------------------


def loop_hamming(a: list[int], b: list[int]) -> int:
    return sum(1 for x, y in zip(a, b) if x != y)


def loop_ranking(query: list[int], retrieval: list[list[int]]) -> list[int]:
    """Retrieval indices sorted by (distance, index): ties keep retrieval order."""
    dist = [loop_hamming(query, item) for item in retrieval]
    return sorted(range(len(retrieval)), key=lambda j: (dist[j], j))


def loop_relevant(a: list[int], b: list[int]) -> bool:
    return any(x and y for x, y in zip(a, b))


def loop_ap(query, retrieval, q_label, r_labels, top_k):
    order = loop_ranking(query, retrieval)
    if top_k is not None:
        order = order[:top_k]
    hits, total = 0, 0.0
    for position, j in enumerate(order, start=1):
        if loop_relevant(q_label, r_labels[j]):
            hits += 1
            total += hits / position
    return total / hits if hits else 0.0


def random_case(seed: int, nq: int = 15, nr: int = 40, bits: int = 6, n_labels: int = 4):
    """Short codes (many distance ties) and sparse labels (some queries have nothing relevant)."""
    rng = np.random.default_rng(seed)
    q = np.where(rng.random((nq, bits)) < 0.5, -1, 1)
    r = np.where(rng.random((nr, bits)) < 0.5, -1, 1)
    ql = (rng.random((nq, n_labels)) < 0.2).astype(np.uint8)
    rl = (rng.random((nr, n_labels)) < 0.2).astype(np.uint8)
    ql[0] = 0  # a query without labels: nothing is relevant to it
    return q, r, ql, rl


# --- hand-worked example -------------------------------------------------------------------

# Query 0 has code ++++ and label A; query 1 has code ---- and no label (nothing relevant).
HAND_Q = np.array([[1, 1, 1, 1], [-1, -1, -1, -1]])
HAND_QL = np.array([[1, 0], [0, 0]])
# Retrieval items in order; distance to query 0 and relevance to it (shares label A):
#   r0 --++  d=2  relevant      r1 ++++  d=0  no        r2 +++-  d=1  relevant
#   r3 +-++  d=1  no            r4 ----  d=4  relevant
HAND_R = np.array([[-1, -1, 1, 1], [1, 1, 1, 1], [1, 1, 1, -1], [1, -1, 1, 1], [-1, -1, -1, -1]])
HAND_RL = np.array([[1, 0], [0, 1], [1, 1], [0, 1], [1, 0]])
# Query 0's ranking with ties kept in retrieval order: r1 (d0), r2 (d1), r3 (d1), r0 (d2), r4 (d4)
# relevance 0 1 0 1 1; precision at the relevant positions 2, 4, 5: 1/2, 2/4, 3/5.
#   AP         = (1/2 + 2/4 + 3/5) / 3 = 8/15
#   AP@3 (0 1 0)   = (1/2) / 1 = 1/2
#   AP@4 (0 1 0 1) = (1/2 + 2/4) / 2 = 1/2
#   AP@1 (0)       = 0 (no relevant item in the top 1)
# Breaking the r2/r3 tie the other way would give (1/3 + 2/4 + 3/5) / 3 instead.
# Query 1 has AP 0 in every variant and still counts in the mean.


def test_hand_worked_average_precisions() -> None:
    expected = {None: 8 / 15, 3: 1 / 2, 4: 1 / 2, 1: 0.0}
    for top_k, ap0 in expected.items():
        ap = average_precisions(HAND_Q, HAND_R, HAND_QL, HAND_RL, top_k=top_k)
        np.testing.assert_allclose(ap, [ap0, 0.0], atol=1e-12)
        assert mean_average_precision(HAND_Q, HAND_R, HAND_QL, HAND_RL, top_k) == pytest.approx(ap0 / 2)


def test_hand_worked_precision_at_k() -> None:
    # Query 0 top-k relevance 0 1 0 1 1: P@1 = 0, P@2 = 1/2, P@5 = 3/5; query 1 always 0.
    result = precision_at_k(HAND_Q, HAND_R, HAND_QL, HAND_RL, ks=[1, 2, 5])
    assert result == pytest.approx({1: 0.0, 2: 1 / 4, 5: 3 / 10})


def test_hand_worked_precision_recall() -> None:
    # Query 0 alone, radius 0..4: retrieved 1, 3, 4, 4, 5; relevant among them 0, 1, 2, 2, 3 of 3.
    pr = precision_recall_by_radius(HAND_Q[:1], HAND_R, HAND_QL[:1], HAND_RL)
    np.testing.assert_array_equal(pr["radius"], [0, 1, 2, 3, 4])
    np.testing.assert_allclose(pr["precision"], [0, 1 / 3, 2 / 4, 2 / 4, 3 / 5])
    np.testing.assert_allclose(pr["recall"], [0, 1 / 3, 2 / 3, 2 / 3, 1])
    np.testing.assert_allclose(pr["retrieved_per_query"], [1, 3, 4, 4, 5])


# --- random cases against the loops --------------------------------------------------------


def test_hamming_matches_pair_loop() -> None:
    q, r, _, _ = random_case(1, bits=13)
    expected = [[loop_hamming(a.tolist(), b.tolist()) for b in r] for a in q]
    for cast in (np.int8, np.float32, np.float64):
        got = hamming_distances(q.astype(cast), r.astype(cast))
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    ("query", "retrieval"),
    [
        (np.array([[1, 0]]), np.array([[1, -1]])),  # a zero is not a code value
        (np.array([[1, -1]]), np.array([[0.5, -1]])),
        (np.array([[1, -1]]), np.array([[1, -1, 1]])),  # lengths differ
        (np.array([1, -1]), np.array([[1, -1]])),  # not 2-D
    ],
)
def test_hamming_rejects_bad_codes(query: np.ndarray, retrieval: np.ndarray) -> None:
    with pytest.raises(ValueError):
        hamming_distances(query, retrieval)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("top_k", [None, 1, 5, 17, 40, 100])
def test_average_precisions_match_loop(seed: int, top_k: int | None) -> None:
    q, r, ql, rl = random_case(seed)
    expected = [loop_ap(q[i].tolist(), r.tolist(), ql[i].tolist(), rl.tolist(), top_k) for i in range(len(q))]
    got = average_precisions(q, r, ql, rl, top_k=top_k)
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert expected[0] == 0.0
    assert mean_average_precision(q, r, ql, rl, top_k) == pytest.approx(float(np.mean(expected)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_label_map_matches_loop(seed: int) -> None:
    """Per label: the mean of the loop's AP (whole ranking, ties by retrieval order) over the
    queries carrying the label; NaN for a label no query carries."""
    q, r, ql, rl = random_case(seed, n_labels=5)
    ql[:, 4] = 0  # no query carries the last label
    got = per_label_map(average_precisions(q, r, ql, rl), ql)
    for label in range(ql.shape[1]):
        aps = [
            loop_ap(q[i].tolist(), r.tolist(), ql[i].tolist(), rl.tolist(), None) for i in range(len(q)) if ql[i, label]
        ]
        if aps:
            assert got[label] == pytest.approx(sum(aps) / len(aps), abs=1e-12)
        else:
            assert np.isnan(got[label])
    assert np.isnan(got[4]) and np.isfinite(got[:4]).sum() >= 3  # the case has labels with queries


def test_hand_worked_per_label_map() -> None:
    # Query 0 (label A, AP 8/15) is label A's only query; no query carries label B.
    got = per_label_map(average_precisions(HAND_Q, HAND_R, HAND_QL, HAND_RL), HAND_QL)
    assert got[0] == pytest.approx(8 / 15) and np.isnan(got[1])
    with pytest.raises(ValueError):
        per_label_map(np.zeros(3), HAND_QL)  # one AP per query


def test_chunking_does_not_change_results(monkeypatch: pytest.MonkeyPatch) -> None:
    q, r, ql, rl = random_case(3, nq=23)
    whole = average_precisions(q, r, ql, rl)
    pk = precision_at_k(q, r, ql, rl, ks=[3, 10])
    pr = precision_recall_by_radius(q, r, ql, rl)
    monkeypatch.setattr(metrics, "_PAIRS_PER_CHUNK", 3 * len(r))  # 3 query rows per chunk
    np.testing.assert_array_equal(average_precisions(q, r, ql, rl), whole)
    assert precision_at_k(q, r, ql, rl, ks=[3, 10]) == pk
    chunked = precision_recall_by_radius(q, r, ql, rl)
    for key, value in pr.items():
        np.testing.assert_array_equal(chunked[key], value)


@pytest.mark.parametrize("seed", [0, 4])
def test_precision_at_k_matches_loop(seed: int) -> None:
    q, r, ql, rl = random_case(seed)
    ks = [1, 7, 20, 40]
    expected = {}
    for k in ks:
        per_query = []
        for i in range(len(q)):
            top = loop_ranking(q[i].tolist(), r.tolist())[:k]
            per_query.append(sum(loop_relevant(ql[i].tolist(), rl[j].tolist()) for j in top) / k)
        expected[k] = float(np.mean(per_query))
    assert precision_at_k(q, r, ql, rl, ks=ks) == pytest.approx(expected)
    with pytest.raises(ValueError):
        precision_at_k(q, r, ql, rl, ks=[len(r) + 1])


@pytest.mark.parametrize("seed", [0, 5])
def test_precision_recall_by_radius_matches_loop(seed: int) -> None:
    q, r, ql, rl = random_case(seed, bits=8)
    bits = q.shape[1]
    result = precision_recall_by_radius(q, r, ql, rl)
    for radius in range(bits + 1):
        sum_ret = sum_relret = sum_rel = 0
        precisions, recalls = [], []
        for i in range(len(q)):
            near = [j for j in range(len(r)) if loop_hamming(q[i].tolist(), r[j].tolist()) <= radius]
            rel_all = [j for j in range(len(r)) if loop_relevant(ql[i].tolist(), rl[j].tolist())]
            relret = len(set(near) & set(rel_all))
            sum_ret, sum_relret, sum_rel = sum_ret + len(near), sum_relret + relret, sum_rel + len(rel_all)
            if near:
                precisions.append(relret / len(near))
            if rel_all:
                recalls.append(relret / len(rel_all))
        expected_precision = sum_relret / sum_ret if sum_ret else np.nan
        expected_macro = np.mean(precisions) if precisions else np.nan
        np.testing.assert_allclose(result["precision"][radius], expected_precision)
        np.testing.assert_allclose(result["recall"][radius], sum_relret / sum_rel)
        np.testing.assert_allclose(result["precision_macro"][radius], expected_macro)
        np.testing.assert_allclose(result["recall_macro"][radius], np.mean(recalls))
        np.testing.assert_allclose(result["queries_with_results"][radius], len(precisions) / len(q))
    assert result["recall"][-1] == pytest.approx(1.0)


def test_precision_undefined_when_nothing_retrieved() -> None:
    # Every retrieval code is the complement of every query: nothing lies within radius < L.
    q = np.ones((2, 3))
    r = -np.ones((4, 3))
    labels_q, labels_r = np.ones((2, 1)), np.ones((4, 1))
    pr = precision_recall_by_radius(q, r, labels_q, labels_r)
    assert np.all(np.isnan(pr["precision"][:3]))
    assert pr["precision"][3] == 1.0
    np.testing.assert_array_equal(pr["recall"], [0, 0, 0, 1])


def test_variant_names() -> None:
    assert map_variant_name(None) == "MAP (whole ranking, ties by retrieval order)"
    assert map_variant_name(50).startswith("MAP@50 (normalised by relevant in top 50")


# --- long codes against a brute-force oracle -------------------------------------------------
# Every other test uses codes of at most 13 bits, where any integer key type holds the distances;
# these use 64, 128 and 384 bits with distances spread over the whole range 0..L (items made by
# flipping a chosen number of a query's bits), so a sort key too narrow for L (wrapping past 127
# or 255) reorders the ranking and changes the numbers.


def spread_case(seed: int, bits: int, nq: int = 4, nr: int = 48, n_labels: int = 5):
    """Queries, and retrieval items each at a distance drawn uniformly from 0..bits of query 0
    (other queries are query 0 with a few bits flipped); labels tied to that distance, so
    relevance and rank are correlated and a wrong ranking is visible in AP."""
    rng = np.random.default_rng(seed)
    base = np.where(rng.random(bits) < 0.5, -1, 1)
    q = np.tile(base, (nq, 1))
    for i in range(1, nq):
        q[i, rng.choice(bits, size=int(rng.integers(1, bits // 4)), replace=False)] *= -1
    r = np.tile(base, (nr, 1))
    flips = rng.integers(0, bits + 1, size=nr)
    flips[:3] = [0, bits, bits // 2]  # the extremes, always present
    for j, d in enumerate(flips):
        r[j, rng.choice(bits, size=int(d), replace=False)] *= -1
    ql = (rng.random((nq, n_labels)) < 0.4).astype(np.uint8)
    ql[:, 0] = 1  # label 0 marks (mostly) the near half of the items: relevance follows distance
    rl = (rng.random((nr, n_labels)) < 0.15).astype(np.uint8)
    rl[:, 0] = (flips < bits // 2) ^ (rng.random(nr) < 0.25)  # mostly the near half, with exceptions
    return q, r, ql, rl


def brute_map(q, r, ql, rl, top_k=None) -> float:
    """MAP by brute force: each query's ranking built with Python ints and a (distance, index) sort."""
    aps = [loop_ap(q[i].tolist(), r.tolist(), ql[i].tolist(), rl.tolist(), top_k) for i in range(len(q))]
    return sum(aps) / len(aps)


@pytest.mark.parametrize("bits", [64, 128, 384])
def test_long_codes_distances_span_the_range(bits: int) -> None:
    q, r, _, _ = spread_case(1, bits)
    expected = [[loop_hamming(a.tolist(), b.tolist()) for b in r] for a in q]
    assert min(expected[0]) == 0 and max(expected[0]) == bits  # the case reaches both ends
    np.testing.assert_array_equal(hamming_distances(q, r), expected)


@pytest.mark.parametrize("bits", [64, 128, 384])
@pytest.mark.parametrize("top_k", [None, 10])
def test_long_codes_map_matches_brute_force(bits: int, top_k: int | None) -> None:
    for seed in (2, 3):
        q, r, ql, rl = spread_case(seed, bits)
        expected = brute_map(q, r, ql, rl, top_k)
        assert 0.0 < expected < 1.0  # neither degenerate value, so a wrong ranking shows
        assert mean_average_precision(q, r, ql, rl, top_k) == pytest.approx(expected, abs=1e-12)
        per_query = [loop_ap(q[i].tolist(), r.tolist(), ql[i].tolist(), rl.tolist(), top_k) for i in range(len(q))]
        np.testing.assert_allclose(average_precisions(q, r, ql, rl, top_k=top_k), per_query, atol=1e-12)


def test_long_random_codes_map_matches_brute_force() -> None:
    """Plain random 384-bit codes (distances near L/2, above 127) against the same oracle."""
    q, r, ql, rl = random_case(7, nq=6, nr=50, bits=384, n_labels=3)
    expected = brute_map(q, r, ql, rl)
    assert mean_average_precision(q, r, ql, rl) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("bits", [128, 384])
def test_long_codes_precision_at_k_and_radius_match_brute_force(bits: int) -> None:
    q, r, ql, rl = spread_case(4, bits)
    dist = [[loop_hamming(a.tolist(), b.tolist()) for b in r] for a in q]
    rel = [[loop_relevant(ql[i].tolist(), rl[j].tolist()) for j in range(len(r))] for i in range(len(q))]
    ks = [1, 5, 24, len(r)]
    expected_pk = {}
    for k in ks:
        tops = [sorted(range(len(r)), key=lambda j, i=i: (dist[i][j], j))[:k] for i in range(len(q))]
        expected_pk[k] = sum(sum(rel[i][j] for j in top) / k for i, top in enumerate(tops)) / len(q)
    assert precision_at_k(q, r, ql, rl, ks=ks) == pytest.approx(expected_pk, abs=1e-12)
    pr = precision_recall_by_radius(q, r, ql, rl)
    assert len(pr["radius"]) == bits + 1
    for radius in (0, 1, bits // 4, bits // 2, bits - 1, bits):
        near = [(i, j) for i in range(len(q)) for j in range(len(r)) if dist[i][j] <= radius]
        relret = sum(rel[i][j] for i, j in near)
        assert pr["retrieved_per_query"][radius] == pytest.approx(len(near) / len(q))
        assert pr["recall"][radius] == pytest.approx(relret / sum(map(sum, rel)))

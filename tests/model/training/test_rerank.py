"""Re-ranked MAP (model.training.rerank) against an independent brute-force oracle: per query,
Hamming distances by loops, the stable (distance, retrieval order) ranking, its first R re-sorted
by -h.b with a stable sort, and AP summed position by position. Then the metrics-rerank.json
schema, and `cmhash evaluate RUN --rerank` on a trained run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from model.training.evaluate import MAP_TOP_K, evaluate_codes
from model.training.metrics import mean_average_precision
from model.training.rerank import (
    evaluate_rerank,
    parse_rerank,
    reranked_average_precisions,
    reranked_map,
)


def oracle_ap(
    h: np.ndarray,
    codes: np.ndarray,
    q_labels: np.ndarray,
    r_labels: np.ndarray,
    candidates: int | None,
    top_k: int | None = None,
) -> np.ndarray:
    out = []
    for qi in range(len(h)):
        q = [1 if x >= 0 else -1 for x in h[qi]]
        dist = [sum(1 for a, b in zip(q, row, strict=True) if a != b) for row in codes]
        score = [sum(float(x) * float(b) for x, b in zip(h[qi], row, strict=True)) for row in codes]
        if candidates is None:
            ranked = sorted(range(len(codes)), key=lambda j: -score[j])
        else:
            hamming = sorted(range(len(codes)), key=lambda j: (dist[j], j))
            ranked = sorted(hamming[:candidates], key=lambda j: -score[j]) + hamming[candidates:]
        if top_k is not None:
            ranked = ranked[:top_k]
        found, total = 0, 0.0
        for pos, j in enumerate(ranked, start=1):
            if np.any(np.logical_and(q_labels[qi], r_labels[j])):
                found += 1
                total += found / pos
        out.append(total / found if found else 0.0)
    return np.array(out)


def data(seed: int, bits: int = 16, n_q: int = 12, n_r: int = 70, grid: bool = True):
    """Tie-heavy retrieval codes (few centres) and query h, on a grid of quarters (exact sums:
    score ties are real ties) or continuous."""
    rng = np.random.default_rng(seed)
    centres = rng.choice([-1, 1], size=(5, bits))
    codes = centres[rng.integers(0, 5, n_r)].copy()
    flips = rng.random(codes.shape) < 0.08
    codes[flips] *= -1
    h = rng.integers(-4, 5, (n_q, bits)) / 4 if grid else rng.normal(size=(n_q, bits))
    q_labels = rng.random((n_q, 4)) < 0.3
    r_labels = rng.random((n_r, 4)) < 0.3
    return h, codes.astype(np.int8), q_labels.astype(np.uint8), r_labels.astype(np.uint8)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("candidates", [1, 3, 10, 69, 70, 500, None])
@pytest.mark.parametrize("top_k", [None, 5, 50])
def test_matches_the_brute_force_oracle(seed: int, candidates: int | None, top_k: int | None) -> None:
    h, codes, ql, rl = data(seed)
    got = reranked_average_precisions(h, codes, ql, rl, candidates, top_k)
    np.testing.assert_allclose(got, oracle_ap(h, codes, ql, rl, candidates, top_k), rtol=0, atol=1e-12)


def test_continuous_h_and_relations_between_variants() -> None:
    h, codes, ql, rl = data(7, bits=32, n_q=20, n_r=120, grid=False)
    for candidates in (7, 40, None):
        np.testing.assert_allclose(
            reranked_average_precisions(h, codes, ql, rl, candidates),
            oracle_ap(h, codes, ql, rl, candidates),
            rtol=0,
            atol=1e-12,
        )
    q = np.where(h >= 0, 1, -1)
    # re-ranking one candidate is the Hamming ranking; re-ranking them all is "all"
    assert reranked_map(h, codes, ql, rl, 1) == pytest.approx(mean_average_precision(q, codes, ql, rl), abs=1e-12)
    assert reranked_map(h, codes, ql, rl, 120) == pytest.approx(reranked_map(h, codes, ql, rl, None), abs=1e-12)


def test_bad_inputs() -> None:
    h, codes, ql, rl = data(0)
    with pytest.raises(ValueError, match="candidates"):
        reranked_map(h, codes, ql, rl, 0)
    with pytest.raises(ValueError, match="code lengths"):
        reranked_map(h[:, :8], codes, ql, rl, 5)
    with pytest.raises(ValueError, match="non-finite"):
        reranked_map(np.full_like(h, np.nan), codes, ql, rl, 5)
    assert parse_rerank("all") is None and parse_rerank("100") == 100
    with pytest.raises(ValueError):
        parse_rerank("0")


def test_metrics_rerank_schema() -> None:
    rng = np.random.default_rng(3)
    h_img, codes_r_txt, ql, rl = data(4, n_q=15, n_r=80, grid=False)
    h_txt, codes_r_img, _, _ = data(5, n_q=15, n_r=80, grid=False)
    codes = {
        "query_image_codes": np.where(h_img >= 0, 1, -1).astype(np.int8),
        "query_text_codes": np.where(h_txt >= 0, 1, -1).astype(np.int8),
        "retrieval_image_codes": codes_r_img,
        "retrieval_text_codes": codes_r_txt,
        "query_labels": ql,
        "retrieval_labels": rl,
        "query_image_h": h_img.astype(np.float32),
        "query_text_h": h_txt.astype(np.float32),
    }
    plain = evaluate_codes(codes)
    for candidates in (10, None):
        m = evaluate_rerank(codes, candidates)
        assert set(plain) <= set(m) and m["rerank"]["candidates"] == candidates
        assert set(m["variants"]) == {"map", f"map@{MAP_TOP_K}"} and "h . b" in m["variants"]["map"]
        for d, h, r in (("i2t", h_img, codes_r_txt), ("t2i", h_txt, codes_r_img)):
            assert set(plain[d]) == set(m[d])
            assert m["rerank"]["hamming"][d]["map"] == plain[d]["map"]
            want = oracle_ap(h.astype(np.float32).astype(np.float64), r, ql, rl, candidates).mean()
            assert m[d]["map"] == pytest.approx(want, abs=1e-9)
            assert m[d]["pr_curve"] == plain[d]["pr_curve"]
        json.dumps(m)
    _ = rng


def test_cli_evaluate_rerank(tiny_run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from service.cli import app

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = (run / "metrics.json").read_text()
    result = CliRunner().invoke(app, ["evaluate", str(run), "--rerank", "5", "--no-progress"])
    assert result.exit_code == 0, (result.output, result.exception)
    metrics = json.loads((run / "metrics-rerank.json").read_text())
    assert metrics["rerank"]["candidates"] == 5 and (run / "metrics.json").read_text() == before
    saved = np.load(run / "codes-rerank.npz")
    for d, h, r in (("i2t", "query_image_h", "retrieval_text_codes"), ("t2i", "query_text_h", "retrieval_image_codes")):
        assert np.array_equal(
            np.where(saved[h] >= 0, 1, -1), saved["query_image_codes" if d == "i2t" else "query_text_codes"]
        )
        ap = oracle_ap(saved[h].astype(np.float64), saved[r], saved["query_labels"], saved["retrieval_labels"], 5)
        assert metrics[d]["map"] == pytest.approx(ap.mean(), abs=1e-9)
    plain = json.loads(before)
    assert metrics["rerank"]["hamming"]["i2t"]["map"] == pytest.approx(plain["i2t"]["map"], abs=1e-9)
    bad = CliRunner().invoke(app, ["evaluate", str(run), "--rerank", "zero"])
    assert bad.exit_code == 2 and "--rerank" in bad.output

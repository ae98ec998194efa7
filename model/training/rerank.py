"""Asymmetric re-ranking (issue 12): the query keeps its continuous representation h (the hash
layer's output before the sign), only the retrieval set is binary. Items are ranked by h . b
(b in {-1,+1}^L) instead of by Hamming distance: either the Hamming top R re-ranked (the first R
of the stable (distance, retrieval order) ranking, so ties at the R-th distance are cut by
retrieval order, exactly the top R a gallery's k-NN search returns), the rest staying in Hamming
order, or every item re-ranked ("all"). Ties in h . b keep the order they had (stable sorts).

`evaluate_run_rerank` writes RUN/metrics-rerank.json (the schema of metrics.json, plus
"rerank": {"candidates": R or null, "hamming": the plain MAPs of the same codes}) and
RUN/codes-rerank.npz (codes.npz plus `query_image_h`, `query_text_h`), as `cmhash evaluate
RUN --rerank R|all` does. The serving side is index.search.search_pages(query_h=, rerank=)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.training.metrics import _check_codes, _check_labels

RERANK_VARIANTS = {
    "whole": "MAP (whole ranking re-ranked by h . b{what}, ties by retrieval order)",
    "top_k": "MAP@{k} (ranking re-ranked by h . b{what}, normalised by relevant in top {k}, ties by retrieval order)",
}
_PAIRS_PER_CHUNK = 1 << 21


def rerank_label(candidates: int | None) -> str:
    """ " over the Hamming top R" or " over every item"."""
    return " over every item" if candidates is None else f" over the Hamming top {candidates}"


def rerank_variant_name(top_k: int | None, candidates: int | None) -> str:
    """The printable name of a re-ranked MAP variant."""
    if top_k is None:
        return RERANK_VARIANTS["whole"].format(what=rerank_label(candidates))
    return RERANK_VARIANTS["top_k"].format(what=rerank_label(candidates), k=top_k)


def _check_h(query_h: np.ndarray) -> np.ndarray:
    h = np.asarray(query_h, dtype=np.float64)
    if h.ndim != 2 or h.shape[1] == 0:
        raise ValueError(f"query_h must be 2-D (n x bits), got shape {h.shape}")
    if not np.all(np.isfinite(h)):
        raise ValueError("query_h holds a non-finite value")
    return h


def reranked_order(
    query_h: np.ndarray, retrieval_codes: np.ndarray, candidates: int | None
) -> Iterator[tuple[slice, np.ndarray]]:
    """Per query chunk: (rows, order) where order[i] lists the retrieval indices in query i's
    re-ranked ranking. The query codes are sgn(h) (sgn(0) = +1, as the codes are made);
    `candidates` R re-ranks the Hamming top R, None every item. Equal retrieval codes get
    bit-identical scores (scored once per distinct code), so their ties keep retrieval order."""
    h = _check_h(query_h)
    r = _check_codes(retrieval_codes, "retrieval_codes")
    if h.shape[1] != r.shape[1]:
        raise ValueError(f"code lengths differ: {h.shape[1]} vs {r.shape[1]} bits")
    if candidates is not None and (isinstance(candidates, bool) or int(candidates) != candidates or candidates < 1):
        raise ValueError(f"candidates must be a positive int or None, got {candidates!r}")
    bits = h.shape[1]
    q = np.where(h >= 0, 1.0, -1.0).astype(np.float32)
    distinct, inverse = np.unique(r, axis=0, return_inverse=True)
    inverse = np.asarray(inverse).reshape(-1)
    distinct = distinct.astype(np.float64)
    key_type = np.uint8 if bits <= np.iinfo(np.uint8).max else np.uint16
    step = max(1, _PAIRS_PER_CHUNK // max(1, len(r)))
    for start in range(0, len(h), step):
        rows = slice(start, min(start + step, len(h)))
        score = (h[rows] @ distinct.T)[:, inverse]
        if candidates is None:
            yield rows, np.argsort(-score, axis=1, kind="stable")
            continue
        dist = ((bits - q[rows] @ r.T) / 2).round().astype(key_type)
        order = np.argsort(dist, axis=1, kind="stable")
        head = order[:, :candidates]
        resort = np.argsort(-np.take_along_axis(score, head, axis=1), axis=1, kind="stable")
        order[:, : head.shape[1]] = np.take_along_axis(head, resort, axis=1)
        yield rows, order


def _relevance(
    query_labels: np.ndarray,
    retrieval_labels: np.ndarray,
    n_query: int,
    n_retrieval: int,
) -> tuple[np.ndarray, np.ndarray]:
    ql = _check_labels(query_labels, n_query, "query_labels")
    rl = _check_labels(retrieval_labels, n_retrieval, "retrieval_labels")
    if ql.shape[1] != rl.shape[1]:
        raise ValueError(f"label counts differ: {ql.shape[1]} vs {rl.shape[1]}")
    return ql, rl


def reranked_average_precisions(
    query_h: np.ndarray,
    retrieval_codes: np.ndarray,
    query_labels: np.ndarray,
    retrieval_labels: np.ndarray,
    candidates: int | None,
    top_k: int | None = None,
) -> np.ndarray:
    """Per-query AP (float64) over the re-ranked ranking, with `metrics.average_precisions`'
    conventions: relevant = sharing a label; `top_k` cuts the ranking and normalises by the
    relevant items inside it; a query with no relevant item gets 0."""
    ap, _ = _reranked_stats(query_h, retrieval_codes, query_labels, retrieval_labels, candidates, top_k, ())
    return ap


def _reranked_stats(
    query_h: np.ndarray,
    retrieval_codes: np.ndarray,
    query_labels: np.ndarray,
    retrieval_labels: np.ndarray,
    candidates: int | None,
    top_k: int | None,
    ks: Sequence[int],
) -> tuple[np.ndarray, dict[int, float]]:
    """Per-query AP (cut at `top_k`) and the mean precision@k for each k of `ks`."""
    h = _check_h(query_h)
    n_r = len(np.asarray(retrieval_codes))
    ql, rl = _relevance(query_labels, retrieval_labels, len(h), n_r)
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    cut = n_r if top_k is None else min(top_k, n_r)
    positions = np.arange(1, cut + 1, dtype=np.float64)
    ap = np.zeros(len(h), dtype=np.float64)
    columns = np.asarray(ks, dtype=np.int64) - 1
    totals = np.zeros(len(columns), dtype=np.float64)
    for rows, order in reranked_order(h, retrieval_codes, candidates):
        relevance = np.take_along_axis((ql[rows] @ rl.T) > 0, order, axis=1)
        all_hits = np.cumsum(relevance, axis=1, dtype=np.int32)
        if len(columns):
            totals += all_hits[:, columns].sum(axis=0)
        rel, hits = relevance[:, :cut], all_hits[:, :cut]
        n_rel = hits[:, -1] if cut else np.zeros(len(rel), dtype=np.int32)
        summed = np.where(rel, hits / positions, 0.0).sum(axis=1)
        ap[rows] = np.divide(summed, n_rel, out=np.zeros_like(summed), where=n_rel > 0)
    return ap, {int(k): float(totals[i] / (k * max(1, len(h)))) for i, k in enumerate(ks)}


def reranked_map(
    query_h: np.ndarray,
    retrieval_codes: np.ndarray,
    query_labels: np.ndarray,
    retrieval_labels: np.ndarray,
    candidates: int | None,
    top_k: int | None = None,
) -> float:
    """MAP of the re-ranked ranking (`rerank_variant_name(top_k, candidates)` names it): the mean
    of `reranked_average_precisions` over every query."""
    ap = reranked_average_precisions(query_h, retrieval_codes, query_labels, retrieval_labels, candidates, top_k)
    return float(ap.mean()) if len(ap) else 0.0


def evaluate_rerank(codes: dict[str, np.ndarray], candidates: int | None) -> dict[str, Any]:
    """metrics-rerank.json of a codes-rerank.npz-style dict[str, Any] (codes.npz plus `query_image_h` and
    `query_text_h`): metrics.json's schema with both directions' MAP, MAP@50 and precision@k over
    the re-ranked rankings (the hash-lookup P-R curve is a set, unchanged by re-ranking), the
    collapse check on those MAPs, and "rerank": {"candidates", "hamming" (the plain MAPs)}."""
    from model.training.evaluate import MAP_TOP_K, detect_collapse, evaluate_codes

    metrics = evaluate_codes(codes)
    hamming = {d: {key: metrics[d][key] for key in ("map", f"map@{MAP_TOP_K}")} for d in ("i2t", "t2i")}
    q_l, r_l = codes["query_labels"], codes["retrieval_labels"]
    for d, h, retrieval in (
        ("i2t", codes["query_image_h"], codes["retrieval_text_codes"]),
        ("t2i", codes["query_text_h"], codes["retrieval_image_codes"]),
    ):
        ks = [int(k) for k in metrics[d]["precision_at_k"]]
        ap, precision = _reranked_stats(h, retrieval, q_l, r_l, candidates, None, ks)
        ap_top, _ = _reranked_stats(h, retrieval, q_l, r_l, candidates, MAP_TOP_K, ())
        metrics[d]["map"] = float(ap.mean()) if len(ap) else 0.0
        metrics[d][f"map@{MAP_TOP_K}"] = float(ap_top.mean()) if len(ap_top) else 0.0
        metrics[d]["precision_at_k"] = {str(k): v for k, v in precision.items()}
    metrics["variants"] = {
        "map": rerank_variant_name(None, candidates),
        f"map@{MAP_TOP_K}": rerank_variant_name(MAP_TOP_K, candidates),
    }
    metrics["collapse"] = detect_collapse(codes, metrics)
    metrics["rerank"] = {
        "candidates": candidates,
        "score": "h . b: the query's continuous representation against the item's {-1,+1} code; ties keep order",
        "pr_curve": "hash lookup within a radius (a set): unchanged by re-ranking",
        "hamming": hamming,
    }
    return metrics


# ------------------------------------------------------------------------------------------------
# Run directories (torch)


def query_representations(model, inputs, query_rows: np.ndarray) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """`query_image_h` and `query_text_h` (float32): the continuous representations whose signs
    are codes.npz's query codes (images through the backbone when the model has one)."""
    import torch

    from model.training.train import encode_rows

    r = torch.from_numpy(np.asarray(query_rows))
    image = inputs.image[r]
    if model.image_backbone is not None:
        assert inputs.pixels is not None
        image = inputs.pixels.subset(query_rows)
    return {
        "query_image_h": encode_rows(model, image, "image").numpy().astype(np.float32),
        "query_text_h": encode_rows(model, inputs.text[r], "text").numpy().astype(np.float32),
    }


def write_rerank(run_dir: Path, codes: dict[str, np.ndarray], candidates: int | None) -> dict[str, Any]:
    """Write RUN/codes-rerank.npz and RUN/metrics-rerank.json; return the metrics."""
    run_dir = Path(run_dir)
    np.savez_compressed(run_dir / "codes-rerank.npz", **codes)  # type: ignore[arg-type]  # numpy's stub types **kwds as its `allow_pickle`
    metrics = evaluate_rerank(codes, candidates)
    (run_dir / "metrics-rerank.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def evaluate_run_rerank(run_dir: Path, candidates: int | None, progress: bool = True) -> dict[str, Any]:
    """Reload RUN's checkpoint, config and split (as `run.evaluate_run`), recompute the codes and
    the queries' h, and write the re-ranked metrics (metrics.json is left as it is). A k-fold run
    gets each fold's files and the aggregate RUN/metrics-rerank.json."""
    from model.training.config import TrainConfig
    from model.training.data import Split
    from model.training.evaluate import aggregate_folds, split_codes
    from model.training.run import fold_dir
    from model.training.train import checkpoint_bag_of_words, load_checkpoint, prepare_run

    run_dir = Path(run_dir)
    if not (run_dir / "checkpoint.pt").exists() and (fold_dir(run_dir, 0) / "checkpoint.pt").exists():
        cfg = TrainConfig.model_validate_json((run_dir / "config.json").read_text())
        assert cfg.folds is not None
        folds = [evaluate_run_rerank(fold_dir(run_dir, i), candidates, progress) for i in range(cfg.folds)]
        metrics = aggregate_folds(folds)
        metrics["rerank"] = {
            "candidates": candidates,
            "hamming": {
                d: {
                    key: float(np.mean([f["rerank"]["hamming"][d][key] for f in folds]))
                    for key in folds[0]["rerank"]["hamming"][d]
                }
                for d in ("i2t", "t2i")
            },
        }
        (run_dir / "metrics-rerank.json").write_text(json.dumps(metrics, indent=2))
        return metrics
    model, cfg, ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    run = prepare_run(cfg, progress, checkpoint_bag_of_words(ckpt))
    if cfg.validation_fraction == 0:
        run.eval_split = Split.load(run_dir / "split.json")
    split = run.eval_split
    codes = split_codes(model, run.inputs, split.query, split.retrieval)
    codes.update(query_representations(model, run.inputs, split.query))
    return write_rerank(run_dir, codes, candidates)


def parse_rerank(text: str) -> int | None:
    """A `--rerank` value: "all" -> None (every item), else a positive number of candidates."""
    if text.strip().lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"--rerank takes a positive number of candidates or 'all', got {text!r}")
    return value

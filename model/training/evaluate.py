"""Evaluation of a trained hasher: codes of the query and retrieval sets in both modalities,
MAP (whole ranking and MAP@50), precision@k, hash-lookup P-R curves, and the run's files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.training.encoders import CrossModalHasher
from model.training.inputs import PixelImages, PreparedInputs
from model.training.losses import sign_codes
from model.training.metrics import (
    map_variant_name,
    mean_average_precision,
    precision_at_k,
    precision_recall_by_radius,
)
from model.training.plots import plot_pr_curves

MAP_TOP_K = 50  # DJSRH's MAP@50
PRECISION_KS = (1, 10, 50, 100, 500, 1000)  # precision@top-R cut-offs (those within the retrieval set)
COLLAPSE_CONSTANT_BITS = 0.5  # collapsed when more than this fraction of bits is constant over the retrieval set
COLLAPSE_MAP_MARGIN = 0.05  # ... or when MAP <= chance + this x (1 - chance), in either direction


def encode_codes(
    model: CrossModalHasher, image: torch.Tensor | PixelImages, text: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """{-1,+1} int8 codes of image inputs and text feature rows: sgn of the hash representation."""
    from model.training.train import encode_rows

    img = sign_codes(encode_rows(model, image, "image")).numpy().astype(np.int8)
    txt = sign_codes(encode_rows(model, text, "text")).numpy().astype(np.int8)
    return img, txt


def direction_metrics(
    query: np.ndarray, retrieval: np.ndarray, q_labels: np.ndarray, r_labels: np.ndarray
) -> dict[str, Any]:
    """MAP, MAP@50, precision@k and the P-R curve of one retrieval direction."""
    ks = [k for k in PRECISION_KS if k <= len(retrieval)]
    pr = precision_recall_by_radius(query, retrieval, q_labels, r_labels)
    return {
        "map": mean_average_precision(query, retrieval, q_labels, r_labels),
        f"map@{MAP_TOP_K}": mean_average_precision(query, retrieval, q_labels, r_labels, top_k=MAP_TOP_K),
        "precision_at_k": {str(k): v for k, v in precision_at_k(query, retrieval, q_labels, r_labels, ks).items()},
        "pr_curve": {
            "radius": list(range(len(pr["precision"]))),
            "precision": [None if np.isnan(v) else float(v) for v in pr["precision"]],
            "recall": [float(v) for v in pr["recall"]],
        },
    }


def chance_map(q_labels: np.ndarray, r_labels: np.ndarray) -> float:
    """Expected MAP (whole ranking) of a random ranking: the mean over queries of the fraction
    of retrieval items relevant to the query (queries with no relevant item count 0, as in
    `mean_average_precision`). This is the large-N value: with R of N items relevant the exact
    expectation is (R-1)/(N-1) + (N-R) H_N / (N(N-1)), within (ln N + 1) / N of R/N."""
    q = (np.asarray(q_labels) != 0).astype(np.float32)
    r = (np.asarray(r_labels) != 0).astype(np.float32)
    if len(q) == 0 or len(r) == 0:
        return 0.0
    relevant = ((q @ r.T) > 0).sum(axis=1)
    return float(np.mean(relevant / len(r)))


def constant_bit_fraction(codes: np.ndarray) -> float:
    """Fraction of the bits that take one value on every row of `codes` (n x L, +-1)."""
    codes = np.asarray(codes)
    if len(codes) == 0:
        return 0.0
    return float(np.mean(np.all(codes == codes[:1], axis=0)))


def detect_collapse(codes: dict[str, np.ndarray], metrics: dict[str, Any]) -> dict[str, Any]:
    """The "collapse" entry of metrics.json: collapsed when more than COLLAPSE_CONSTANT_BITS of
    the bits of either modality's retrieval codes are constant, or when either direction's MAP
    (whole ranking) is within COLLAPSE_MAP_MARGIN x (1 - chance) of chance (or below it)."""
    chance = metrics["chance_map"]
    margin = COLLAPSE_MAP_MARGIN * (1.0 - chance)
    constant = {m: constant_bit_fraction(codes[f"retrieval_{m}_codes"]) for m in ("image", "text")}
    reasons = [
        f"{frac:.0%} of the {m} codes' bits are constant over the retrieval set"
        for m, frac in constant.items()
        if frac > COLLAPSE_CONSTANT_BITS
    ]
    for d, name in (("i2t", "I->T"), ("t2i", "T->I")):
        value = metrics[d]["map"]
        if value <= chance + margin:
            reasons.append(f"{name} MAP {value:.4f} is within {margin:.4f} of chance {chance:.4f}")
    return {
        "collapsed": bool(reasons),
        "reasons": reasons,
        "constant_bit_fraction": constant,
        "chance_map": chance,
        "map_margin": margin,
        "rule": f"collapsed if > {COLLAPSE_CONSTANT_BITS:.0%} of either modality's bits are constant over the "
        f"retrieval set, or a direction's MAP <= chance + {COLLAPSE_MAP_MARGIN} x (1 - chance)",
    }


def evaluate_codes(codes: dict[str, np.ndarray]) -> dict[str, Any]:
    """Both directions over a `codes.npz`-style dict[str, Any]: I->T ranks retrieval texts by image
    queries, T->I ranks retrieval images by text queries. Also the chance MAP of a random
    ranking and the "collapse" check (`detect_collapse`)."""
    q_l, r_l = codes["query_labels"], codes["retrieval_labels"]
    metrics = {
        "variants": {"map": map_variant_name(None), f"map@{MAP_TOP_K}": map_variant_name(MAP_TOP_K)},
        "relevance": "query and item share at least one label",
        "n_query": len(q_l),
        "n_retrieval": len(r_l),
        "chance_map": chance_map(q_l, r_l),
        "i2t": direction_metrics(codes["query_image_codes"], codes["retrieval_text_codes"], q_l, r_l),
        "t2i": direction_metrics(codes["query_text_codes"], codes["retrieval_image_codes"], q_l, r_l),
    }
    metrics["collapse"] = detect_collapse(codes, metrics)
    return metrics


def aggregate_folds(fold_metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """metrics.json of a k-fold run: per-fold MAPs, and per direction and MAP variant the mean
    over folds with a 95% confidence interval (Student t, k - 1 degrees of freedom). The
    top-level "map" values are the means, so readers of single-run metrics still work."""
    from scipy import stats

    k = len(fold_metrics)
    first = fold_metrics[0]
    out: dict[str, Any] = {
        "variants": first["variants"],
        "relevance": first["relevance"],
        "folds": k,
        "interval": "mean over folds ± t(0.975, k-1) x sample std / sqrt(k)",
        "n_query": int(sum(m["n_query"] for m in fold_metrics)),
        "n_retrieval_per_fold": [m["n_retrieval"] for m in fold_metrics],
        "chance_map": float(np.mean([m["chance_map"] for m in fold_metrics])),
        "per_fold": [
            {
                "fold": i,
                "n_query": m["n_query"],
                "chance_map": m["chance_map"],
                **{d: {key: m[d][key] for key in ("map", f"map@{MAP_TOP_K}")} for d in ("i2t", "t2i")},
                "collapsed": m["collapse"]["collapsed"],
            }
            for i, m in enumerate(fold_metrics)
        ],
    }
    t = float(stats.t.ppf(0.975, k - 1)) if k > 1 else float("nan")
    for d in ("i2t", "t2i"):
        out[d] = {}
        for key in ("map", f"map@{MAP_TOP_K}"):
            values = np.array([m[d][key] for m in fold_metrics], dtype=np.float64)
            mean = float(values.mean())
            half = float(t * values.std(ddof=1) / np.sqrt(k)) if k > 1 else float("nan")
            out[d][key] = mean
            out[d][f"{key}_ci95"] = [mean - half, mean + half]
            out[d][f"{key}_per_fold"] = values.tolist()
    collapsed = [i for i, m in enumerate(fold_metrics) if m["collapse"]["collapsed"]]
    out["collapse"] = {
        "collapsed": bool(collapsed),
        "folds": collapsed,
        "reasons": [f"fold {i}: {r}" for i in collapsed for r in fold_metrics[i]["collapse"]["reasons"]],
        "rule": first["collapse"]["rule"],
    }
    return out


def split_codes(
    model: CrossModalHasher, inputs: PreparedInputs, query_rows: np.ndarray, retrieval_rows: np.ndarray
) -> dict[str, np.ndarray]:
    """The arrays of `codes.npz` for a query/retrieval split of the prepared inputs (images go
    through the model's backbone when it has one, i.e. when it was fine-tuned)."""
    out: dict[str, np.ndarray] = {}
    for part, rows in (("query", query_rows), ("retrieval", retrieval_rows)):
        r = torch.from_numpy(rows)
        image: torch.Tensor | PixelImages = inputs.image[r]
        if model.image_backbone is not None:
            assert inputs.pixels is not None
            image = inputs.pixels.subset(rows)
        out[f"{part}_image_codes"], out[f"{part}_text_codes"] = encode_codes(model, image, inputs.text[r])
        out[f"{part}_labels"] = inputs.labels[r].numpy().astype(np.uint8)
    return out


def write_evaluation(run_dir: Path, codes: dict[str, np.ndarray], title: str) -> dict[str, Any]:
    """Write codes.npz, metrics.json and pr_curve.png into `run_dir`; return the metrics."""
    run_dir = Path(run_dir)
    np.savez_compressed(run_dir / "codes.npz", **codes)  # type: ignore[arg-type]  # numpy's stub types **kwds as its `allow_pickle`
    metrics = evaluate_codes(codes)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    curves = {}
    for key, name in (("i2t", "I->T"), ("t2i", "T->I")):
        pr = metrics[key]["pr_curve"]
        curves[name] = {
            "precision": np.array([np.nan if v is None else v for v in pr["precision"]]),
            "recall": np.array(pr["recall"]),
            "precision_at_k": {int(k): v for k, v in metrics[key]["precision_at_k"].items()},
        }
    plot_pr_curves(curves, run_dir / "pr_curve.png", title)
    return metrics


def collapse_warning(metrics: dict[str, Any]) -> str | None:
    """The loud warning line for a run whose codes collapsed, or None."""
    collapse = metrics.get("collapse")
    if not collapse or not collapse.get("collapsed"):
        return None
    return "WARNING: the codes collapsed (" + "; ".join(collapse["reasons"]) + "): retrieval is near chance"


def summary_line(metrics: dict[str, Any]) -> str:
    """Printable lines with both directions and the MAP variants named (with the 95% interval
    over folds for a k-fold run), the chance MAP, and the collapse warning when there is one."""
    k = f"map@{MAP_TOP_K}"

    def cell(d: str, key: str) -> str:
        ci = metrics[d].get(f"{key}_ci95")
        return f"{metrics[d][key]:.4f}" + (f" [95% CI {ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")

    folds = f"mean over {metrics['folds']} folds; " if metrics.get("folds") else ""
    lines = [
        f"I->T MAP {cell('i2t', 'map')}  T->I MAP {cell('t2i', 'map')}  [{folds}{metrics['variants']['map']}]",
        f"I->T MAP@{MAP_TOP_K} {cell('i2t', k)}  T->I MAP@{MAP_TOP_K} {cell('t2i', k)}  [{folds}{metrics['variants'][k]}]",
    ]
    if "chance_map" in metrics:
        lines.append(f"chance MAP (random ranking) {metrics['chance_map']:.4f}")
    warning = collapse_warning(metrics)
    if warning:
        lines.append(warning)
    return "\n".join(lines)

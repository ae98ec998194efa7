"""Evaluation of a trained hasher: codes of the query and retrieval sets in both modalities,
MAP (whole ranking and MAP@50, and per label), precision@k, hash-lookup P-R curves, the run's
files and the printed report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.training.encoders import CrossModalHasher
from model.training.inputs import PixelImages, PreparedInputs
from model.training.losses import sign_codes
from model.training.metrics import (
    average_precisions,
    map_variant_name,
    mean_average_precision,
    per_label_map,
    precision_at_k,
    precision_recall_by_radius,
)
from model.training.plots import plot_pr_curves

MAP_TOP_K = 50  # DJSRH's MAP@50
PRECISION_KS = (1, 10, 50, 100, 500, 1000)  # precision@top-R cut-offs (those within the retrieval set)
COLLAPSE_CONSTANT_BITS = 0.5  # collapsed when more than this fraction of bits is constant over the retrieval set
COLLAPSE_MAP_MARGIN = 0.05  # ... or when MAP <= chance + this x (1 - chance), in either direction
REPORT_ALL_LABELS = 30  # the report lists every label up to this many, else the best and worst few
REPORT_EXTREMES = 5  # ... this many best and this many worst
DIRECTIONS = (("i2t", "I->T"), ("t2i", "T->I"))


def encode_codes(
    model: CrossModalHasher, image: torch.Tensor | PixelImages, text: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """{-1,+1} int8 codes of image inputs and text feature rows: sgn of the hash representation."""
    from model.training.train import encode_rows

    img = sign_codes(encode_rows(model, image, "image")).numpy().astype(np.int8)
    txt = sign_codes(encode_rows(model, text, "text")).numpy().astype(np.int8)
    return img, txt


def direction_metrics(
    query: np.ndarray,
    retrieval: np.ndarray,
    q_labels: np.ndarray,
    r_labels: np.ndarray,
    average_precision: np.ndarray,
) -> dict[str, Any]:
    """MAP, MAP@50, precision@k and the P-R curve of one retrieval direction; the MAP is the
    mean of `average_precision`, the direction's `average_precisions` (computed once by the
    caller, which also needs them per label)."""
    ks = [k for k in PRECISION_KS if k <= len(retrieval)]
    pr = precision_recall_by_radius(query, retrieval, q_labels, r_labels)
    return {
        "map": float(np.mean(average_precision)),
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
    for d, name in DIRECTIONS:
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


def per_label_metrics(
    label_names: Sequence[str], q_labels: np.ndarray, r_labels: np.ndarray, aps: dict[str, np.ndarray]
) -> list[dict[str, Any]]:
    """The "per_label" entry of metrics.json: per label, the number of queries carrying it, its
    frequency in the retrieval set, and per direction the MAP (whole ranking) over its queries
    (`metrics.per_label_map` of the direction's APs in `aps`; None when no query carries it)."""
    q = np.asarray(q_labels) != 0
    if q.shape[1] != len(label_names):
        raise ValueError(f"{len(label_names)} label names for {q.shape[1]} label columns")
    fraction = (np.asarray(r_labels) != 0).mean(axis=0)
    maps = {d: per_label_map(ap, q_labels) for d, ap in aps.items()}
    return [
        {
            "label": name,
            "n_query": int(q[:, j].sum()),
            "retrieval_fraction": float(fraction[j]),
            **{d: None if np.isnan(maps[d][j]) else float(maps[d][j]) for d, _ in DIRECTIONS},
        }
        for j, name in enumerate(label_names)
    ]


def evaluate_codes(codes: dict[str, np.ndarray], label_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Both directions over a `codes.npz`-style dict[str, Any]: I->T ranks retrieval texts by image
    queries, T->I ranks retrieval images by text queries. Also the chance MAP of a random
    ranking, the "collapse" check (`detect_collapse`) and, given the names of the label
    columns, the per-label MAPs (`per_label_metrics`; callers that re-rank or only compare
    MAPs leave them out)."""
    q_l, r_l = codes["query_labels"], codes["retrieval_labels"]
    query = {"i2t": codes["query_image_codes"], "t2i": codes["query_text_codes"]}
    retrieval = {"i2t": codes["retrieval_text_codes"], "t2i": codes["retrieval_image_codes"]}
    aps = {d: average_precisions(query[d], retrieval[d], q_l, r_l) for d, _ in DIRECTIONS}
    metrics: dict[str, Any] = {
        "variants": {"map": map_variant_name(None), f"map@{MAP_TOP_K}": map_variant_name(MAP_TOP_K)},
        "relevance": "query and item share at least one label",
        "n_query": len(q_l),
        "n_retrieval": len(r_l),
        "chance_map": chance_map(q_l, r_l),
        **{d: direction_metrics(query[d], retrieval[d], q_l, r_l, aps[d]) for d, _ in DIRECTIONS},
    }
    metrics["collapse"] = detect_collapse(codes, metrics)
    if label_names is not None:
        metrics["per_label"] = per_label_metrics(label_names, q_l, r_l, aps)
    return metrics


def aggregate_per_label(fold_per_label: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The "per_label" entry of a k-fold run: per label, the MAP over every query carrying it
    in all folds together (each item is a query in exactly one fold), i.e. the folds' per-label
    MAPs weighted by their query counts; the query counts summed and the retrieval fraction
    averaged over folds."""
    names = [entry["label"] for entry in fold_per_label[0]]
    if any([entry["label"] for entry in per] != names for per in fold_per_label):
        raise ValueError("the folds' per-label entries name different labels")
    out = []
    for j, name in enumerate(names):
        entries = [per[j] for per in fold_per_label]
        n_query = sum(e["n_query"] for e in entries)
        maps = {
            d: sum(e["n_query"] * e[d] for e in entries if e[d] is not None) / n_query if n_query else None
            for d, _ in DIRECTIONS
        }
        fraction = float(np.mean([e["retrieval_fraction"] for e in entries]))
        out.append({"label": name, "n_query": n_query, "retrieval_fraction": fraction, **maps})
    return out


def aggregate_warnings(fold_warnings: list[list[str]]) -> list[str]:
    """The data warnings of a k-fold run: each distinct warning once, in order of appearance,
    prefixed with the folds it comes from unless every fold has it."""
    folds_of: dict[str, list[int]] = {}
    for i, warnings in enumerate(fold_warnings):
        for warning in warnings:
            folds_of.setdefault(warning, []).append(i)
    k = len(fold_warnings)
    return [
        w if len(f) == k else f"fold{'s' * (len(f) > 1)} {', '.join(map(str, f))}: {w}" for w, f in folds_of.items()
    ]


def aggregate_folds(fold_metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """metrics.json of a k-fold run: per-fold MAPs, and per direction and MAP variant the mean
    over folds with a 95% confidence interval (Student t, k - 1 degrees of freedom). The
    top-level "map" values are the means, so readers of single-run metrics still work. When
    every fold has them, also the per-label MAPs (`aggregate_per_label`) and the data warnings
    (`aggregate_warnings`)."""
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
    if all("per_label" in m for m in fold_metrics):
        out["per_label"] = aggregate_per_label([m["per_label"] for m in fold_metrics])
    if all("warnings" in m for m in fold_metrics):
        out["warnings"] = aggregate_warnings([m["warnings"] for m in fold_metrics])
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


def write_evaluation(
    run_dir: Path, codes: dict[str, np.ndarray], title: str, label_names: Sequence[str], warnings: list[str]
) -> dict[str, Any]:
    """Write codes.npz, metrics.json and pr_curve.png into `run_dir`; return the metrics (with
    the per-label MAPs over `label_names` and the data warnings `warnings`, see data_checks)."""
    run_dir = Path(run_dir)
    np.savez_compressed(run_dir / "codes.npz", **codes)  # type: ignore[arg-type]  # numpy's stub types **kwds as its `allow_pickle`
    metrics = evaluate_codes(codes, label_names)
    metrics["warnings"] = warnings
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    curves = {}
    for key, name in DIRECTIONS:
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


def _map_lines(metrics: dict[str, Any]) -> list[str]:
    """Both directions' MAPs with their variants named (and the 95% interval over folds for a
    k-fold run), then the chance MAP."""
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
    return lines


def summary_line(metrics: dict[str, Any]) -> str:
    """Printable lines with both directions and the MAP variants named (with the 95% interval
    over folds for a k-fold run), the chance MAP, and the collapse warning when there is one."""
    warning = collapse_warning(metrics)
    return "\n".join([*_map_lines(metrics), *([warning] if warning else [])])


def _label_rows(entries: list[dict[str, Any]]) -> list[str]:
    """Aligned table lines (header first) of per-label entries: label, queries, share of the
    retrieval set, I->T and T->I MAP ("-" where no query carries the label)."""
    width = max(len("label"), *(len(e["label"]) for e in entries))

    def value(v: float | None) -> str:
        return f"{'-' if v is None else f'{v:.4f}':>7}"

    header = f"  {'label':<{width}}  queries  retrieval     I->T     T->I"
    return [header] + [
        f"  {e['label']:<{width}}  {e['n_query']:>7}  {e['retrieval_fraction']:>9.1%}  {value(e['i2t'])}  {value(e['t2i'])}"
        for e in entries
    ]


def per_label_lines(metrics: dict[str, Any]) -> list[str]:
    """The report's per-label part: every label when there are at most REPORT_ALL_LABELS, else
    the REPORT_EXTREMES best and worst by the mean of both directions (labels with queries)."""
    entries: list[dict[str, Any]] = metrics.get("per_label") or []
    if not entries:
        return []
    scope = "all folds' queries" if metrics.get("folds") else "the queries"
    title = f"per-label MAP (whole ranking, over {scope} carrying the label; retrieval = share of the retrieval set)"
    if len(entries) <= REPORT_ALL_LABELS:
        return [f"{title}:", *_label_rows(entries)]
    scored = sorted((e for e in entries if e["n_query"]), key=lambda e: (e["i2t"] + e["t2i"]) / 2, reverse=True)
    best, worst = scored[:REPORT_EXTREMES], scored[max(REPORT_EXTREMES, len(scored) - REPORT_EXTREMES) :]
    rows = _label_rows(best + worst)
    lines = [
        f"{title}: the {len(best)} best and {len(worst)} worst of {len(entries)} labels by the mean of I->T and "
        'T->I (all of them under "per_label" in metrics.json)',
        *rows[: len(best) + 1],
        *(["  ...", *rows[len(best) + 1 :]] if worst else []),
    ]
    no_query = len(entries) - len(scored)
    if no_query:
        lines.append(f"  ({no_query} label(s) carried by no query have no MAP)")
    return lines


def report(metrics: dict[str, Any], run_dir: Path) -> str:
    """What `cmhash train` prints: `summary_line`'s MAPs and chance MAP, the per-label MAPs
    (`per_label_lines`), the collapse and data warnings as "WARNING:" lines, and where the
    P-R curves are (one pr_curve.png per fold for a k-fold run)."""
    warning = collapse_warning(metrics)
    lines = [
        *_map_lines(metrics),
        *per_label_lines(metrics),
        *([warning] if warning else []),
        *(f"WARNING: {w}" for w in metrics.get("warnings", [])),
    ]
    run_dir = Path(run_dir)
    folds = metrics.get("fold_dirs")
    if folds:
        curves = [run_dir / folds[0] / "pr_curve.png", run_dir / folds[-1] / "pr_curve.png"]
        lines.append(f"P-R curves, one per fold: {curves[0]} ... {curves[1]}")
    else:
        lines.append(f"P-R curve: {run_dir / 'pr_curve.png'}")
    return "\n".join(lines)

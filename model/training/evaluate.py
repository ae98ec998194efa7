"""Evaluation of a trained hasher: codes of the query and retrieval sets in both modalities,
MAP (whole ranking and MAP@50), precision@k, hash-lookup P-R curves, and the run's files."""

from __future__ import annotations

import json
from pathlib import Path

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


def encode_codes(model: CrossModalHasher, image: torch.Tensor | PixelImages, text: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """{-1,+1} int8 codes of image inputs and text feature rows: sgn of the hash representation."""
    from model.training.train import encode_rows

    img = sign_codes(encode_rows(model, image, "image")).numpy().astype(np.int8)
    txt = sign_codes(encode_rows(model, text, "text")).numpy().astype(np.int8)
    return img, txt


def direction_metrics(query: np.ndarray, retrieval: np.ndarray, q_labels: np.ndarray, r_labels: np.ndarray) -> dict:
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


def evaluate_codes(codes: dict[str, np.ndarray]) -> dict:
    """Both directions over a `codes.npz`-style dict: I->T ranks retrieval texts by image
    queries, T->I ranks retrieval images by text queries."""
    q_l, r_l = codes["query_labels"], codes["retrieval_labels"]
    return {
        "variants": {"map": map_variant_name(None), f"map@{MAP_TOP_K}": map_variant_name(MAP_TOP_K)},
        "relevance": "query and item share at least one label",
        "n_query": int(len(q_l)),
        "n_retrieval": int(len(r_l)),
        "i2t": direction_metrics(codes["query_image_codes"], codes["retrieval_text_codes"], q_l, r_l),
        "t2i": direction_metrics(codes["query_text_codes"], codes["retrieval_image_codes"], q_l, r_l),
    }


def split_codes(model: CrossModalHasher, inputs: PreparedInputs, query_rows: np.ndarray, retrieval_rows: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays of `codes.npz` for a query/retrieval split of the prepared inputs (images go
    through the model's backbone when it has one, i.e. when it was fine-tuned)."""
    out: dict[str, np.ndarray] = {}
    for part, rows in (("query", query_rows), ("retrieval", retrieval_rows)):
        r = torch.from_numpy(rows)
        image = inputs.image[r]
        if model.image_backbone is not None:
            assert inputs.pixels is not None
            image = inputs.pixels.subset(rows)
        out[f"{part}_image_codes"], out[f"{part}_text_codes"] = encode_codes(model, image, inputs.text[r])
        out[f"{part}_labels"] = inputs.labels[r].numpy().astype(np.uint8)
    return out


def write_evaluation(run_dir: Path, codes: dict[str, np.ndarray], title: str) -> dict:
    """Write codes.npz, metrics.json and pr_curve.png into `run_dir`; return the metrics."""
    run_dir = Path(run_dir)
    np.savez_compressed(run_dir / "codes.npz", **codes)
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


def summary_line(metrics: dict) -> str:
    """One printable line with both directions and the MAP variants named."""
    k = f"map@{MAP_TOP_K}"
    return (
        f"I->T MAP {metrics['i2t']['map']:.4f}  T->I MAP {metrics['t2i']['map']:.4f}  [{metrics['variants']['map']}]\n"
        f"I->T MAP@{MAP_TOP_K} {metrics['i2t'][k]:.4f}  T->I MAP@{MAP_TOP_K} {metrics['t2i'][k]:.4f}  [{metrics['variants'][k]}]"
    )

"""Figures of retrieval quality, written as PNG files with matplotlib's Agg backend (no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np


def plot_pr_curves(curves: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """Write a PNG of named precision-recall curves (e.g. "I->T", "T->I").

    Each curve is a `model.training.metrics.precision_recall_by_radius` result: pooled "precision"
    against "recall", one marker per Hamming radius; radii where precision is undefined (NaN:
    nothing retrieved) are left out. A curve that also holds "precision_at_k" (the dict of
    `model.training.metrics.precision_at_k`) adds its precision@k to a second panel.
    """
    if not curves:
        raise ValueError("no curves to plot")
    with_pk = {name: c["precision_at_k"] for name, c in curves.items() if c.get("precision_at_k")}
    fig, axes = plt.subplots(1, 2 if with_pk else 1, figsize=(11 if with_pk else 6, 4.8), squeeze=False)
    pr_ax = axes[0, 0]
    for name, curve in curves.items():
        precision = np.asarray(curve["precision"], dtype=np.float64)
        recall = np.asarray(curve["recall"], dtype=np.float64)
        keep = np.isfinite(precision) & np.isfinite(recall)
        pr_ax.plot(recall[keep], precision[keep], marker="o", markersize=3, label=name)
    pr_ax.set(xlabel="recall", ylabel="precision", title="P-R by Hamming radius", xlim=(0, 1.02), ylim=(0, 1.02))
    pr_ax.grid(True, alpha=0.4)
    pr_ax.legend()
    if with_pk:
        pk_ax = axes[0, 1]
        for name, pk in with_pk.items():
            ks = sorted(pk)
            pk_ax.plot(ks, [pk[k] for k in ks], marker="s", markersize=3, label=name)
        pk_ax.set(xlabel="k (top of the Hamming ranking)", ylabel="precision@k", title="precision@k", ylim=(0, 1.02))
        pk_ax.grid(True, alpha=0.4)
        pk_ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)

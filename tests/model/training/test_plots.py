"""The P-R figure is a real PNG of sensible size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from model.training.metrics import precision_at_k, precision_recall_by_radius
from model.training.plots import plot_pr_curves


def _curve(seed: int, with_pk: bool) -> dict:
    rng = np.random.default_rng(seed)
    q = np.where(rng.random((20, 16)) < 0.5, -1, 1)
    r = np.where(rng.random((60, 16)) < 0.5, -1, 1)
    ql = (rng.random((20, 3)) < 0.4).astype(np.uint8)
    rl = (rng.random((60, 3)) < 0.4).astype(np.uint8)
    curve: dict = dict(precision_recall_by_radius(q, r, ql, rl))
    if with_pk:
        curve["precision_at_k"] = precision_at_k(q, r, ql, rl, ks=[1, 5, 10, 50])
    return curve


def test_plot_writes_png(tmp_path: Path) -> None:
    for with_pk in (False, True):
        path = tmp_path / f"nested/pr_{with_pk}.png"
        curves = {"I->T": _curve(0, with_pk), "T->I": _curve(1, with_pk)}
        assert np.isnan(curves["I->T"]["precision"]).any()  # undefined radii are skipped, not fatal
        plot_pr_curves(curves, path, title="test curves")
        assert path.stat().st_size > 5_000
        with Image.open(path) as image:
            assert image.format == "PNG"
            width, height = image.size
            image.verify()
        assert width >= 400 and height >= 300
        if with_pk:
            assert width > height  # two panels side by side

"""Session fixtures shared across test modules: the tiny synthetic manifest and one small
Bi_NCMH run trained on it (pixels through the real EfficientNet-Lite0, 16 bits)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_data import write_manifest

TINY_BITS = 16


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory) -> Path:
    """The tiny dataset's manifest (40 items, 4 classes), written once per session."""
    return write_manifest(tmp_path_factory.mktemp("tiny_dataset"))


@pytest.fixture(scope="session")
def tiny_run(tiny_manifest, tmp_path_factory) -> Path:
    """A trained run directory: Bi_NCMH, 16 bits, hidden 64, 15 epochs on the tiny manifest."""
    from model.config import TrainConfig
    from model.run import train_run

    out = tmp_path_factory.mktemp("tiny_runs") / "bi_ncmh16"
    cfg = TrainConfig(
        dataset="manifest", data=tiny_manifest, out=out, method="bi_ncmh", bits=TINY_BITS,
        epochs=15, hidden=[64], cache_dir=tmp_path_factory.mktemp("tiny_cache"), device="cpu",
    )
    train_run(cfg, progress=False)
    return out

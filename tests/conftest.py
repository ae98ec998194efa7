"""Session fixtures shared across test modules: the tiny synthetic manifest and one small
Bi_NCMH run trained on it (pixels through the real EfficientNet-Lite0, 16 bits)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_data import write_manifest, write_wikipedia_miniature

TINY_BITS = 16

# `make test-fast` runs `-m "not slow"`: no training, no subprocess servers, no browser, no Milvus.
# A test is slow when it needs a trained model (any of these fixtures, directly or through
# another fixture), drives a browser, or sits in a module that starts servers or Milvus.
TRAINING_FIXTURES = {
    "tiny_run",
    "tiny_model_dir",
    "tiny_features_run",
    "tiny_features_model_dir",
    "minilm_run",
    "trained",
}
SLOW_MODULES = {
    "test_uvicorn.py",
    "test_faults.py",
    "test_timeouts.py",
    "test_milvus_store.py",
    "test_train.py",
    "test_backbones.py",
    "test_features.py",
    "test_disk_full.py",
    "test_cli.py",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the slow tests (see TRAINING_FIXTURES and SLOW_MODULES)."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & TRAINING_FIXTURES or item.path.name in SLOW_MODULES or item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory) -> Path:
    """The tiny dataset's manifest (40 items, 4 classes), written once per session."""
    return write_manifest(tmp_path_factory.mktemp("tiny_dataset"))


def train_tiny(tmp_path_factory: pytest.TempPathFactory, name: str, **fields: object) -> Path:
    """A Bi_NCMH run of TINY_BITS bits on the CPU, trained once into a session folder."""
    from model.training.config import TrainConfig
    from model.training.run import train_run

    out = tmp_path_factory.mktemp("tiny_runs") / name
    cfg = TrainConfig(
        out=out,
        method="bi_ncmh",
        bits=TINY_BITS,
        device="cpu",  # type: ignore[arg-type]
        cache_dir=tmp_path_factory.mktemp(f"{name}_cache"),
        **fields,
    )
    train_run(cfg, progress=False)
    return out


def export_tiny(tmp_path_factory: pytest.TempPathFactory, run: Path) -> Path:
    """`run` exported once with model.training.export (image.onnx, text.onnx, model.json)."""
    from model.training.export import export_run

    out = tmp_path_factory.mktemp("tiny_models") / run.name
    export_run(run, out)
    return out


@pytest.fixture(scope="session")
def tiny_run(tiny_manifest, tmp_path_factory) -> Path:
    """A trained run directory: Bi_NCMH, 16 bits, hidden 64, 15 epochs on the tiny manifest."""
    return train_tiny(tmp_path_factory, "bi_ncmh16", dataset="manifest", data=tiny_manifest, epochs=15, hidden=[64])


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_run, tmp_path_factory) -> Path:
    """tiny_run exported (pixels through EfficientNet-Lite0, a bag of words)."""
    return export_tiny(tmp_path_factory, tiny_run)


@pytest.fixture(scope="session")
def tiny_features_run(tmp_path_factory) -> Path:
    """A trained run on feature vectors only (a Wikipedia miniature with LDA text): Bi_NCMH,
    16 bits, hidden 32, 10 epochs."""
    data = write_wikipedia_miniature(tmp_path_factory.mktemp("tiny_wikipedia"))
    return train_tiny(tmp_path_factory, "features16", dataset="wikipedia", data=data, epochs=10, hidden=[32])


@pytest.fixture(scope="session")
def tiny_features_model_dir(tiny_features_run, tmp_path_factory) -> Path:
    """tiny_features_run exported: "features" inputs on both sides."""
    return export_tiny(tmp_path_factory, tiny_features_run)

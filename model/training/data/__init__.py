"""Dataset loaders behind one entry point, and the default query/retrieval/train split sizes."""

from __future__ import annotations

from pathlib import Path

from model.runtime.errors import DataError
from model.training.config import DatasetName
from model.training.data.base import (
    CrossModalDataset,
    Split,
    carve_validation,
    make_split,
)
from model.training.data.manifest import load_manifest
from model.training.data.mirflickr import load_mirflickr
from model.training.data.wikipedia import load_wikipedia

__all__ = [
    "CrossModalDataset",
    "DataError",
    "Split",
    "carve_validation",
    "default_split_sizes",
    "load_dataset",
    "make_split",
    "resolve_split",
]


def load_dataset(name: DatasetName, path: Path, *, text_features: str = "lda") -> CrossModalDataset:
    """Load dataset `name` from `path` (a folder; the .jsonl file for a manifest).
    `text_features` picks Wikipedia's text input ("lda", "tfidf", or "raw": the articles as
    `texts`, no feature vectors); other datasets have a single text input and ignore it."""
    path = Path(path)
    if name == "wikipedia":
        return load_wikipedia(path, text_features=text_features)  # type: ignore[arg-type]
    if name == "mirflickr":
        return load_mirflickr(path)
    if name == "manifest":
        return load_manifest(path)
    raise DataError(f"unknown dataset {name!r}: expected wikipedia, mirflickr or manifest")


def default_split_sizes(ds: CrossModalDataset) -> tuple[int, int | None]:
    """(query size, training size; None = the whole retrieval set) of the usual protocol:
    Wikipedia 693 queries; MIRFLICKR 2,000 queries and 10,000 training items on the full
    set, 100 queries on a small sample; a manifest a tenth of its items as queries."""
    n = len(ds)
    if ds.name == "wikipedia":
        return 693, None
    if ds.name == "mirflickr":
        return (2000, 10000) if n >= 10000 else (100, None)
    return max(1, n // 10), None


def resolve_split(ds: CrossModalDataset, query_size: int | None, train_size: int | None, seed: int) -> Split:
    """The dataset's preset split when it has one and no size was asked for, else a seeded
    random split with the missing sizes taken from `default_split_sizes`."""
    if ds.preset_split is not None and query_size is None and train_size is None:
        return ds.preset_split
    default_query, default_train = default_split_sizes(ds)
    return make_split(
        len(ds),
        default_query if query_size is None else query_size,
        default_train if train_size is None else train_size,
        seed,
    )

"""The one dataset interface every loader returns, and the seeded query/retrieval/train split."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model.runtime.errors import DataError


@dataclass
class CrossModalDataset:
    """n paired items: an image input, a text input and a multi-hot label vector per item.

    Exactly one image input is set: `image_features` (n x d float32, e.g. Wikipedia SIFT)
    or `image_paths` (n files decoded by the image encoder). The text input is
    `text_features` (n x d float32: LDA, tf-idf, tag bag-of-words) and/or `texts` (raw
    strings, turned into a bag of words over a training vocabulary by `model.runtime.text`).
    """

    name: str  # dataset kind, e.g. "wikipedia", "mirflickr", "manifest"
    ids: list[str]  # one stable string id per item
    labels: np.ndarray  # n x K multi-hot, uint8
    label_names: list[str]  # K names in label column order
    image_features: np.ndarray | None = None  # n x d float32 image feature vectors
    image_paths: list[Path] | None = None  # n image files
    text_features: np.ndarray | None = None  # n x d float32 text feature vectors
    texts: list[str] | None = None  # n raw texts (captions, space-joined tags)
    vocabulary: list[str] | None = None  # words of the text_features columns, when known
    preset_split: Split | None = None  # the dataset's own split (official or from a manifest)
    info: dict[str, Any] = field(default_factory=dict)  # free-form provenance (files read, feature kind)

    def __post_init__(self) -> None:
        n = len(self.ids)
        if (self.image_features is None) == (self.image_paths is None):
            raise DataError(f"{self.name}: exactly one of image_features / image_paths must be set")
        if self.text_features is None and self.texts is None:
            raise DataError(f"{self.name}: no text input (text_features or texts)")
        sizes = {
            "labels": len(self.labels),
            "image_features": None if self.image_features is None else len(self.image_features),
            "image_paths": None if self.image_paths is None else len(self.image_paths),
            "text_features": None if self.text_features is None else len(self.text_features),
            "texts": None if self.texts is None else len(self.texts),
        }
        bad = {k: v for k, v in sizes.items() if v is not None and v != n}
        if bad:
            raise DataError(f"{self.name}: {n} ids but sizes {bad}")
        if self.labels.ndim != 2 or self.labels.shape[1] != len(self.label_names):
            raise DataError(
                f"{self.name}: labels shape {self.labels.shape} does not match {len(self.label_names)} label names"
            )

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Split:
    """Row indices of the query, retrieval and training sets (train may overlap retrieval)."""

    query: np.ndarray  # int64 row indices of the query set
    retrieval: np.ndarray  # int64 row indices of the retrieval (database) set
    train: np.ndarray  # int64 row indices of the training set
    seed: int | None = None  # seed that drew it; None for a preset split

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form (lists of ints)."""
        return {
            "seed": self.seed,
            "query": self.query.tolist(),
            "retrieval": self.retrieval.tolist(),
            "train": self.train.tolist(),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Split:
        """Inverse of `to_json`."""
        return cls(
            query=np.asarray(obj["query"], dtype=np.int64),
            retrieval=np.asarray(obj["retrieval"], dtype=np.int64),
            train=np.asarray(obj["train"], dtype=np.int64),
            seed=obj.get("seed"),
        )

    def save(self, path: Path) -> None:
        """Write the split as JSON so a run can be evaluated and reproduced later."""
        Path(path).write_text(json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: Path) -> Split:
        """Read a split written by `save`."""
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"cannot read split file {path}: {exc}") from exc


def make_split(n: int, query_size: int, train_size: int | None, seed: int) -> Split:
    """Seeded split of n items: `query_size` queries, the rest retrieval, and `train_size`
    training items drawn from the retrieval set (all of it when None or larger)."""
    if query_size <= 0 or query_size >= n:
        raise DataError(f"query size {query_size} must be in [1, {n - 1}] for {n} items")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    query = np.sort(perm[:query_size])
    retrieval = np.sort(perm[query_size:])
    if train_size is None or train_size >= len(retrieval):
        train = retrieval.copy()
    else:
        train = np.sort(rng.choice(retrieval, size=train_size, replace=False))
    return Split(
        query=query.astype(np.int64), retrieval=retrieval.astype(np.int64), train=train.astype(np.int64), seed=seed
    )


def make_folds(n: int, k: int, seed: int) -> list[Split]:
    """K-fold evaluation splits of n items: a seeded permutation cut into k near-equal folds;
    fold i queries its own rows against (and trains on) all the other rows, so every item is
    a query exactly once across the folds and never a training or retrieval row of its fold."""
    if k < 2 or k > n:
        raise DataError(f"--folds {k} must be in [2, {n}] for {n} items")
    perm = np.random.default_rng(seed).permutation(n)
    parts = np.array_split(perm, k)
    splits = []
    for i in range(k):
        query = np.sort(parts[i]).astype(np.int64)
        rest = np.sort(np.concatenate([parts[j] for j in range(k) if j != i])).astype(np.int64)
        splits.append(Split(query=query, retrieval=rest, train=rest.copy(), seed=seed))
    return splits


def carve_validation(train: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split training rows into (fit, validation) for hyper-parameter selection, so that
    tuning never looks at the query set: both parts are subsets of `train` (nested tuning
    inside one evaluation split's training rows)."""
    rng = np.random.default_rng(seed + 7919)
    perm = rng.permutation(train)
    n_val = max(1, round(len(train) * fraction))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def read_mat(path: Path, variables: list[str] | None = None) -> dict[str, np.ndarray]:
    """The variables of a MATLAB v4-v7 .mat file (all, or the named ones), with a DataError
    naming the file when it is missing, corrupt or a v7.3 (HDF5) file scipy cannot read."""
    import scipy.io

    try:
        data = scipy.io.loadmat(path, variable_names=variables)
    except NotImplementedError as exc:
        raise DataError(
            f"{path} is a MATLAB v7.3 (HDF5) file, which scipy cannot read: re-save it "
            f"in MATLAB with save(..., '-v7') (variables under 2 GB) or export the arrays"
        ) from exc
    except Exception as exc:  # scipy raises IndexError, ValueError, OSError... on bad bytes
        raise DataError(f"cannot read .mat file {path}: {type(exc).__name__}: {exc}") from exc
    return {k: v for k, v in data.items() if not k.startswith("__")}

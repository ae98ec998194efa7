"""A user's own image-text collection described by a JSONL manifest, one item per line:

    {"id": "a1", "image": "img/a1.jpg", "text": "a dog on a beach", "labels": ["dog", "beach"],
     "split": "query"}

`id` defaults to the line number; `image` is relative to the manifest file; `split` is
optional but, when one item has it, all must: "query", "retrieval" or "train+retrieval".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from model.runtime.errors import DataError
from model.runtime.jsonl import read_jsonl
from model.training.data.base import CrossModalDataset, Split

SPLIT_VALUES = ("query", "retrieval", "train+retrieval")


def _field(item: dict[str, Any], key: str, kind: type, where: str) -> Any:
    """`item[key]`, required to exist and be of type `kind`."""
    if key not in item:
        raise DataError(f"{where}: missing field {key!r}")
    if not isinstance(item[key], kind):
        raise DataError(f"{where}: field {key!r} must be a {kind.__name__}, got {item[key]!r}")
    return item[key]


def load_manifest(path: Path) -> CrossModalDataset:
    """Items of a JSONL manifest with their raw texts (the trainer builds the bag of words on
    the training texts), labels over the sorted union of label names, and the manifest's own
    split when it gives one."""
    path = Path(path)
    records = read_jsonl(path)
    ids: list[str] = []
    images: list[Path] = []
    texts: list[str] = []
    label_lists: list[list[str]] = []
    splits: list[str | None] = []
    seen: dict[str, int] = {}
    for lineno, item in records:
        where = f"{path}:{lineno}"
        raw_id = item.get("id", lineno)
        if not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool):
            raise DataError(f"{where}: field 'id' must be a string, got {raw_id!r}")
        item_id = str(raw_id)
        if item_id in seen:
            raise DataError(f"{where}: duplicate id {item_id!r} (first on line {seen[item_id]})")
        seen[item_id] = lineno
        image = path.parent / _field(item, "image", str, where)
        if not image.is_file():
            raise DataError(f"{where}: image file not found: {image}")
        labels = _field(item, "labels", list, where)
        if not all(isinstance(name, str) for name in labels):
            raise DataError(f"{where}: 'labels' must be a list of strings, got {labels!r}")
        split = item.get("split")
        if split is not None and split not in SPLIT_VALUES:
            raise DataError(f"{where}: split must be one of {list(SPLIT_VALUES)}, got {split!r}")
        ids.append(item_id)
        images.append(image)
        texts.append(_field(item, "text", str, where))
        label_lists.append(labels)
        splits.append(split)
    if not ids:
        raise DataError(f"manifest {path} has no items")
    label_names = sorted({name for names in label_lists for name in names})
    column = {name: j for j, name in enumerate(label_names)}
    label_matrix = np.zeros((len(ids), len(label_names)), dtype=np.uint8)
    for row, names in enumerate(label_lists):
        label_matrix[row, [column[name] for name in names]] = 1
    return CrossModalDataset(
        name="manifest",
        ids=ids,
        labels=label_matrix,
        label_names=label_names,
        image_paths=images,
        texts=texts,
        preset_split=_preset_split(path, splits, [seen[i] for i in ids]),
        info={"manifest": str(path)},
    )


def _preset_split(path: Path, splits: list[str | None], linenos: list[int]) -> Split | None:
    """The manifest's split (query; retrieval = retrieval + train+retrieval; train =
    train+retrieval), None when no item names one; all or none of the items must."""
    if all(s is None for s in splits):
        return None
    for split, lineno in zip(splits, linenos):
        if split is None:
            raise DataError(f"{path}:{lineno}: missing field 'split' (other items have one, so all must)")
    rows = {value: np.array([i for i, s in enumerate(splits) if s == value], dtype=np.int64) for value in SPLIT_VALUES}
    if not len(rows["query"]) or not len(rows["train+retrieval"]):
        raise DataError(f"{path}: the split needs at least one 'query' and one 'train+retrieval' item")
    return Split(
        query=rows["query"],
        retrieval=np.sort(np.concatenate([rows["retrieval"], rows["train+retrieval"]])),
        train=rows["train+retrieval"],
        seed=None,
    )

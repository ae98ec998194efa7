"""A dataset's items written as `cmhash index` inputs, so a trained model's own data can be
indexed and searched."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from model.runtime.errors import DataError
from model.training.data.base import CrossModalDataset


def write_dataset_sources(ds: CrossModalDataset, out: Path) -> tuple[Path, Path | None]:
    """Write a dataset's items as gallery inputs: ``images.jsonl`` (id, image path, labels and
    text) and ``texts.jsonl`` (id, text, labels; items without text left out). Returns the
    two paths (texts None when the dataset has no raw texts or no image files)."""
    if ds.image_paths is None:
        raise DataError(f"{ds.name}: the dataset gives image feature vectors, not image files")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = [[ds.label_names[j] for j in np.flatnonzero(row)] for row in ds.labels]
    texts = ds.texts if ds.texts is not None else [None] * len(ds)
    images = out / "images.jsonl"
    with open(images, "w", encoding="utf-8") as f:
        for item_id, path, labels, text in zip(ds.ids, ds.image_paths, names, texts):
            row = {"id": item_id, "image": str(Path(path).resolve()), "labels": labels}
            f.write(json.dumps(row if text is None else {**row, "text": text}, ensure_ascii=False) + "\n")
    if ds.texts is None:
        return images, None
    text_file = out / "texts.jsonl"
    with open(text_file, "w", encoding="utf-8") as f:
        for item_id, labels, text in zip(ds.ids, names, ds.texts):
            if text.strip():
                f.write(json.dumps({"id": item_id, "text": text, "labels": labels}, ensure_ascii=False) + "\n")
    return images, text_file

"""JSONL manifest loader: items, labels, the optional split, and errors naming file and line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.runtime.errors import DataError
from model.training.data.manifest import load_manifest


def write_manifest(root: Path, items: list, name: str = "items.jsonl") -> Path:
    """Writes the images the items name (when they name one) and the manifest; str items are
    written as raw lines."""
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("image"), str):
            path = root / item["image"]
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4), (0, 90, 200)).save(path, format="JPEG")
    path = root / name
    path.write_text("\n".join(i if isinstance(i, str) else json.dumps(i, ensure_ascii=False) for i in items) + "\n")
    return path


ITEMS = [
    {"id": "a", "image": "img/a.jpg", "text": "A dog on the beach", "labels": ["dog", "beach"]},
    {"image": "img/b.jpg", "text": "城市的夜景", "labels": ["city"]},
    {"id": "c", "image": "c.jpg", "text": "", "labels": []},
]


def test_items_labels_and_paths(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, [*ITEMS[:2], "", *ITEMS[2:]])  # a blank line is skipped
    ds = load_manifest(path)
    assert ds.name == "manifest"
    assert ds.ids == ["a", "2", "c"]  # the missing id defaults to the line number
    assert ds.label_names == ["beach", "city", "dog"]
    np.testing.assert_array_equal(ds.labels, [[1, 0, 1], [0, 1, 0], [0, 0, 0]])
    assert ds.texts == ["A dog on the beach", "城市的夜景", ""]
    assert ds.image_paths == [tmp_path / "img/a.jpg", tmp_path / "img/b.jpg", tmp_path / "c.jpg"]
    assert ds.text_features is None and ds.image_features is None and ds.preset_split is None


def test_split_from_manifest(tmp_path: Path) -> None:
    splits = ["train+retrieval", "query", "retrieval", "train+retrieval", "query"]
    items = [
        {"id": f"x{i}", "image": f"{i}.jpg", "text": "t", "labels": ["l"], "split": s} for i, s in enumerate(splits)
    ]
    split = load_manifest(write_manifest(tmp_path, items)).preset_split
    assert split is not None and split.seed is None
    np.testing.assert_array_equal(split.query, [1, 4])
    np.testing.assert_array_equal(split.retrieval, [0, 2, 3])
    np.testing.assert_array_equal(split.train, [0, 3])


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([ITEMS[0], '{"id": "b", "image": '], r"items.jsonl:2: invalid JSON"),
        ([ITEMS[0], {"id": "b", "image": "b.jpg", "labels": []}], r"items.jsonl:2: missing field 'text'"),
        ([ITEMS[0], {**ITEMS[1], "id": "a"}], r"items.jsonl:2: duplicate id 'a' \(first on line 1\)"),
        ([ITEMS[0], {**ITEMS[1], "labels": "city"}], r"items.jsonl:2: field 'labels' must be a list"),
        ([{**ITEMS[0], "split": "query"}, {**ITEMS[1], "split": "test"}], r"items.jsonl:2: split must be one of"),
        ([{**ITEMS[0], "split": "query"}, ITEMS[1]], r"items.jsonl:2: missing field 'split'"),
        ([{**ITEMS[0], "split": "query"}, {**ITEMS[1], "split": "retrieval"}], r"items.jsonl: the split needs"),
        (["[1, 2]"], r"items.jsonl:1: expected a JSON object"),
        ([], r"items.jsonl has no items"),
    ],
)
def test_errors_name_file_and_line(tmp_path: Path, lines: list, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_manifest(write_manifest(tmp_path, lines))


def test_missing_image_names_line_and_file(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, ITEMS)
    (tmp_path / "img" / "b.jpg").unlink()
    with pytest.raises(DataError, match=r"items.jsonl:2: image file not found: .*img/b.jpg"):
        load_manifest(path)


def test_missing_manifest_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nothere.jsonl"):
        load_manifest(tmp_path / "nothere.jsonl")

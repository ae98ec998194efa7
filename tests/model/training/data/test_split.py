"""Default split sizes per dataset, preset-vs-random split resolution, and `load_dataset`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import model.training.data as data
from model.runtime.errors import UserError
from model.training.config import shared_data_root
from model.training.data import (
    CrossModalDataset,
    DataError,
    Split,
    default_split_sizes,
    load_dataset,
    make_split,
    resolve_split,
)

# The same resolution as the code ($CMHASH_DATA_ROOT, else the default beside the repo).
SHARED = shared_data_root()


def dataset(name: str, n: int, preset: Split | None = None) -> CrossModalDataset:
    return CrossModalDataset(
        name=name,
        ids=[str(i) for i in range(n)],
        labels=np.zeros((n, 2), dtype=np.uint8),
        label_names=["a", "b"],
        image_features=np.zeros((n, 1), dtype=np.float32),
        text_features=np.zeros((n, 1), dtype=np.float32),
        preset_split=preset,
    )


def test_reexports() -> None:
    assert data.make_split is make_split and callable(data.carve_validation)
    assert issubclass(data.DataError, UserError)  # the CLI prints it on one line, exit 2


@pytest.mark.parametrize(
    ("name", "n", "expected"),
    [
        ("wikipedia", 2866, (693, None)),
        ("mirflickr", 20015, (2000, 10000)),
        ("mirflickr", 10000, (2000, 10000)),
        ("mirflickr", 730, (100, None)),
        ("manifest", 55, (5, None)),
        ("manifest", 7, (1, None)),
    ],
)
def test_default_split_sizes(name: str, n: int, expected: tuple) -> None:
    assert default_split_sizes(dataset(name, n)) == expected


def test_resolve_uses_preset_unless_a_size_is_given() -> None:
    preset = Split(query=np.array([3, 4]), retrieval=np.array([0, 1, 2]), train=np.array([0, 1]))
    ds = dataset("manifest", 30, preset)
    assert resolve_split(ds, None, None, seed=0) is preset
    split = resolve_split(ds, 6, None, seed=3)
    assert split.seed == 3 and len(split.query) == 6 and len(split.retrieval) == 24
    np.testing.assert_array_equal(split.train, split.retrieval)
    # a train size alone still draws a random split, with the default query size (30 // 10)
    split = resolve_split(ds, None, 10, seed=3)
    assert (len(split.query), len(split.retrieval), len(split.train)) == (3, 27, 10)
    assert set(split.train) <= set(split.retrieval) and not set(split.query) & set(split.retrieval)


def test_resolve_fills_mirflickr_defaults_and_is_seeded() -> None:
    ds = dataset("mirflickr", 12000)
    split = resolve_split(ds, None, None, seed=5)
    assert (len(split.query), len(split.retrieval), len(split.train)) == (2000, 10000, 10000)
    again = resolve_split(ds, None, None, seed=5)
    np.testing.assert_array_equal(split.query, again.query)
    assert not np.array_equal(split.query, resolve_split(ds, None, None, seed=6).query)


def test_load_dataset_dispatch_and_unknown_name(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4)).save(tmp_path / "a.jpg", format="JPEG")
    lines = [{"image": "a.jpg", "text": f"t{i}", "labels": ["x"]} for i in range(3)]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines))
    ds = load_dataset("manifest", manifest)
    assert ds.name == "manifest" and ds.ids == ["1", "2", "3"]
    with pytest.raises(DataError, match="unknown dataset 'coco'"):
        load_dataset("coco", tmp_path)  # type: ignore[arg-type]


@pytest.mark.shared_data
@pytest.mark.skipif(not SHARED.exists(), reason="shared data not available")
def test_real_default_splits() -> None:
    wiki = load_dataset("wikipedia", SHARED / "wikipedia", text_features="tfidf")
    split = resolve_split(wiki, None, None, seed=0)
    assert (len(split.query), len(split.retrieval), len(split.train)) == (693, 2173, 2173)
    flickr = load_dataset("mirflickr", SHARED / "mirflickr25k")
    split = resolve_split(flickr, None, None, seed=0)
    assert (len(split.query), len(split.retrieval), len(split.train)) == (100, 630, 630)

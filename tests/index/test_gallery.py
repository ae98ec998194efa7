"""Gallery directories: the sidecar, reopening, and refusing codes of another model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from index.gallery import Gallery, GalleryInfo, GalleryMismatchError


def make(path: Path, bits: int = 32, checksum: str = "a" * 64, kind: str = "image") -> Gallery:
    return Gallery.create(path, GalleryInfo(kind=kind, bits=bits, model_checksum=checksum, model_method="bi_ncmh"))


def test_create_add_save_reopen(tmp_path: Path):
    g = make(tmp_path / "g")
    codes = np.arange(12, dtype=np.uint8).reshape(3, 4)
    g.store.add(["a", "b", "c"], codes, [{"path": "a.jpg"}, None, {"n": 3}])
    g.save()
    info = json.loads((tmp_path / "g" / "gallery.json").read_text())
    assert (info["kind"], info["bits"], info["backend"], info["model_checksum"]) == ("image", 32, "faiss", "a" * 64)
    again = Gallery.open(tmp_path / "g", model_checksum="a" * 64, bits=32, kind="image")
    assert again.store.ids() == ["a", "b", "c"] and again.store.get("c")["metadata"] == {"n": 3}
    np.testing.assert_array_equal(again.store.get("b")["code"], codes[1])


def test_a_new_gallery_is_loadable_before_any_add(tmp_path: Path):
    make(tmp_path / "g")
    assert len(Gallery.open(tmp_path / "g").store) == 0


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"model_checksum": "b" * 64}, "was built with model aaaaaaaaaaaa .*rebuild"),
        ({"bits": 64}, "holds 32-bit codes"),
        ({"kind": "text"}, "is a image gallery, not a text gallery"),
    ],
)
def test_open_refuses_another_model(tmp_path: Path, kw, match):
    make(tmp_path / "g")
    with pytest.raises(GalleryMismatchError, match=match):
        Gallery.open(tmp_path / "g", **kw)


def test_create_refuses_an_existing_gallery_and_open_a_non_gallery(tmp_path: Path):
    make(tmp_path / "g")
    with pytest.raises(FileExistsError):
        make(tmp_path / "g")
    with pytest.raises(FileNotFoundError, match="not a gallery"):
        Gallery.open(tmp_path)

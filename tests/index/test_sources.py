"""Listing gallery items: folder ids, manifest fields, text ids, rejected entries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from index.sources import image_listing, text_id, text_listing
from model.runtime.errors import DataError


def test_folder_ids_are_relative_paths_without_extension(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ("b.jpg", "a.png", "sub/c.jpeg", "notes.txt", ".DS_Store", ".hidden/x.jpg"):
        (tmp_path / name).write_bytes(b"x")
    listing = image_listing(tmp_path)
    assert [i.id for i in listing.items] == ["a", "b", "notes", "sub/c"]
    assert listing.items[3].source == tmp_path / "sub" / "c.jpeg"
    assert listing.items[3].metadata == {"path": str((tmp_path / "sub" / "c.jpeg").resolve())}
    assert listing.rejected == []


def test_folder_duplicate_ids_are_rejected_not_merged(tmp_path: Path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "a.png").write_bytes(b"x")
    listing = image_listing(tmp_path)
    assert [i.id for i in listing.items] == ["a"]
    assert listing.rejected == [(str(tmp_path / "a.png"), "duplicate id 'a'")]


def test_manifest_paths_metadata_and_bad_lines(tmp_path: Path):
    (tmp_path / "img").mkdir()
    lines = [
        {"id": "x1", "image": "img/1.jpg", "text": "a dog", "labels": ["dog"]},
        {"id": "x2"},
        {"id": "x1", "image": "img/2.jpg"},
        {"id": "x3", "image": "img/3.jpg"},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    listing = image_listing(manifest)
    assert [i.id for i in listing.items] == ["x1", "x3"]
    assert listing.items[0].source == (tmp_path / "img" / "1.jpg").resolve()
    assert listing.items[0].metadata == {
        "path": str((tmp_path / "img/1.jpg").resolve()),
        "text": "a dog",
        "labels": ["dog"],
    }
    assert [r for _, r in listing.rejected] == ["needs a string 'id' and 'image'", "duplicate id 'x1'"]
    assert listing.rejected[0][0] == f"{manifest}:2"


def test_malformed_manifest_names_the_line(tmp_path: Path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "image": "a.jpg"}\n{not json\n')
    with pytest.raises(DataError, match=r"m.jsonl:2"):
        image_listing(manifest)
    with pytest.raises(DataError, match="no such"):
        image_listing(tmp_path / "missing")


def test_plain_text_ids_come_from_content(tmp_path: Path):
    f = tmp_path / "t.txt"
    f.write_text("red square\n\n  blue circle \nred square\n")
    listing = text_listing(f)
    assert [i.source for i in listing.items] == ["red square", "blue circle"]
    assert [i.id for i in listing.items] == [text_id("red square"), text_id("blue circle")]
    assert text_id("red square") != text_id("red  square") and text_id("x").startswith("t-")
    assert listing.items[1].metadata == {"text": "blue circle"}
    assert listing.rejected == [(text_id("red square"), f"duplicate id {text_id('red square')!r}")]


def test_jsonl_texts_keep_ids_and_fields(tmp_path: Path):
    f = tmp_path / "t.jsonl"
    f.write_text(
        "\n".join(
            json.dumps(x)
            for x in [
                {"id": "c1", "text": "a cat", "labels": ["cat"]},
                {"text": "no id here"},
                {"id": "c3", "text": ""},
            ]
        )
    )
    listing = text_listing(f)
    assert [i.id for i in listing.items] == ["c1", text_id("no id here")]
    assert listing.items[0].metadata == {"text": "a cat", "labels": ["cat"]}
    assert listing.rejected == [(f"{f}:3", "needs a non-empty string 'text'")]

"""model.training.data.sources: a dataset written as gallery inputs reads back through the
index's own listings (the oracle) with the same ids, files, texts and labels."""

from __future__ import annotations

from pathlib import Path

from index.sources import image_listing, text_listing
from model.training.data import load_dataset
from model.training.data.sources import write_dataset_sources


def test_dataset_sources_round_trip_through_the_listings(tiny_manifest, tmp_path: Path):
    ds = load_dataset("manifest", tiny_manifest)
    images, texts = write_dataset_sources(ds, tmp_path / "src")
    img, txt = image_listing(images), text_listing(texts)
    assert [i.id for i in img.items] == [i.id for i in txt.items] == ds.ids
    for row, (a, b) in enumerate(zip(img.items, txt.items)):
        assert a.source == ds.image_paths[row].resolve()
        assert b.source == a.metadata["text"] == ds.texts[row]
        labels = [ds.label_names[j] for j in range(len(ds.label_names)) if ds.labels[row, j]]
        assert a.metadata["labels"] == b.metadata["labels"] == labels

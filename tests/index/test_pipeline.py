"""Batch indexing: corrupt and non-image files are skipped and reported, codes equal the
encoder's own, re-runs are incremental, an interruption keeps what was saved.

The encoder here is small and real: the shared image preprocessing at 8 x 8 and one bit per
pixel value sign (texts: one bit per character class), so codes depend on content and a
direct call is the oracle for what the gallery must hold."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from index.gallery import Gallery, GalleryInfo
from index.pipeline import index_items
from index.sources import image_listing, text_listing
from model.runtime.codes import hamming_distance_matrix
from model.runtime.image import ImagePreprocess, load_image, to_array
from tests.tiny_data import draw_item

BITS = 64


class PixelSignEncoder:
    """Codes from pixels: the 64 values of the first channel of an 8 x 8 preprocessed image."""

    bits = BITS
    checksum = "p" * 64

    def __init__(self, fail_after_batches: int | None = None) -> None:
        self.pre = ImagePreprocess(size=8)
        self.batches = 0
        self.fail_after_batches = fail_after_batches

    def preprocess_image(self, source: Path | bytes) -> np.ndarray:
        return to_array(load_image(source), self.pre)

    def encode_image_arrays(self, arrays: np.ndarray) -> np.ndarray:
        self.batches += 1
        if self.fail_after_batches is not None and self.batches > self.fail_after_batches:
            raise KeyboardInterrupt
        return np.packbits(arrays[:, 0].reshape(len(arrays), -1) >= 0, axis=1)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        feats = np.array([[(ord(t[i % len(t)]) >> (i % 7)) & 1 for i in range(BITS)] for t in texts], dtype=bool)
        return np.packbits(feats, axis=1)


def image_folder(root: Path, n: int, seed: int = 0, start: int = 0) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(start, start + n):
        p = root / f"im{i:03d}.jpg"
        draw_item(i % 4, rng).save(p, quality=90)
        paths.append(p)
    return paths


def add_bad_files(root: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buf, "JPEG")
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "readme.txt").write_text("not an image")


def new_gallery(path: Path, kind: str = "image") -> Gallery:
    return Gallery.create(path, GalleryInfo(kind=kind, bits=BITS, model_checksum=PixelSignEncoder.checksum))


@pytest.mark.parametrize("workers", [0, 3])
def test_folder_with_bad_files_is_indexed_and_bad_files_reported(tmp_path: Path, workers: int):
    paths = image_folder(tmp_path / "imgs", 23)
    add_bad_files(tmp_path / "imgs")
    enc = PixelSignEncoder()
    gallery = new_gallery(tmp_path / "g")
    report = index_items(
        gallery, image_listing(tmp_path / "imgs").items, enc, batch_size=5, workers=workers, progress=False
    )
    assert (report.listed, report.added, report.already_present) == (25, 23, 0)
    reasons = dict(report.skipped)
    assert set(reasons) == {str(tmp_path / "imgs" / "truncated.jpg"), str(tmp_path / "imgs" / "readme.txt")}
    assert all(r.startswith("not a decodable image") for r in reasons.values())
    assert "truncated" in reasons[str(tmp_path / "imgs" / "truncated.jpg")].lower()

    # the saved gallery holds exactly the encoder's codes for each file (direct call = oracle)
    loaded = Gallery.open(tmp_path / "g", model_checksum=enc.checksum, bits=BITS)
    oracle = enc.encode_image_arrays(np.stack([enc.preprocess_image(p) for p in paths]))
    assert loaded.store.ids() == [p.stem for p in paths]
    for p, code in zip(paths, oracle):
        item = loaded.store.get(p.stem)
        np.testing.assert_array_equal(item["code"], code)
        assert item["metadata"] == {"path": str(p.resolve())}
    # and searching it equals a brute-force scan
    _ids, d = loaded.store.search(oracle[:3], 5)
    dist = hamming_distance_matrix(oracle[:3], oracle)
    for j in range(3):
        np.testing.assert_array_equal(d[j], np.sort(dist[j])[:5])


def test_rerun_is_incremental_and_prune_and_remove(tmp_path: Path):
    image_folder(tmp_path / "imgs", 12)
    enc = PixelSignEncoder()
    gallery = new_gallery(tmp_path / "g")
    assert index_items(gallery, image_listing(tmp_path / "imgs").items, enc, progress=False).added == 12
    batches = enc.batches
    again = index_items(gallery, image_listing(tmp_path / "imgs").items, enc, progress=False)
    assert (again.added, again.already_present, enc.batches) == (0, 12, batches)  # nothing re-encoded
    image_folder(tmp_path / "imgs", 4, seed=1, start=12)
    more = index_items(gallery, image_listing(tmp_path / "imgs").items, enc, progress=False)
    assert (more.added, more.already_present, len(gallery.store)) == (4, 12, 16)


def test_interrupted_run_keeps_saved_batches_and_resumes(tmp_path: Path):
    paths = image_folder(tmp_path / "imgs", 30)
    gallery = new_gallery(tmp_path / "g")
    items = image_listing(tmp_path / "imgs").items
    with pytest.raises(KeyboardInterrupt):
        index_items(
            gallery,
            items,
            PixelSignEncoder(fail_after_batches=3),
            batch_size=4,
            workers=2,
            save_every_s=0.0,
            progress=False,
        )
    after_crash = Gallery.open(tmp_path / "g")
    assert after_crash.store.ids() == [p.stem for p in paths[:12]]  # three whole batches, nothing partial
    enc = PixelSignEncoder()
    resumed = index_items(after_crash, items, enc, batch_size=4, progress=False)
    assert (resumed.added, resumed.already_present) == (18, 12)
    oracle = enc.encode_image_arrays(np.stack([enc.preprocess_image(p) for p in paths]))
    final = Gallery.open(tmp_path / "g")
    got = np.stack([final.store.get(p.stem)["code"] for p in paths])
    np.testing.assert_array_equal(got, oracle)


def test_text_gallery(tmp_path: Path):
    f = tmp_path / "texts.txt"
    texts = ["red square", "blue stripes", "green circle", "yellow checks", "red circle"]
    f.write_text("\n".join(texts))
    enc = PixelSignEncoder()
    gallery = new_gallery(tmp_path / "g", kind="text")
    listing = text_listing(f)
    report = index_items(gallery, listing.items, enc, batch_size=2, progress=False)
    assert report.added == 5 and report.skipped == []
    for item, code in zip(listing.items, enc.encode_texts(texts)):
        stored = gallery.store.get(item.id)
        np.testing.assert_array_equal(stored["code"], code)
        assert stored["metadata"] == {"text": item.source}

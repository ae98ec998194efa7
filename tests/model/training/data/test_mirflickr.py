"""MIRFLICKR loaders on miniature versions of the three layouts, and on the real sample."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from model.runtime.errors import DataError
from model.runtime.text import BagOfWords
from model.training.config import shared_data_root
from model.training.data.mirflickr import (
    MIRFLICKR_CONCEPTS,
    load_mirflickr,
    load_mirflickr_image_folder,
    load_mirflickr_mat,
)

# The same resolution as the code ($CMHASH_DATA_ROOT, else the default beside the repo).
SHARED = shared_data_root()


def jpeg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 3), (200, 30, 30)).save(path, format="JPEG")


def mat_arrays(n: int = 6, k: int = 24, v: int = 5, d: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "LAll": (rng.random((n, k)) < 0.3).astype(np.uint8),
        "YAll": (rng.random((n, v)) < 0.4).astype(np.uint8),
        "IAll": rng.random((n, d)).astype(np.float32),
    }


# --- DCMH .mat layout ----------------------------------------------------------------------


def test_mat_layout_separate_files(tmp_path: Path) -> None:
    arrays = mat_arrays()
    for key in ("LAll", "YAll", "IAll"):
        scipy.io.savemat(tmp_path / f"MirFlickr25K-{key}.mat", {key: arrays[key]})
    (tmp_path / "tag_vocab.txt").write_text("sky\nsea\n東京\nnight\ndog\n", encoding="utf-8")
    ds = load_mirflickr_mat(tmp_path)
    assert ds.name == "mirflickr" and ds.ids == [str(i) for i in range(6)]
    np.testing.assert_array_equal(ds.labels, arrays["LAll"])
    np.testing.assert_array_equal(ds.text_features, arrays["YAll"])
    np.testing.assert_allclose(ds.image_features, arrays["IAll"])
    assert ds.text_features.dtype == np.float32 and ds.labels.dtype == np.uint8
    assert ds.label_names == MIRFLICKR_CONCEPTS
    vocab = ["sky", "sea", "東京", "night", "dog"]
    assert ds.vocabulary == vocab
    assert ds.texts == [" ".join(w for w, on in zip(vocab, row) if on) for row in arrays["YAll"]]
    np.testing.assert_array_equal(BagOfWords(vocab).transform(ds.texts), arrays["YAll"])


def test_mat_layout_single_file_skips_other_mats(tmp_path: Path) -> None:
    arrays = mat_arrays(k=3)
    scipy.io.savemat(tmp_path / "a_other.mat", {"X": np.ones((2, 2))})
    scipy.io.savemat(
        tmp_path / "b_flickr.mat", {"lall": arrays["LAll"], "YAll": arrays["YAll"], "IAll": arrays["IAll"]}
    )
    ds = load_mirflickr(tmp_path)
    assert ds.info["layout"] == "mat"
    np.testing.assert_array_equal(ds.labels, arrays["LAll"])
    assert ds.label_names == ["label_0", "label_1", "label_2"] and ds.texts is None
    assert load_mirflickr_mat(tmp_path / "b_flickr.mat").ids == ds.ids  # a .mat path works too


def test_mat_layout_rejects_raw_pixels(tmp_path: Path) -> None:
    arrays = mat_arrays(n=2)
    arrays["IAll"] = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    scipy.io.savemat(tmp_path / "flickr.mat", arrays)
    with pytest.raises(DataError, match="raw pixels.*flickr.mat|flickr.mat.*raw pixels"):
        load_mirflickr_mat(tmp_path)


def test_mat_layout_without_image_features(tmp_path: Path) -> None:
    arrays = mat_arrays()
    scipy.io.savemat(tmp_path / "x-lall.mat", {"LAll": arrays["LAll"]})
    scipy.io.savemat(tmp_path / "x-yall.mat", {"YAll": arrays["YAll"]})
    with pytest.raises(DataError, match="IAll"):
        load_mirflickr_mat(tmp_path)


def test_mat_layout_v73_and_corrupt_files_are_named(tmp_path: Path) -> None:
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116, b" ")
    (tmp_path / "mirflickr25k-iall.mat").write_bytes(header + bytes(8) + b"\x00\x02IM" + bytes(512))
    scipy.io.savemat(tmp_path / "mirflickr25k-lall.mat", {"LAll": np.ones((2, 24))})
    scipy.io.savemat(tmp_path / "mirflickr25k-yall.mat", {"YAll": np.ones((2, 5))})
    with pytest.raises(DataError, match=r"mirflickr25k-iall.mat is a MATLAB v7.3"):
        load_mirflickr_mat(tmp_path)
    (tmp_path / "mirflickr25k-iall.mat").write_bytes(b"garbage" * 50)
    with pytest.raises(DataError, match="mirflickr25k-iall.mat"):
        load_mirflickr_mat(tmp_path)


# --- image folder + rows.tsv layout --------------------------------------------------------

ROWS = [  # row, image_id, labels, raw tags
    (0, 11, "sky,water", "sunset,sky,sky,beach,rare"),
    (1, 12, "dog", "dog"),
    (2, 15, "sky", "clouds,sky"),
    (3, 20, "dog,water", "beach,dog,東京"),
    (4, 21, "water", "sea"),
]
VOCAB = ["sky", "dog", "beach", "sunset", "clouds", "東京"]
LABELS = ["dog", "sky", "water"]


def image_folder(root: Path, present: tuple[int, ...] = (11, 15, 20)) -> None:
    with (root / "rows.tsv").open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(["row", "image_id", "labels", "tags"])
        writer.writerows(ROWS)
    (root / "tag_vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    (root / "label_names.txt").write_text("\n".join(LABELS) + "\n")
    (root / "images").mkdir()
    for image_id in present:
        jpeg(root / "images" / f"im{image_id}.jpg")


def expected_rows(rows: list[int]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """BoW, labels and texts computed directly from ROWS."""
    bow = np.zeros((len(rows), len(VOCAB)), dtype=np.float32)
    labels = np.zeros((len(rows), len(LABELS)), dtype=np.uint8)
    texts = []
    for i, r in enumerate(rows):
        _, _, names, tags = ROWS[r]
        kept = []
        for tag in tags.split(","):
            if tag in VOCAB:
                bow[i, VOCAB.index(tag)] = 1
                if tag not in kept:
                    kept.append(tag)
        for name in names.split(","):
            labels[i, LABELS.index(name)] = 1
        texts.append(" ".join(kept))
    return bow, labels, texts


def test_image_folder_rebuilds_from_rows(tmp_path: Path) -> None:
    image_folder(tmp_path)
    ds = load_mirflickr(tmp_path)
    bow, labels, texts = expected_rows([0, 2, 3])
    assert ds.info["layout"] == "image_folder"
    assert ds.ids == ["11", "15", "20"]
    assert ds.image_paths == [tmp_path / "images" / f"im{i}.jpg" for i in (11, 15, 20)]
    np.testing.assert_array_equal(ds.text_features, bow)
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.texts == texts == ["sunset sky beach", "clouds sky", "beach dog 東京"]
    assert ds.vocabulary == VOCAB and ds.label_names == LABELS
    np.testing.assert_array_equal(BagOfWords(VOCAB).transform(ds.texts), bow)


def test_image_folder_takes_matrices_from_mat_files(tmp_path: Path) -> None:
    image_folder(tmp_path)
    rng = np.random.default_rng(2)
    lall = (rng.random((5, 3)) < 0.5).astype(np.uint8)
    yall = (rng.random((5, 6)) < 0.5).astype(np.uint8)
    scipy.io.savemat(tmp_path / "mirflickr25k-lall.mat", {"LAll": lall})
    scipy.io.savemat(tmp_path / "mirflickr25k-yall.mat", {"YAll": yall})
    ds = load_mirflickr_image_folder(tmp_path)
    np.testing.assert_array_equal(ds.labels, lall[[0, 2, 3]])
    np.testing.assert_array_equal(ds.text_features, yall[[0, 2, 3]])
    assert ds.info["text_features"] == "YAll"


def test_image_folder_errors_name_the_file(tmp_path: Path) -> None:
    image_folder(tmp_path, present=())
    with pytest.raises(DataError, match="rows.tsv"):
        load_mirflickr_image_folder(tmp_path)
    jpeg(tmp_path / "images" / "im11.jpg")
    (tmp_path / "tag_vocab.txt").unlink()
    with pytest.raises(DataError, match="tag_vocab.txt"):
        load_mirflickr_image_folder(tmp_path)


# --- official distribution layout ----------------------------------------------------------

COMMON_TAGS = [("sky", 900), ("beach", 300), ("dog", 120), ("clouds", 40)]  # BoW order = file order
ANNOTATIONS = {"water": [1, 4, 99], "animals": [4, 6], "sky": [1, 3, 6], "clouds": [5]}
TAGS = {1: ["sky", "holiday", "beach"], 2: ["dog"], 3: ["unknowntag"], 4: ["dog", "Dog2", "dog"], 6: ["clouds"]}


def official_tree(root: Path, beside: bool = False) -> None:
    """Images 1..6 under mirflickr/; meta/ and doc/ inside it (as unzipped) or beside it."""
    meta_base = root if beside else root / "mirflickr"
    for n in range(1, 7):
        jpeg(root / "mirflickr" / f"im{n}.jpg")
    (meta_base / "meta" / "tags").mkdir(parents=True)
    for n, tags in TAGS.items():
        (meta_base / "meta" / "tags" / f"tags{n}.txt").write_text("\r\n".join(tags) + "\r\n")
    (meta_base / "doc").mkdir()
    (meta_base / "doc" / "common_tags.txt").write_text("".join(f"{t} {c}\n" for t, c in COMMON_TAGS))
    ann = root if beside else root / "mirflickr25k_annotations_v080"
    ann.mkdir(exist_ok=True)
    for concept, ids in ANNOTATIONS.items():
        (ann / f"{concept}.txt").write_text("".join(f"{i}\n" for i in ids))
        (ann / f"{concept}_r1.txt").write_text("2\n")  # relevant-only subsets: ignored
    (ann / "README.txt").write_text("MIRFLICKR annotations, see the website\n")


@pytest.mark.parametrize("beside", [False, True])
def test_official_layout(tmp_path: Path, beside: bool) -> None:
    official_tree(tmp_path, beside=beside)
    ds = load_mirflickr(tmp_path)
    # image 2: no label; 3: no vocabulary tag; 5: no tag file -> dropped
    assert ds.info["layout"] == "official"
    assert ds.ids == ["1", "4", "6"]
    assert ds.label_names == ["animals", "clouds", "sky", "water"]
    np.testing.assert_array_equal(ds.labels, [[0, 0, 1, 1], [1, 0, 0, 1], [1, 0, 1, 0]])
    assert ds.vocabulary == ["sky", "beach", "dog", "clouds"]
    np.testing.assert_array_equal(ds.text_features, [[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    assert ds.texts == ["sky beach", "dog", "clouds"]
    assert ds.image_paths == [tmp_path / "mirflickr" / f"im{n}.jpg" for n in (1, 4, 6)]
    assert (ds.info["dropped_no_label"], ds.info["dropped_no_vocabulary_tag"]) == (1, 2)


def test_official_layout_bad_annotation_line(tmp_path: Path) -> None:
    official_tree(tmp_path)
    (tmp_path / "mirflickr25k_annotations_v080" / "sky.txt").write_text("1\nthree\n")
    with pytest.raises(DataError, match=r"sky.txt:2"):
        load_mirflickr(tmp_path)


def test_no_layout_found(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(DataError, match=r"rows.tsv.*common_tags.txt.*LAll"):
        load_mirflickr(tmp_path)


# --- the real 730-image sample -------------------------------------------------------------

REAL = SHARED / "mirflickr25k"


@pytest.mark.shared_data
@pytest.mark.skipif(not REAL.exists(), reason="shared data not available")
def test_real_image_folder_matches_rebuilt_bow(tmp_path: Path) -> None:
    ds = load_mirflickr(REAL)
    assert len(ds) == 730 and ds.text_features.shape == (730, 1386) and ds.labels.shape == (730, 24)
    with (REAL / "rows.tsv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    present = {p.name for p in (REAL / "images").iterdir()}
    assert ds.ids == [r["image_id"] for r in rows if f"im{r['image_id']}.jpg" in present]
    # The same folder without the .mat files: BoW and labels rebuilt from the raw tags.
    for name in ("rows.tsv", "tag_vocab.txt", "label_names.txt", "images"):
        (tmp_path / name).symlink_to(REAL / name)
    rebuilt = load_mirflickr(tmp_path)
    assert rebuilt.info["text_features"].startswith("rebuilt")
    np.testing.assert_array_equal(rebuilt.text_features, ds.text_features)
    np.testing.assert_array_equal(rebuilt.labels, ds.labels)
    # The serving text path (tokenize + BagOfWords over the tag vocabulary) gives YAll back.
    np.testing.assert_array_equal(BagOfWords(ds.vocabulary).transform(ds.texts), ds.text_features)
    assert (ds.labels.sum(1) > 0).all() and (ds.text_features.sum(1) > 0).all()

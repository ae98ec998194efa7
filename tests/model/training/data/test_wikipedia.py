"""Wikipedia loader on a hand-made miniature of the released files, and on the real data."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
import scipy.io

from model.runtime.errors import DataError
from model.training.config import shared_data_root
from model.training.data.wikipedia import WIKIPEDIA_CLASSES, load_wikipedia
from tests.tiny_data import wikipedia_article, write_wikipedia_miniature

# The same resolution as the code ($CMHASH_DATA_ROOT, else the default beside the repo).
SHARED = shared_data_root()

TRAIN = [("t-a", "i-a", 1), ("t-b", "i-b", 10), ("t-c", "i-c", 3), ("t-d", "i-d", 3), ("t-e", "i-e", 7)]
TEST = [("q-a", "j-a", 2), ("q-b", "j-b", 10), ("q-c", "j-c", 1)]


def write_lists(root: Path, train: list = TRAIN, test: list = TEST) -> None:
    for name, rows in (("trainset_txt_img_cat.list", train), ("testset_txt_img_cat.list", test)):
        (root / name).write_text("".join(f"{t}\t{i}\t{c}\n" for t, i, c in rows))


@pytest.fixture
def wiki(tmp_path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    mats = {
        "I_tr": rng.random((5, 128)),
        "I_te": rng.random((3, 128)),
        "T_tr": rng.random((5, 10)),
        "T_te": rng.random((3, 10)),
        "T_tfidf_tr": rng.random((5, 1000)),
        "T_tfidf_te": rng.random((3, 1000)),
    }
    scipy.io.savemat(tmp_path / "raw_features.mat", mats)
    write_lists(tmp_path)
    return mats


def test_loads_train_then_test_with_official_split(tmp_path: Path, wiki: dict) -> None:
    ds = load_wikipedia(tmp_path)
    assert ds.name == "wikipedia"
    assert ds.ids == ["t-a", "t-b", "t-c", "t-d", "t-e", "q-a", "q-b", "q-c"]
    assert ds.label_names == WIKIPEDIA_CLASSES and ds.label_names[0] == "art" and ds.label_names[9] == "warfare"
    expected = np.zeros((8, 10), dtype=np.uint8)
    for row, cls in enumerate([1, 10, 3, 3, 7, 2, 10, 1]):
        expected[row, cls - 1] = 1
    np.testing.assert_array_equal(ds.labels, expected)
    assert ds.labels.dtype == np.uint8
    np.testing.assert_allclose(ds.image_features, np.vstack([wiki["I_tr"], wiki["I_te"]]), rtol=1e-6)
    np.testing.assert_allclose(ds.text_features, np.vstack([wiki["T_tr"], wiki["T_te"]]), rtol=1e-6)
    assert ds.image_features.dtype == np.float32 and ds.image_paths is None
    split = ds.preset_split
    assert split is not None and split.seed is None
    np.testing.assert_array_equal(split.query, [5, 6, 7])
    np.testing.assert_array_equal(split.retrieval, [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(split.train, [0, 1, 2, 3, 4])
    assert ds.info["image_ids"][5] == "j-a"


def test_tfidf_text_features(tmp_path: Path, wiki: dict) -> None:
    ds = load_wikipedia(tmp_path, text_features="tfidf")
    np.testing.assert_allclose(ds.text_features, np.vstack([wiki["T_tfidf_tr"], wiki["T_tfidf_te"]]), rtol=1e-6)
    with pytest.raises(DataError, match="lda"):
        load_wikipedia(tmp_path, text_features="bert")  # type: ignore[arg-type]


def test_missing_list_file_is_named(tmp_path: Path, wiki: dict) -> None:
    (tmp_path / "testset_txt_img_cat.list").unlink()
    with pytest.raises(DataError, match="testset_txt_img_cat.list"):
        load_wikipedia(tmp_path)


def test_row_count_mismatch_names_the_list(tmp_path: Path, wiki: dict) -> None:
    write_lists(tmp_path, train=TRAIN[:4])
    with pytest.raises(DataError, match=r"I_tr has shape \(5, 128\).*trainset_txt_img_cat.list lists 4"):
        load_wikipedia(tmp_path)


def test_bad_class_line_names_file_and_line(tmp_path: Path, wiki: dict) -> None:
    write_lists(tmp_path, test=[TEST[0], ("q-b", "j-b", 11), TEST[2]])
    with pytest.raises(DataError, match=r"testset_txt_img_cat.list:2"):
        load_wikipedia(tmp_path)


def test_corrupt_mat_is_named(tmp_path: Path, wiki: dict) -> None:
    (tmp_path / "raw_features.mat").write_bytes(b"not a mat file" * 20)
    with pytest.raises(DataError, match="raw_features.mat"):
        load_wikipedia(tmp_path)


@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED / "wikipedia").exists(), reason="shared data not available")
def test_real_wikipedia() -> None:
    root = SHARED / "wikipedia"
    ds = load_wikipedia(root)
    assert len(ds) == 2866 and ds.image_features.shape == (2866, 128) and ds.text_features.shape == (2866, 10)
    assert len(ds.preset_split.query) == 693 and len(ds.preset_split.retrieval) == 2173
    lines = (root / "trainset_txt_img_cat.list").read_text().splitlines()
    lines += (root / "testset_txt_img_cat.list").read_text().splitlines()
    assert ds.ids == [line.split("\t")[0] for line in lines]
    np.testing.assert_array_equal(ds.labels.argmax(1) + 1, [int(line.split("\t")[2]) for line in lines])
    assert (ds.labels.sum(1) == 1).all()
    np.testing.assert_allclose(ds.image_features.sum(1), 1.0, atol=1e-4)  # SIFT BoVW histograms
    assert load_wikipedia(root, text_features="tfidf").text_features.shape == (2866, 1000)
    assert ds.texts is not None and len(ds.texts) == 2866 and all(len(t.split()) >= 20 for t in ds.texts)
    assert not any("&nbsp;" in t or "&amp;" in t or "<text>" in t for t in ds.texts)


def test_raw_texts_in_row_order_from_malformed_xml(tmp_path: Path) -> None:
    root = write_wikipedia_miniature(tmp_path / "wiki", n_train=7, n_test=5, texts=True)
    ds = load_wikipedia(root, text_features="raw")
    assert ds.text_features is None and ds.texts is not None and ds.info["text_features"] == "raw"
    assert ds.ids == [f"t{i}" for i in range(7)] + [f"q{i}" for i in range(5)]
    expected = [wikipedia_article(text_id, row % 4)[1] for row, text_id in zip([*range(7), *range(5)], ds.ids)]
    assert ds.texts == expected
    assert "Tom & Jerry café R&D" in ds.texts[0] and "&amp;" not in ds.texts[0]  # t0: malformed, with entities
    with pytest.raises(ElementTree.ParseError):
        ElementTree.parse(root / "texts" / "t0.xml")
    # lda / tfidf keep their vectors and carry the articles too
    lda = load_wikipedia(root)
    assert lda.text_features is not None and lda.texts == expected


def test_raw_texts_need_the_texts_folder(tmp_path: Path) -> None:
    root = write_wikipedia_miniature(tmp_path / "wiki", n_train=4, n_test=2)
    assert load_wikipedia(root).texts is None
    with pytest.raises(DataError, match="texts"):
        load_wikipedia(root, text_features="raw")
    root = write_wikipedia_miniature(tmp_path / "wiki2", n_train=4, n_test=2, texts=True)
    (root / "texts" / "q1.xml").unlink()
    with pytest.raises(DataError, match=r"q1\.xml"):
        load_wikipedia(root, text_features="raw")

"""Wikipedia loader on a hand-made miniature of the released files, and on the real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from model.runtime.errors import DataError
from model.training.config import shared_data_root
from model.training.data.wikipedia import WIKIPEDIA_CLASSES, load_wikipedia

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

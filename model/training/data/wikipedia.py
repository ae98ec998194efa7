"""The Wikipedia image-text dataset (Rasiwasia et al., 2010) from its released features."""

from __future__ import annotations

import html
import re
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np

from model.runtime.errors import DataError
from model.training.data.base import CrossModalDataset, Split, read_mat

# Class numbers 1..10 of the list files, in order.
WIKIPEDIA_CLASSES = [
    "art",
    "biology",
    "geography",
    "history",
    "literature",
    "media",
    "music",
    "royalty",
    "sport",
    "warfare",
]
_TEXT_KEYS = {"lda": ("T_tr", "T_te"), "tfidf": ("T_tfidf_tr", "T_tfidf_te")}
TEXT_FEATURES = ("lda", "tfidf", "raw")  # "raw": the articles themselves, from texts/<text_id>.xml
_TEXT_ELEMENT = re.compile(r"<text>(.*?)</text>", re.DOTALL)


def read_article(path: Path) -> str:
    """The article section of one `texts/<text_id>.xml`: what stands between `<text>` and
    `</text>`, HTML entities unescaped, whitespace collapsed. A regular expression rather
    than an XML parser, because about a third of the files are not well-formed XML (raw `&`,
    HTML entities such as `&nbsp;`)."""
    try:
        raw = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DataError(f"cannot read Wikipedia text {path}: {exc}") from exc
    match = _TEXT_ELEMENT.search(raw)
    if match is None:
        raise DataError(f"{path} has no <text>...</text> element")
    return " ".join(html.unescape(match.group(1)).split())


def read_articles(texts_dir: Path, ids: list[str]) -> list[str]:
    """The article of every text id, in the order of `ids`; a missing file is named."""
    missing = [i for i in ids if not (texts_dir / f"{i}.xml").is_file()]
    if missing:
        raise DataError(f"{len(missing)} Wikipedia texts missing from {texts_dir}, e.g. {missing[0]}.xml")
    return [read_article(texts_dir / f"{i}.xml") for i in ids]


def _read_list(path: Path) -> list[tuple[str, str, int]]:
    """(text_id, image_id, class 1..10) per line of a `*_txt_img_cat.list` file."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except OSError as exc:
        raise DataError(f"cannot read Wikipedia list file {path}: {exc}") from exc
    rows = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.strip().split("\t")
        if len(fields) != 3 or not fields[2].strip().isdigit() or not 1 <= int(fields[2]) <= 10:
            raise DataError(f"{path}:{lineno}: expected 'text_id<TAB>image_id<TAB>class 1..10', got {line!r}")
        rows.append((fields[0].strip(), fields[1].strip(), int(fields[2])))
    return rows


def _matrix(mat: dict[str, np.ndarray], key: str, rows: int, mat_path: Path, list_path: Path) -> np.ndarray:
    """Variable `key` as float32, checked to have one row per line of `list_path`."""
    if key not in mat:
        raise DataError(f"{mat_path} has no variable {key!r} (has {sorted(mat)})")
    array = np.asarray(mat[key], dtype=np.float32)
    if array.ndim != 2 or array.shape[0] != rows:
        raise DataError(f"{mat_path}: {key} has shape {array.shape} but {list_path} lists {rows} items")
    return array


def load_wikipedia(root: Path, text_features: Literal["lda", "tfidf", "raw"] = "lda") -> CrossModalDataset:
    """Train rows then test rows of the released features (SIFT BoVW images, LDA or tf-idf
    texts), one-hot over the 10 categories, with the official split: the 693 test items
    query the 2,173 training items, which are also the training data.

    `texts` holds the raw articles (row order) whenever a `texts/` folder stands beside the
    .mat; `text_features` holds the LDA or tf-idf matrix, and is None for "raw" (which then
    needs `texts/`), so a trainer turns the articles into a bag of words or MiniLM embeddings."""
    if text_features not in TEXT_FEATURES:
        raise DataError(f"Wikipedia text features must be one of {list(TEXT_FEATURES)}, got {text_features!r}")
    root = Path(root)
    mat_path = root / "raw_features.mat"
    train_list = root / "trainset_txt_img_cat.list"
    test_list = root / "testset_txt_img_cat.list"
    for path in (mat_path, train_list, test_list):
        if not path.is_file():
            raise DataError(f"Wikipedia file not found: {path}")
    texts_dir = root / "texts"
    if text_features == "raw" and not texts_dir.is_dir():
        raise DataError(f"--text-features raw reads the articles, but {texts_dir} is not a folder")
    train, test = _read_list(train_list), _read_list(test_list)
    text_keys = _TEXT_KEYS.get(text_features)
    mat = read_mat(mat_path, ["I_tr", "I_te", *(text_keys or ())])
    images = np.concatenate(
        [
            _matrix(mat, "I_tr", len(train), mat_path, train_list),
            _matrix(mat, "I_te", len(test), mat_path, test_list),
        ]
    )
    features = None
    if text_keys is not None:
        features = np.concatenate(
            [
                _matrix(mat, text_keys[0], len(train), mat_path, train_list),
                _matrix(mat, text_keys[1], len(test), mat_path, test_list),
            ]
        )
    rows = train + test
    ids = [text_id for text_id, _, _ in rows]
    if len(set(ids)) != len(ids):
        duplicates = sorted(i for i, c in Counter(ids).items() if c > 1)[:5]
        raise DataError(f"duplicate text ids across {train_list} and {test_list}: {duplicates}")
    articles = read_articles(texts_dir, ids) if texts_dir.is_dir() else None
    labels = np.zeros((len(rows), len(WIKIPEDIA_CLASSES)), dtype=np.uint8)
    labels[np.arange(len(rows)), [cls - 1 for _, _, cls in rows]] = 1
    n_train = len(train)
    train_rows = np.arange(n_train, dtype=np.int64)
    split = Split(
        query=np.arange(n_train, len(rows), dtype=np.int64),
        retrieval=train_rows,
        train=train_rows.copy(),
        seed=None,
    )
    return CrossModalDataset(
        name="wikipedia",
        ids=ids,
        labels=labels,
        label_names=list(WIKIPEDIA_CLASSES),
        image_features=images,
        text_features=features,
        texts=articles,
        preset_split=split,
        info={
            "root": str(root),
            "text_features": text_features,
            "image_features": "sift_bovw_128",
            "texts": None if articles is None else str(texts_dir),
            "image_ids": [image_id for _, image_id, _ in rows],
            "n_train": n_train,
            "n_test": len(test),
        },
    )

"""MIRFLICKR-25K in its three common layouts: the DCMH .mat files, an image folder with a
row table (rows.tsv), and the official distribution (images, meta/tags, annotation files).

Every layout gives items with a 24-label multi-hot vector and a binary bag of words over
the 1,386 common tags; the text of an item is its vocabulary tags joined by spaces, which
`model.runtime.text.BagOfWords(vocabulary)` maps back to the same bag of words at serving time.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from model.runtime.errors import DataError
from model.training.data.base import CrossModalDataset, read_mat

# The 24 MIRFLICKR-25K concepts in label-column (alphabetical) order.
MIRFLICKR_CONCEPTS = [
    "animals",
    "baby",
    "bird",
    "car",
    "clouds",
    "dog",
    "female",
    "flower",
    "food",
    "indoor",
    "lake",
    "male",
    "night",
    "people",
    "plant_life",
    "portrait",
    "river",
    "sea",
    "sky",
    "structures",
    "sunset",
    "transport",
    "tree",
    "water",
]
_MAT_ROLES = ("LAll", "YAll", "IAll")
_IMAGE_NAME = re.compile(r"im(\d+)\.jpe?g", re.IGNORECASE)
_NOT_ANNOTATIONS = re.compile(r"(readme|license|licence|copyright).*|.*_r1", re.IGNORECASE)


def _read_lines(path: Path) -> list[str]:
    """Stripped non-empty lines of a UTF-8 text file."""
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise DataError(f"cannot read MIRFLICKR file {path}: {exc}") from exc
    return [line.strip() for line in text.splitlines() if line.strip()]


def _mat_files(root: Path) -> list[Path]:
    """The .mat files directly in `root` (any case of the suffix), sorted by name."""
    return sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() == ".mat")


def _roles_in(path: Path, roles: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The variables of `path` named like `roles` (case-insensitively), keyed by role."""
    variables = {k.lower(): v for k, v in read_mat(path).items()}
    return {role: variables[role.lower()] for role in roles if role.lower() in variables}


def _find_mat_arrays(root: Path, roles: tuple[str, ...] = _MAT_ROLES) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The `roles` arrays (LAll / YAll / IAll) under `root`, a folder or one .mat file, and
    the file each came from. In a folder, files named for a role (`*lall*.mat`, any case)
    are used; without any, the first .mat holding both LAll and YAll."""
    if root.is_file():
        found = _roles_in(root, roles)
        return found, {role: str(root) for role in found}
    files = _mat_files(root)
    named: dict[str, Path] = {}
    for role in roles:
        matches = [p for p in files if role.lower() in p.name.lower()]
        if len(matches) > 1:
            raise DataError(f"several {role} files in {root}: {[p.name for p in matches]}")
        if matches:
            named[role] = matches[0]
    if named:
        arrays: dict[str, np.ndarray] = {}
        for role, path in named.items():
            found = _roles_in(path, (role,))
            if role not in found:
                raise DataError(f"{path} has no {role} variable")
            arrays[role] = found[role]
        return arrays, {role: str(path) for role, path in named.items()}
    for path in files:
        found = _roles_in(path, roles)
        if {"LAll", "YAll"} <= found.keys():
            return found, {role: str(path) for role in found}
    return {}, {}


def _label_names(root: Path, k: int, source: str) -> list[str]:
    """`label_names.txt` when present, else the 24 standard concepts (or label_<j>)."""
    path = root / "label_names.txt"
    if path.is_file():
        names = _read_lines(path)
        if len(names) != k:
            raise DataError(f"{path} has {len(names)} names but {source} has {k} label columns")
        return names
    return list(MIRFLICKR_CONCEPTS) if k == len(MIRFLICKR_CONCEPTS) else [f"label_{j}" for j in range(k)]


def _texts_from_bow(bow: np.ndarray, vocabulary: list[str]) -> list[str]:
    """Each row's vocabulary words (non-zero columns) joined by spaces."""
    return [" ".join(vocabulary[j] for j in np.flatnonzero(row)) for row in bow]


def _vocab_tags(tags: list[str], index: dict[str, int]) -> list[str]:
    """The tags that are vocabulary words, first occurrence order, without repeats."""
    return list(dict.fromkeys(t for t in tags if t in index))


def _bow(tag_lists: list[list[str]], index: dict[str, int]) -> np.ndarray:
    """Binary n x V float32 bag of words of vocabulary tag lists."""
    out = np.zeros((len(tag_lists), len(index)), dtype=np.float32)
    for row, tags in enumerate(tag_lists):
        out[row, [index[t] for t in tags]] = 1.0
    return out


def load_mirflickr_mat(root: Path) -> CrossModalDataset:
    """The DCMH .mat layout: `LAll` (n x 24 labels), `YAll` (n x 1386 tag BoW) and `IAll`
    (n x d image features), in one .mat or in `*lall*.mat` / `*yall*.mat` / `*iall*.mat`.
    `tag_vocab.txt` and `label_names.txt` next to them are used when present."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"MIRFLICKR .mat path not found: {root}")
    folder = root.parent if root.is_file() else root
    arrays, sources = _find_mat_arrays(root)
    missing = [r for r in _MAT_ROLES if r not in arrays]
    if "LAll" in missing or "YAll" in missing:
        looked = [root.name] if root.is_file() else [p.name for p in _mat_files(root)]
        raise DataError(f"no MIRFLICKR {' / '.join(missing)} under {root} (.mat files: {looked})")
    labels, bow = np.asarray(arrays["LAll"]), np.asarray(arrays["YAll"])
    if labels.ndim != 2 or bow.ndim != 2 or len(bow) != len(labels):
        raise DataError(
            f"LAll {labels.shape} ({sources['LAll']}) and YAll {bow.shape} ({sources['YAll']}) "
            f"must be matrices with one row per item"
        )
    n = len(labels)
    if "IAll" in missing:
        raise DataError(
            f"no IAll image features in the .mat files under {root}; for images use the "
            f"image-folder layout (rows.tsv + images/) or the official layout"
        )
    images = np.asarray(arrays["IAll"])
    if images.ndim == 4:
        raise DataError(
            f"IAll in {sources['IAll']} holds raw pixels {images.shape}, which is not supported: "
            f"use the image-folder or official layout so the image encoder reads the JPEGs"
        )
    if images.ndim != 2 or len(images) != n:
        raise DataError(f"IAll in {sources['IAll']} has shape {images.shape}, expected {n} x d features")
    vocab_path = folder / "tag_vocab.txt"
    vocabulary = _read_lines(vocab_path) if vocab_path.is_file() else None
    if vocabulary is not None and len(vocabulary) != bow.shape[1]:
        raise DataError(f"{vocab_path} has {len(vocabulary)} words but YAll has {bow.shape[1]} columns")
    return CrossModalDataset(
        name="mirflickr",
        ids=[str(i) for i in range(n)],
        labels=(labels > 0).astype(np.uint8),
        label_names=_label_names(folder, labels.shape[1], sources["LAll"]),
        image_features=images.astype(np.float32),
        text_features=bow.astype(np.float32),
        texts=None if vocabulary is None else _texts_from_bow(bow, vocabulary),
        vocabulary=vocabulary,
        info={"layout": "mat", "root": str(root), "files": sources},
    )


def _read_rows_tsv(path: Path) -> list[dict[str, str]]:
    """Rows of `rows.tsv` (columns row, image_id, labels, tags; lists comma separated)."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh, delimiter="\t")
            header = reader.fieldnames or []
            if not {"row", "image_id", "labels", "tags"} <= set(header):
                raise DataError(f"{path}: header must have row, image_id, labels, tags; got {header}")
            rows = list(reader)
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    for lineno, row in enumerate(rows, start=2):
        if not (row["row"] or "").isdigit() or not (row["image_id"] or "").isdigit():
            raise DataError(f"{path}:{lineno}: row and image_id must be integers, got {row}")
    return rows


def _split_list(value: str | None) -> list[str]:
    """Non-empty entries of a comma-separated field."""
    return [v for v in (value or "").split(",") if v]


def load_mirflickr_image_folder(root: Path) -> CrossModalDataset:
    """The image-folder layout: `rows.tsv`, `images/im{image_id}.jpg`, `tag_vocab.txt`,
    `label_names.txt`, and optionally the `*lall*` / `*yall*` .mat files. Only rows whose
    image file is present are kept. Labels and tag BoW come from LAll / YAll when present,
    else they are rebuilt from the label names and raw tags of `rows.tsv`."""
    root = Path(root)
    rows_path, image_dir = root / "rows.tsv", root / "images"
    vocab_path, names_path = root / "tag_vocab.txt", root / "label_names.txt"
    for path in (rows_path, vocab_path, names_path):
        if not path.is_file():
            raise DataError(f"MIRFLICKR image-folder layout: file not found: {path}")
    if not image_dir.is_dir():
        raise DataError(f"MIRFLICKR image-folder layout: folder not found: {image_dir}")
    rows = _read_rows_tsv(rows_path)
    vocabulary, label_names = _read_lines(vocab_path), _read_lines(names_path)
    vocab_index = {w: j for j, w in enumerate(vocabulary)}
    label_index = {w: j for j, w in enumerate(label_names)}
    arrays, sources = _find_mat_arrays(root, ("LAll", "YAll"))
    present = {p.name for p in image_dir.iterdir()}
    kept = [r for r in rows if f"im{r['image_id']}.jpg" in present]
    if not kept:
        raise DataError(f"none of the {len(rows)} images listed in {rows_path} is in {image_dir}")
    mat_rows = np.array([int(r["row"]) for r in kept], dtype=np.int64)
    tag_lists = [_vocab_tags(_split_list(r["tags"]), vocab_index) for r in kept]

    def rows_of(name: str, columns: list[str], listed_in: Path, what: str) -> np.ndarray:
        """The `mat_rows` of matrix `name`, refused unless it has one column per `columns` entry
        and every referenced row."""
        matrix = np.asarray(arrays[name])
        if matrix.ndim != 2 or matrix.shape[1] != len(columns) or mat_rows.max() >= len(matrix):
            raise DataError(
                f"{name} in {sources[name]} has shape {matrix.shape}; {listed_in} has "
                f"{len(columns)} {what} and {rows_path} refers to row {mat_rows.max()}"
            )
        return matrix[mat_rows]

    if "YAll" in arrays:
        text_features = rows_of("YAll", vocabulary, vocab_path, "words").astype(np.float32)
    else:
        text_features = _bow(tag_lists, vocab_index)
    if "LAll" in arrays:
        labels = (rows_of("LAll", label_names, names_path, "names") > 0).astype(np.uint8)
    else:
        labels = np.zeros((len(kept), len(label_names)), dtype=np.uint8)
        for i, r in enumerate(kept):
            for name in _split_list(r["labels"]):
                if name not in label_index:
                    raise DataError(f"{rows_path}: row {r['row']} has label {name!r} not in {names_path}")
                labels[i, label_index[name]] = 1
    return CrossModalDataset(
        name="mirflickr",
        ids=[r["image_id"] for r in kept],
        labels=labels,
        label_names=label_names,
        image_paths=[image_dir / f"im{r['image_id']}.jpg" for r in kept],
        text_features=text_features,
        texts=[" ".join(tags) for tags in tag_lists],
        vocabulary=vocabulary,
        info={
            "layout": "image_folder",
            "root": str(root),
            "rows_listed": len(rows),
            "mat_rows": mat_rows.tolist(),
            "text_features": "YAll" if "YAll" in arrays else "rebuilt from rows.tsv tags",
            "labels": "LAll" if "LAll" in arrays else "rebuilt from rows.tsv labels",
            "files": sources,
        },
    )


def _official_paths(root: Path) -> tuple[Path, Path, Path] | None:
    """(image folder, meta/tags folder, doc/common_tags.txt) of the official layout, which
    unzips to `mirflickr/` holding the images, `meta/` and `doc/`; `root` may be that folder
    or its parent, and meta/doc may also sit beside `mirflickr/`."""
    image_dir = root / "mirflickr" if (root / "mirflickr").is_dir() else root
    for base in (image_dir, root):
        tags_dir, common = base / "meta" / "tags", base / "doc" / "common_tags.txt"
        if tags_dir.is_dir() and common.is_file():
            return image_dir, tags_dir, common
    return None


def _annotation_files(root: Path, image_dir: Path) -> list[Path]:
    """The `<concept>.txt` annotation files (not `*_r1.txt`, README or licence files), from
    the first of annotations/, mirflickr25k_annotations_v080/, the root or the image folder
    that has any."""
    folders = [root / "annotations", root / "mirflickr25k_annotations_v080", root, image_dir]
    for folder in folders:
        if folder.is_dir():
            files = sorted(
                (
                    p
                    for p in folder.iterdir()
                    if p.is_file() and p.suffix.lower() == ".txt" and not _NOT_ANNOTATIONS.fullmatch(p.stem)
                ),
                key=lambda p: p.stem.lower(),
            )
            if files:
                return files
    raise DataError(f"no MIRFLICKR annotation files (<concept>.txt) in any of {[str(f) for f in folders]}")


def _read_ids(path: Path) -> set[int]:
    """The 1-based image ids listed in an annotation file."""
    ids = set()
    for lineno, line in enumerate(_read_lines(path), start=1):
        if not line.isdigit():
            raise DataError(f"{path}:{lineno}: expected an image number, got {line!r}")
        ids.add(int(line))
    return ids


def load_mirflickr_official(root: Path) -> CrossModalDataset:
    """The official distribution: `mirflickr/im{N}.jpg`, `meta/tags/tags{N}.txt` (processed
    tags, one per line), `doc/common_tags.txt` (`tag count` lines; the BoW columns in file
    order) and the annotation files (label columns in alphabetical concept order). Keeps the
    images with at least one label and one vocabulary tag (the standard 20,015 set)."""
    root = Path(root)
    paths = _official_paths(root)
    if paths is None:
        raise DataError(f"no MIRFLICKR official layout under {root}: need meta/tags/ and doc/common_tags.txt")
    image_dir, tags_dir, common_path = paths
    vocabulary = [line.split()[0] for line in _read_lines(common_path)]
    vocab_index = {w: j for j, w in enumerate(vocabulary)}
    annotation_files = _annotation_files(root, image_dir)
    label_names = [p.stem.lower() for p in annotation_files]
    annotated = [_read_ids(p) for p in annotation_files]
    images = sorted((int(m.group(1)), p) for p in image_dir.iterdir() if (m := _IMAGE_NAME.fullmatch(p.name)))
    if not images:
        raise DataError(f"no images im<N>.jpg in {image_dir}")
    ids, paths_kept, tag_lists, label_rows = [], [], [], []
    no_label = no_tag = 0
    for number, path in images:
        label_row = [number in ids_of_concept for ids_of_concept in annotated]
        if not any(label_row):
            no_label += 1
            continue
        tag_path = tags_dir / f"tags{number}.txt"
        tags = _vocab_tags(_read_lines(tag_path), vocab_index) if tag_path.is_file() else []
        if not tags:
            no_tag += 1
            continue
        ids.append(str(number))
        paths_kept.append(path)
        tag_lists.append(tags)
        label_rows.append(label_row)
    if not ids:
        raise DataError(f"no image in {image_dir} has both a label and a tag from {common_path}")
    return CrossModalDataset(
        name="mirflickr",
        ids=ids,
        labels=np.array(label_rows, dtype=np.uint8),
        label_names=label_names,
        image_paths=paths_kept,
        text_features=_bow(tag_lists, vocab_index),
        texts=[" ".join(tags) for tags in tag_lists],
        vocabulary=vocabulary,
        info={
            "layout": "official",
            "root": str(root),
            "images_found": len(images),
            "dropped_no_label": no_label,
            "dropped_no_vocabulary_tag": no_tag,
            "annotation_files": [str(p) for p in annotation_files],
        },
    )


def load_mirflickr(root: Path) -> CrossModalDataset:
    """MIRFLICKR-25K from whichever layout `root` holds: rows.tsv + images/ (image folder),
    else the official distribution, else the DCMH .mat files."""
    root = Path(root)
    if (root / "rows.tsv").is_file() and (root / "images").is_dir():
        return load_mirflickr_image_folder(root)
    if root.is_dir() and _official_paths(root) is not None:
        return load_mirflickr_official(root)
    if (root.is_file() and root.suffix.lower() == ".mat") or (root.is_dir() and _mat_files(root)):
        return load_mirflickr_mat(root)
    raise DataError(
        f"no MIRFLICKR data under {root}: looked for rows.tsv + images/ (image-folder layout), "
        f"mirflickr/ with meta/tags/ and doc/common_tags.txt (official layout), "
        f"and *.mat files with LAll / YAll / IAll (DCMH layout)"
    )

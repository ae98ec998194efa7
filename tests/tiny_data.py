"""A tiny synthetic cross-modal dataset made in code (no ../shared needed): 64 x 64 images of
four classes (a colour in a pattern, with noise) and captions naming the colour and pattern,
written as a JSONL manifest that `cmhash train --dataset manifest` reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# class -> (label, RGB colour, pattern); the label is the colour word of the text
CLASSES = [
    ("red", (220, 30, 30), "square"),
    ("blue", (30, 60, 220), "stripes"),
    ("green", (30, 170, 60), "circle"),
    ("yellow", (235, 205, 30), "checks"),
]
ADJECTIVES = ["small", "large", "bright", "plain", "simple"]
LABEL_NAMES = sorted(c[0] for c in CLASSES)  # the manifest loader sorts label names
N_ITEMS = 40
N_QUERY = 8
RETRIEVAL_ONLY = range(8, 12)  # items whose split is "retrieval" (in the database, not trained on)


def draw_item(cls: int, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """`size` x `size` image of class `cls`: its colour in its pattern, jittered, with pixel noise."""
    _, colour, pattern = CLASSES[cls]
    img = Image.new("RGB", (64, 64), (245, 245, 245))
    d = ImageDraw.Draw(img)
    o = int(rng.integers(0, 8))
    if pattern == "square":
        d.rectangle([10 + o, 10 + o, 50 + o // 2, 50 + o // 2], fill=colour)
    elif pattern == "stripes":
        for y in range(o % 4, 64, 8):
            d.rectangle([0, y, 63, y + 3], fill=colour)
    elif pattern == "circle":
        d.ellipse([8 + o, 8 + o, 54, 54], fill=colour)
    else:
        for y in range(0, 64, 16):
            for x in range(0, 64, 16):
                if (x // 16 + y // 16) % 2 == 0:
                    d.rectangle([x, y, x + 15, y + 15], fill=colour)
    noisy = np.asarray(img, dtype=np.int16) + rng.integers(-20, 21, (64, 64, 3))
    out = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    return out if size == 64 else out.resize((size, size), Image.Resampling.BILINEAR)


def item_class(i: int) -> int:
    return i % len(CLASSES)


def item_text(i: int) -> str:
    """The caption of item `i`: an adjective, its colour word and its pattern."""
    label, _, pattern = CLASSES[item_class(i)]
    return f"a {ADJECTIVES[i % len(ADJECTIVES)]} {label} {pattern}"


def write_manifest(root: Path, n_items: int = N_ITEMS, seed: int = 0) -> Path:
    """Write `n_items` images under root/img and root/items.jsonl; items 0-7 are queries,
    8-11 retrieval only, the rest train+retrieval. Returns the manifest path."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n_items):
        draw_item(item_class(i), rng).save(root / "img" / f"{i:02d}.png")
        split = "query" if i < N_QUERY else "retrieval" if i in RETRIEVAL_ONLY else "train+retrieval"
        lines.append(
            json.dumps(
                {
                    "id": f"item{i:02d}",
                    "image": f"img/{i:02d}.png",
                    "text": item_text(i),
                    "labels": [CLASSES[item_class(i)][0]],
                    "split": split,
                }
            )
        )
    path = root / "items.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


# Words of the miniature's articles: a few per class, plus words every class shares.
WIKI_CLASS_WORDS = [
    ["painting", "museum", "sculpture", "canvas"],
    ["cell", "species", "protein", "gene"],
    ["river", "mountain", "valley", "coast"],
    ["empire", "treaty", "century", "dynasty"],
]
WIKI_COMMON_WORDS = ["the", "of", "and", "was", "in", "a", "which", "first", "his"]


def wikipedia_article(text_id: str, cls: int) -> tuple[str, str]:
    """(file content, expected article text) of `texts/<text_id>.xml` ("t3", "q0"...) for
    class `cls`, seeded by the id: every third file is not well-formed XML (a raw `&`, HTML
    entities), as in the real folder."""
    import zlib

    import numpy as np

    rng = np.random.default_rng(zlib.crc32(text_id.encode()))
    words = [str(w) for w in rng.choice(WIKI_CLASS_WORDS[cls] + WIKI_COMMON_WORDS, size=30)]
    body, article = " ".join(words), " ".join(words)
    if int(text_id[1:]) % 3 == 0:
        body = f"{body} Tom &amp; Jerry&nbsp;caf&eacute; R&D"
        article = f"{article} Tom & Jerry\xa0café R&D"
    content = (
        f'<document id="{text_id}" name="Name_{text_id}" cat="{cls + 7}">\n<text>\n{body}\n</text>\n'
        f'<imageset><image id="img{text_id}" name="img{text_id}.jpg"/></imageset></document>\n'
    )
    return content, " ".join(article.split())


def write_wikipedia_miniature(
    root: Path, n_train: int = 40, n_test: int = 8, seed: int = 0, texts: bool = False
) -> Path:
    """A Wikipedia-layout dataset (raw_features.mat and the two list files) of 4 classes whose
    128-d "SIFT" histograms and 10-d "LDA" topics cluster by class: feature vectors only, no
    vocabulary, like the real one. With `texts`, also `texts/<text_id>.xml` articles whose
    words depend on the class (see `wikipedia_article`)."""
    import numpy as np
    import scipy.io

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    mats: dict[str, np.ndarray] = {}
    for part, n, prefix in (("tr", n_train, "t"), ("te", n_test, "q")):
        classes = np.arange(n) % 4
        image = rng.random((n, 128)) + 3.0 * (np.arange(128)[None, :] // 32 == classes[:, None])
        text = rng.random((n, 10)) + 4.0 * (np.arange(10)[None, :] == classes[:, None])
        tfidf = rng.random((n, 1000))
        mats[f"I_{part}"] = image / image.sum(axis=1, keepdims=True)
        mats[f"T_{part}"] = text / text.sum(axis=1, keepdims=True)
        mats[f"T_tfidf_{part}"] = tfidf / np.linalg.norm(tfidf, axis=1, keepdims=True)
        name = "trainset_txt_img_cat.list" if part == "tr" else "testset_txt_img_cat.list"
        (root / name).write_text("".join(f"{prefix}{i}\t{prefix}img{i}\t{c + 1}\n" for i, c in enumerate(classes)))
        if texts:
            (root / "texts").mkdir(exist_ok=True)
            for i, c in enumerate(classes):
                content, _ = wikipedia_article(f"{prefix}{i}", int(c))
                (root / "texts" / f"{prefix}{i}.xml").write_text(content, encoding="utf-8")
    scipy.io.savemat(root / "raw_features.mat", mats)
    return root

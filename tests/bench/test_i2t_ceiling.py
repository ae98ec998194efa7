"""bench/i2t_ceiling.py: the class prototypes, the nearest-prototype shares and the MAPs with codes
replaced by prototypes, against a brute-force ranking on small synthetic codes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import i2t_ceiling


def brute_force_map(query: np.ndarray, gallery: np.ndarray, q_class: np.ndarray, g_class: np.ndarray) -> float:
    """Rank by Hamming distance (stable: ties in gallery order), AP over the whole ranking."""
    aps = []
    for code, cls in zip(query, q_class):
        distance = [int(np.sum(code != g)) for g in gallery]
        order = sorted(range(len(gallery)), key=lambda i: distance[i])
        hits, precisions = 0, []
        for rank, i in enumerate(order, start=1):
            if g_class[i] == cls:
                hits += 1
                precisions.append(hits / rank)
        aps.append(np.mean(precisions) if precisions else 0.0)
    return float(np.mean(aps))


def one_hot(classes: np.ndarray, n: int) -> np.ndarray:
    return np.eye(n, dtype=np.uint8)[classes]


def synthetic(seed: int = 0, bits: int = 32, n_classes: int = 4) -> dict[str, np.ndarray]:
    """Gallery texts a few flipped bits from their class centre; query images mostly random."""
    rng = np.random.default_rng(seed)
    centres = rng.choice([-1, 1], size=(n_classes, bits))
    g_class = rng.integers(0, n_classes, 60)
    q_class = rng.integers(0, n_classes, 20)
    gallery = centres[g_class].copy()
    flips = rng.random(gallery.shape) < 0.1
    gallery[flips] *= -1
    return {
        "query_image_codes": rng.choice([-1, 1], size=(20, bits)).astype(np.int8),
        "query_text_codes": centres[q_class].astype(np.int8),
        "retrieval_text_codes": gallery.astype(np.int8),
        "retrieval_image_codes": rng.choice([-1, 1], size=(60, bits)).astype(np.int8),
        "query_labels": one_hot(q_class, n_classes),
        "retrieval_labels": one_hot(g_class, n_classes),
    }


def test_prototypes_are_the_majority_bit_with_ties_to_plus_one() -> None:
    codes = np.array([[1, 1, -1], [1, -1, -1], [-1, 1, 1], [1, -1, 1]])
    classes = np.array([0, 0, 0, 1])
    # class 0: bits sum 1, 1, -1; class 1 is its one row; a tie (sum 0) goes to +1
    assert i2t_ceiling.class_prototypes(codes, classes, 2).tolist() == [[1, 1, -1], [1, -1, 1]]
    assert i2t_ceiling.class_prototypes(codes[:2], classes[:2], 1).tolist() == [[1, 1, -1]]


def test_ceiling_matches_a_brute_force_ranking() -> None:
    codes = synthetic()
    values = i2t_ceiling.ceiling(codes)
    q_class, g_class = codes["query_labels"].argmax(1), codes["retrieval_labels"].argmax(1)
    gallery = codes["retrieval_text_codes"]
    protos = np.stack([np.where(gallery[g_class == c].sum(0) >= 0, 1, -1) for c in range(4)])
    q_img = codes["query_image_codes"]
    assert values["i2t"] == pytest.approx(brute_force_map(q_img, gallery, q_class, g_class))
    assert values["i2t_prototype_texts"] == pytest.approx(brute_force_map(q_img, protos[g_class], q_class, g_class))
    assert values["i2t_prototype_images"] == pytest.approx(brute_force_map(protos[q_class], gallery, q_class, g_class))
    # 10% flips around well-separated centres: every gallery text is nearest its own prototype
    assert values["gallery_texts_nearest_own"] == 1.0
    assert values["query_texts_nearest_own"] == 1.0
    expected = np.mean([np.argmin([np.sum(c != p) for p in protos]) == k for c, k in zip(q_img, q_class)])
    assert values["query_images_nearest_own"] == pytest.approx(expected)
    # gallery texts near their prototype and query images on theirs: a perfect ranking
    assert values["i2t_prototype_images"] == 1.0
    assert values["i2t"] < 0.6  # random query images are far from it


def test_multi_label_data_is_refused() -> None:
    codes = synthetic()
    codes["retrieval_labels"] = codes["retrieval_labels"].copy()
    codes["retrieval_labels"][0, :] = 1
    with pytest.raises(SystemExit, match="single-label"):
        i2t_ceiling.ceiling(codes)

"""`data_warnings`: each rule fires on a small label matrix made to break it, and none fires on
a balanced training set of a reasonable size."""

from __future__ import annotations

import numpy as np
import pytest

from model.training.data_checks import data_warnings


def one_hot(classes: list[int], k: int) -> np.ndarray:
    return np.eye(k, dtype=np.uint8)[classes]


def balanced(n: int = 400, k: int = 4) -> np.ndarray:
    """n items cycling through k labels, each item carrying one."""
    return one_hot([i % k for i in range(n)], k)


NAMES = ["a", "b", "c", "d"]


def test_balanced_set_is_silent() -> None:
    assert data_warnings(balanced(), NAMES, bits=64) == []


def test_too_few_items_for_the_bits() -> None:
    # 400 items are enough for 64 bits (max(200, 256)) but not for 128 (512).
    (warning,) = data_warnings(balanced(), NAMES, bits=128)
    assert warning.startswith("too few training items for 128-bit codes: 400 < max(200, 4 x 128) = 512")
    assert "fewer bits or more data" in warning
    (small,) = data_warnings(balanced(120), NAMES, bits=16)  # under the 200 floor whatever the bits
    assert "120 < max(200, 4 x 16) = 200" in small


def test_rare_labels_are_named_up_to_five() -> None:
    k = 10
    labels = balanced(400, 3).copy()
    labels = np.hstack([labels, np.zeros((400, k - 3), dtype=np.uint8)])
    for j in range(3, k):
        labels[: j - 3, j] = 1  # label j on j - 3 items: 0..6 items
    names = [f"l{j}" for j in range(k)]
    (warning,) = data_warnings(labels, names, bits=16)
    # l3..l7 are on fewer than 5 items, named rarest first; exactly five, so no "and N more"
    assert warning.startswith("5 label(s) on fewer than 5 training items: l3 (0), l4 (1), l5 (2), l6 (3), l7 (4);")
    labels[:, 8:] = 0  # now l8 and l9 are absent too: 7 rare labels, 5 named
    (warning,) = data_warnings(labels, names, bits=16)
    assert "7 label(s)" in warning and "l3 (0), l8 (0), l9 (0), l4 (1), l5 (2) and 2 more;" in warning


def test_a_dominant_label() -> None:
    labels = np.hstack([balanced(), np.ones((400, 1), dtype=np.uint8)])
    labels[:30, 4] = 0  # on 92.5% of the items
    (warning,) = data_warnings(labels, [*NAMES, "photo"], bits=16)
    assert warning.startswith("label photo is on 92% of the training items") and "near chance" in warning
    labels[:50, 4] = 0  # 87.5%: under the 90% line, and no label is under 1%
    assert data_warnings(labels, [*NAMES, "photo"], bits=16) == []


def test_a_rare_label_next_to_a_common_one() -> None:
    labels = one_hot([0] * 300 + [1] * 694 + [2] * 6, 3)  # 1000 items: b on 69.4%, c on 0.6% (6 items)
    (warning,) = data_warnings(labels, ["a", "b", "c"], bits=16)
    assert warning.startswith("unbalanced labels: c is on 0.6% of the training items and b on 69%")
    labels = one_hot([0] * 600 + [1] * 380 + [2] * 20, 3)  # c on 2%: not rare enough
    assert data_warnings(labels, ["a", "b", "c"], bits=16) == []


def test_items_without_labels() -> None:
    labels = balanced()
    labels[:10] = 0
    (warning,) = data_warnings(labels, NAMES, bits=16)
    assert warning.startswith("10 training item(s) (2%) have no label: they are similar to nothing")


def test_labels_must_match_the_names() -> None:
    with pytest.raises(ValueError):
        data_warnings(balanced(), NAMES[:3], bits=16)

"""Warnings about a training set, computed from its labels and the code length before any
training: a user's own data (a manifest) is often too small or its labels too skewed for
supervised hashing, and the MAP alone does not say why a run went badly."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MIN_ITEMS = 200  # fewer training items than max(MIN_ITEMS, ITEMS_PER_BIT x bits) is too small
ITEMS_PER_BIT = 4
MIN_LABEL_ITEMS = 5  # a label on fewer training items than this is too rare to learn
DOMINANT_FRACTION = 0.9  # a label on more than this fraction of the items makes almost every pair similar
RARE_FRACTION = 0.01  # a label under this fraction ...
COMMON_FRACTION = 0.5  # ... next to one over this fraction is unbalanced
MAX_NAMED = 5  # labels named in a warning before "and N more"


def _named(names: Sequence[str], counts: Sequence[int]) -> str:
    """'a (2), b (0) and 3 more': the first MAX_NAMED names with their counts."""
    shown = ", ".join(f"{name} ({count})" for name, count in zip(names[:MAX_NAMED], counts[:MAX_NAMED]))
    rest = len(names) - MAX_NAMED
    return shown + (f" and {rest} more" if rest > 0 else "")


def data_warnings(labels_train: np.ndarray, label_names: Sequence[str], bits: int) -> list[str]:
    """Warnings (plain sentences, no "WARNING:" prefix) about the training rows' n x K multi-hot
    labels for `bits`-bit codes; empty when none of these rules fires:

    - too small: fewer than max(MIN_ITEMS, ITEMS_PER_BIT x bits) items. Each bit should split
      the items about in half and be independent of the others, which a few items per bit
      cannot pin down, and below a few hundred items the query set is too small for its MAP
      to compare runs;
    - rare labels: labels on fewer than MIN_LABEL_ITEMS training items (0 included: a label
      only in the query or retrieval set), named up to MAX_NAMED. The model barely sees them,
      so their codes are near random and their per-label MAP rests on a handful of pairs;
    - unbalanced: one label on more than DOMINANT_FRACTION of the items: almost every pair
      shares a label, so "relevant" means almost everything, the losses see few dissimilar
      pairs and MAP is near chance by construction. Otherwise, the rarest label carried by
      any training item under RARE_FRACTION while the commonest is over COMMON_FRACTION: the
      similar pairs are nearly all the common label's, so the rare one gets little signal;
    - unlabelled items: items with no label are similar to nothing (relevance needs a shared
      label), so training only pushes their codes away from every other item.
    """
    carries = np.asarray(labels_train) != 0
    if carries.ndim != 2 or carries.shape[1] != len(label_names):
        raise ValueError(f"labels_train must be n x {len(label_names)} (one column per name), got {carries.shape}")
    n = len(carries)
    counts = carries.sum(axis=0)
    fractions = counts / max(1, n)
    warnings = []
    need = max(MIN_ITEMS, ITEMS_PER_BIT * bits)
    if n < need:
        warnings.append(
            f"too few training items for {bits}-bit codes: {n} < max({MIN_ITEMS}, {ITEMS_PER_BIT} x {bits}) = "
            f"{need}; try fewer bits or more data"
        )
    rare = [j for j in np.argsort(counts, kind="stable") if counts[j] < MIN_LABEL_ITEMS]
    if rare:
        warnings.append(
            f"{len(rare)} label(s) on fewer than {MIN_LABEL_ITEMS} training items: "
            f"{_named([label_names[j] for j in rare], [int(counts[j]) for j in rare])}; "
            "the model barely sees them and their MAP is unreliable"
        )
    present = np.flatnonzero(counts > 0)
    if len(present):
        common = int(present[np.argmax(fractions[present])])
        rarest = int(present[np.argmin(fractions[present])])
        if fractions[common] > DOMINANT_FRACTION:
            warnings.append(
                f"label {label_names[common]} is on {fractions[common]:.0%} of the training items: almost every "
                "pair shares a label, so MAP is near chance by construction; drop it or use finer labels"
            )
        elif fractions[rarest] < RARE_FRACTION and fractions[common] > COMMON_FRACTION:
            warnings.append(
                f"unbalanced labels: {label_names[rarest]} is on {fractions[rarest]:.1%} of the training items "
                f"and {label_names[common]} on {fractions[common]:.0%}; the rare label gets little training signal"
            )
    unlabelled = int(n - carries.any(axis=1).sum())
    if unlabelled:
        warnings.append(
            f"{unlabelled} training item(s) ({unlabelled / max(1, n):.0%}) have no label: they are similar to "
            "nothing, so training only pushes their codes away from every other item"
        )
    return warnings

"""DJSRH's loss against a NumPy oracle of the paper's equations (Su et al. 2019, eq. 2-5, sec. 4.3),
on batches whose two modalities differ in sign: each modality's cosine affinity is rescaled by
2S - 1 exactly when ITS OWN features are non-negative, so swapping the image and text flags (or
deciding them from the other modality) changes the target and the loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.training.methods.base import Batch, TrainState
from model.training.methods.djsrh import Djsrh, DjsrhParams
from model.training.similarity import joint_semantics_affinity

M, D_IMAGE, D_TEXT, BITS = 7, 6, 5, 12


def features(rng: np.random.Generator, n: int, d: int, non_negative: bool) -> np.ndarray:
    x = rng.random((n, d)) if non_negative else rng.standard_normal((n, d))
    if not non_negative:
        x[0, 0] = -abs(x[0, 0]) - 0.1  # at least one negative entry, whatever the draw
    return x


def oracle_cos(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    yn = y / np.linalg.norm(y, axis=1, keepdims=True)
    return xn @ yn.T


def oracle_affinity(fi: np.ndarray, ft: np.ndarray, beta: float, eta: float) -> np.ndarray:
    """eq. 2-3, each modality's cosines rescaled by 2S - 1 iff that modality is non-negative."""
    s_i = oracle_cos(fi, fi)
    s_t = oracle_cos(ft, ft)
    if (fi >= 0).all():
        s_i = 2 * s_i - 1
    if (ft >= 0).all():
        s_t = 2 * s_t - 1
    s = beta * s_i + (1 - beta) * s_t
    return (1 - eta) * s + eta * (s @ s.T) / len(s)


def oracle_loss(hi: np.ndarray, ht: np.ndarray, fi: np.ndarray, ft: np.ndarray, p: DjsrhParams, epoch: int) -> float:
    """eq. 5 with B = tanh(sqrt(epoch) H) and each squared norm taken as a mean over pairs."""
    target = p.mu * oracle_affinity(fi, ft, p.beta, p.eta)
    bi, bt = np.tanh(np.sqrt(epoch) * hi), np.tanh(np.sqrt(epoch) * ht)
    cross = np.mean((oracle_cos(bi, bt) - target) ** 2)
    intra_i = np.mean((oracle_cos(bi, bi) - target) ** 2)
    intra_t = np.mean((oracle_cos(bt, bt) - target) ** 2)
    return float(cross + p.lambda1 * intra_i + p.lambda2 * intra_t)


SIGNS = [  # (image non-negative, text non-negative): the asymmetric cases first
    (True, False),
    (False, True),
    (True, True),
    (False, False),
]


@pytest.mark.parametrize(("image_nonneg", "text_nonneg"), SIGNS)
def test_loss_matches_oracle(image_nonneg: bool, text_nonneg: bool) -> None:
    rng = np.random.default_rng(3)
    fi = features(rng, M, D_IMAGE, image_nonneg)
    ft = features(rng, M, D_TEXT, text_nonneg)
    hi, ht = rng.standard_normal((M, BITS)), rng.standard_normal((M, BITS))
    params = DjsrhParams(beta=0.7, eta=0.4, mu=1.5, lambda1=0.3, lambda2=0.2)
    method = Djsrh(params)
    batch = Batch(
        index=torch.arange(M),
        labels=torch.zeros(M, 2),
        image_features=torch.tensor(fi, dtype=torch.float32),
        text_features=torch.tensor(ft, dtype=torch.float32),
    )
    state = TrainState(
        labels=torch.zeros(M, 2), image_bank=torch.zeros(M, BITS), text_bank=torch.zeros(M, BITS), epoch=4
    )
    out = method.loss(torch.tensor(hi, dtype=torch.float32), torch.tensor(ht, dtype=torch.float32), batch, state)
    expected = oracle_loss(hi, ht, fi, ft, params, epoch=4)
    # float32 arithmetic on O(1) values: 1e-5 relative is far below the effect of a wrong rescale
    assert float(out["loss"]) == pytest.approx(expected, rel=1e-5)


def test_the_two_modalities_rescale_flags_are_not_interchangeable() -> None:
    """With non-negative images and signed texts, the target differs from the one with the
    flags swapped by much more than float error: the test above can tell them apart."""
    rng = np.random.default_rng(5)
    fi, ft = features(rng, M, D_IMAGE, True), features(rng, M, D_TEXT, False)
    ti, tt = torch.tensor(fi, dtype=torch.float32), torch.tensor(ft, dtype=torch.float32)
    right = joint_semantics_affinity(ti, tt, beta=0.7, eta=0.4, rescale_image=True, rescale_text=False).numpy()
    swapped = joint_semantics_affinity(ti, tt, beta=0.7, eta=0.4, rescale_image=False, rescale_text=True).numpy()
    np.testing.assert_allclose(right, oracle_affinity(fi, ft, 0.7, 0.4), rtol=1e-5, atol=1e-6)
    assert np.abs(right - swapped).max() > 0.1

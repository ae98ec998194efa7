"""CCA-ITQ on synthetic paired data with a shared latent class structure."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import linalg

from model.training.methods.cca_itq import CcaItq, fit_cca_itq
from model.training.metrics import mean_average_precision

N, N_TRAIN, N_QUERY = 700, 400, 100


def make_pairs(seed: int, d_image: int = 40, d_text: int = 20, classes: int = 6):
    """Both modalities are noisy linear views of a class-clustered 5-d latent vector."""
    rng = np.random.default_rng(seed)
    centres = 2.0 * rng.standard_normal((classes, 5))
    cls = rng.integers(0, classes, N)
    shared = centres[cls] + 0.5 * rng.standard_normal((N, 5))
    image = shared @ rng.standard_normal((5, d_image)) + rng.standard_normal((N, d_image)) + 3.0
    text = shared @ rng.standard_normal((5, d_text)) + rng.standard_normal((N, d_text))
    labels = np.eye(classes, dtype=np.uint8)[cls]
    return image.astype(np.float32), text.astype(np.float32), labels


def cross_modal_maps(model: CcaItq, image: np.ndarray, text: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(I->T, T->I) MAP with queries after the training rows and the whole set as database."""
    query = slice(N_TRAIN, N_TRAIN + N_QUERY)
    i2t = mean_average_precision(model.encode(image[query], "image"), model.encode(text, "text"), labels[query], labels)
    t2i = mean_average_precision(model.encode(text[query], "text"), model.encode(image, "image"), labels[query], labels)
    return i2t, t2i


def random_code_map(bits: int, labels: np.ndarray) -> float:
    rng = np.random.default_rng(123)
    q = np.where(rng.random((N_QUERY, bits)) < 0.5, -1, 1)
    r = np.where(rng.random((N, bits)) < 0.5, -1, 1)
    return mean_average_precision(q, r, labels[N_TRAIN : N_TRAIN + N_QUERY], labels)


def scaled_padded(model: CcaItq, modality: str) -> np.ndarray:
    """Canonical directions times their correlations, zero-padded to `bits` columns."""
    directions = model.image_directions if modality == "image" else model.text_directions
    out = np.zeros((directions.shape[0], model.bits))
    out[:, : directions.shape[1]] = directions * model.correlations
    return out


@pytest.mark.parametrize(("bits", "d_text"), [(16, 20), (32, 5)])
def test_cross_modal_map_beats_random_codes(bits: int, d_text: int) -> None:
    image, text, labels = make_pairs(0, d_text=d_text)
    model = fit_cca_itq(image[:N_TRAIN], text[:N_TRAIN], bits)
    chance = random_code_map(bits, labels)
    for value in cross_modal_maps(model, image, text, labels):
        assert value > chance + 0.4


def test_bits_above_a_modality_dimension() -> None:
    image, text, _ = make_pairs(1, d_text=5)
    model = fit_cca_itq(image[:N_TRAIN], text[:N_TRAIN], 32)
    assert model.text_weight.shape == (5, 32) and model.image_weight.shape == (40, 32)
    assert model.correlations.shape == (5,)
    codes = model.encode(text, "text")
    assert codes.shape == (N, 32) and codes.dtype == np.int8
    assert set(np.unique(codes)) <= {-1, 1}


def test_deterministic_for_a_seed() -> None:
    image, text, _ = make_pairs(2)
    a = fit_cca_itq(image[:N_TRAIN], text[:N_TRAIN], 16, seed=7)
    b = fit_cca_itq(image[:N_TRAIN], text[:N_TRAIN], 16, seed=7)
    c = fit_cca_itq(image[:N_TRAIN], text[:N_TRAIN], 16, seed=8)
    np.testing.assert_array_equal(a.encode(image, "image"), b.encode(image, "image"))
    np.testing.assert_array_equal(a.encode(text, "text"), b.encode(text, "text"))
    assert not np.allclose(a.rotation, c.rotation)


@pytest.mark.parametrize("bits", [8, 32])
def test_rotation_orthogonal_and_itq_lowers_quantisation_loss(bits: int) -> None:
    image, text, _ = make_pairs(3, d_text=5 if bits > 20 else 20)
    model = fit_cca_itq(image[:N_TRAIN], text[:N_TRAIN], bits)
    untrained = fit_cca_itq(image[:N_TRAIN], text[:N_TRAIN], bits, iterations=0)  # the random start
    np.testing.assert_allclose(model.rotation.T @ model.rotation, np.eye(bits), atol=1e-10)
    v = np.concatenate(
        [
            (image[:N_TRAIN] - image[:N_TRAIN].mean(axis=0, dtype=np.float64)) @ scaled_padded(model, "image"),
            (text[:N_TRAIN] - text[:N_TRAIN].mean(axis=0, dtype=np.float64)) @ scaled_padded(model, "text"),
        ]
    )

    def loss(rotation: np.ndarray) -> float:
        projected = v @ rotation
        return float(np.sum((np.where(projected >= 0, 1.0, -1.0) - projected) ** 2))

    losses = [loss(fit_cca_itq(image[:N_TRAIN], text[:N_TRAIN], bits, iterations=k).rotation) for k in (0, 1, 5, 50)]
    assert loss(untrained.rotation) == losses[0] and losses[-1] == loss(model.rotation)
    assert all(later <= earlier + 1e-9 for earlier, later in itertools.pairwise(losses))  # ITQ never increases it
    assert losses[-1] < losses[0]


def test_each_itq_step_is_the_orthogonal_procrustes_solution() -> None:
    """R_(k+1) = argmin over orthogonal R of ||sign(V R_k) - V R||_F (scipy's solver as oracle)."""
    image, text, _ = make_pairs(6)
    fits = [fit_cca_itq(image[:N_TRAIN], text[:N_TRAIN], 8, iterations=k) for k in (2, 3)]
    v = np.concatenate(
        [
            (image[:N_TRAIN] - image[:N_TRAIN].mean(axis=0, dtype=np.float64)) @ scaled_padded(fits[0], "image"),
            (text[:N_TRAIN] - text[:N_TRAIN].mean(axis=0, dtype=np.float64)) @ scaled_padded(fits[0], "text"),
        ]
    )
    codes = np.where(v @ fits[0].rotation >= 0, 1.0, -1.0)
    expected, _ = linalg.orthogonal_procrustes(v, codes)
    np.testing.assert_allclose(fits[1].rotation, expected, atol=1e-8)


def test_canonical_correlations_match_eigen_oracle() -> None:
    """Squared canonical correlations are the eigenvalues of Cxx^-1 Cxy Cyy^-1 Cyx."""
    image, text, _ = make_pairs(4, d_image=12, d_text=8)
    x, y = image[:N_TRAIN].astype(np.float64), text[:N_TRAIN].astype(np.float64)
    model = fit_cca_itq(x, y, 6, reg=1e-8)
    rho = model.correlations
    assert np.all((rho >= 0) & (rho <= 1)) and np.all(np.diff(rho) <= 0)
    full = np.cov(np.hstack([x, y]).T)
    cxx, cyy, cxy = full[:12, :12], full[12:, 12:], full[:12, 12:]
    eig = linalg.eigvals(np.linalg.solve(cxx, cxy) @ np.linalg.solve(cyy, cxy.T)).real
    expected = np.sqrt(np.clip(np.sort(eig)[::-1][:6], 0, 1))
    np.testing.assert_allclose(rho, expected, atol=1e-6)
    # The paired projections of the training data are correlated exactly that much.
    px = (x - x.mean(axis=0)) @ model.image_directions
    py = (y - y.mean(axis=0)) @ model.text_directions
    pearson = [np.corrcoef(px[:, k], py[:, k])[0, 1] for k in range(6)]
    np.testing.assert_allclose(pearson, rho, atol=1e-6)


def test_encode_is_sign_of_centred_rotated_projection() -> None:
    image, text, _ = make_pairs(5)
    model = fit_cca_itq(image[:N_TRAIN], text[:N_TRAIN], 16)
    for modality, x in (("image", image), ("text", text)):
        mean = x[:N_TRAIN].mean(axis=0, dtype=np.float64)
        expected = np.where((x - mean) @ scaled_padded(model, modality) @ model.rotation >= 0, 1, -1)
        np.testing.assert_array_equal(model.encode(x, modality), expected)


def test_sign_of_zero_is_plus_one_and_bad_input_rejected() -> None:
    zero = np.zeros(2)
    model = CcaItq(
        np.zeros((3, 2)), zero, np.zeros((4, 2)), zero, np.eye(2), np.ones(2), np.zeros((3, 2)), np.zeros((4, 2))
    )
    np.testing.assert_array_equal(model.encode(np.ones((5, 3)), "image"), np.ones((5, 2)))
    with pytest.raises(ValueError):
        model.encode(np.ones((5, 4)), "image")
    with pytest.raises(ValueError):
        model.encode(np.ones((5, 4)), "audio")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        fit_cca_itq(np.ones((5, 3)), np.ones((4, 3)), 2)

"""CCA-ITQ (Gong, Lazebnik, Gordo & Perronnin, PAMI 2013, Sec. 3.2 / 5.3): the unsupervised
cross-modal baseline. CCA finds paired image/text directions of maximal correlation; ITQ then
rotates the shared projected space so that taking signs loses as little as possible.

Numeric core only: `fit_cca_itq` learns one affine map per modality, codes = sign(x @ W + b).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field

from model.runtime.choices import Modality
from model.training.methods.base import MethodParams

# Rows of float32 input cast to float64 at a time, so memory stays bounded on large sets.
_ROWS_PER_CHUNK = 4096


class CcaItqParams(MethodParams):
    """CCA-ITQ's hyper-parameters. The paper fixes no ridge; the default won
    `python bench/tune.py --defaults --datasets mirflickr,wikipedia-lda` (10 values 1e-5..0.3,
    mean validation MAP over the MIRFLICKR sample's fold-0 training rows and Wikipedia's
    official training rows): 0.1 scored 0.398, 1e-3 0.397, 1e-4 (the previous default) 0.395
    (all within 0.005: CCA-ITQ is insensitive to it)."""

    reg: float = Field(0.1, gt=0, description="ridge on each covariance, times its mean diagonal")
    iterations: int = Field(50, ge=1, description="ITQ alternations of B = sgn(VR) and the Procrustes step")


@dataclass(frozen=True)
class CcaItq:
    """A fitted CCA-ITQ model: codes = sign(x @ weight + bias) per modality.

    weight = directions * correlations, zero-padded to `bits` columns, times `rotation`;
    bias = -(training mean) @ weight, so centring, projection and rotation are one affine map.
    """

    image_weight: np.ndarray  # d_i x bits
    image_bias: np.ndarray  # bits
    text_weight: np.ndarray  # d_t x bits
    text_bias: np.ndarray  # bits
    rotation: np.ndarray  # bits x bits orthogonal ITQ rotation R
    correlations: np.ndarray  # c canonical correlations, decreasing, c = min(bits, d_i, d_t)
    image_directions: np.ndarray  # d_i x c canonical directions (about unit variance on training data)
    text_directions: np.ndarray  # d_t x c canonical directions (about unit variance on training data)

    @property
    def bits(self) -> int:
        """Code length."""
        return int(self.rotation.shape[0])

    def project(self, x: np.ndarray, modality: Modality) -> np.ndarray:
        """Real-valued rotated projection x @ W + b (n x bits, float64), before taking signs."""
        weight, bias = self._affine(modality)
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != weight.shape[0]:
            raise ValueError(f"{modality} input must be n x {weight.shape[0]}, got shape {x.shape}")
        projected: np.ndarray = x @ weight + bias
        return projected

    def encode(self, x: np.ndarray, modality: Modality) -> np.ndarray:
        """{-1,+1} int8 codes (n x bits); sign(0) is +1."""
        return np.where(self.project(x, modality) >= 0, 1, -1).astype(np.int8)

    def _affine(self, modality: Modality) -> tuple[np.ndarray, np.ndarray]:
        if modality == "image":
            return self.image_weight, self.image_bias
        if modality == "text":
            return self.text_weight, self.text_bias
        raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")


def _mean_and_covariance(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and the (biased, 1/n) covariance of x, accumulated in float64 by chunks."""
    mean = x.mean(axis=0, dtype=np.float64)
    cov = np.zeros((x.shape[1], x.shape[1]), dtype=np.float64)
    for start in range(0, len(x), _ROWS_PER_CHUNK):
        block = x[start : start + _ROWS_PER_CHUNK].astype(np.float64) - mean
        cov += block.T @ block
    return mean, cov / len(x)


def _cross_covariance(x: np.ndarray, x_mean: np.ndarray, y: np.ndarray, y_mean: np.ndarray) -> np.ndarray:
    """The (1/n) cross-covariance of paired rows of x and y, in float64 by chunks."""
    cov = np.zeros((x.shape[1], y.shape[1]), dtype=np.float64)
    for start in range(0, len(x), _ROWS_PER_CHUNK):
        bx = x[start : start + _ROWS_PER_CHUNK].astype(np.float64) - x_mean
        by = y[start : start + _ROWS_PER_CHUNK].astype(np.float64) - y_mean
        cov += bx.T @ by
    return cov / len(x)


def _centred_product(x: np.ndarray, mean: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """(x - mean) @ weight in float64, by chunks of rows."""
    starts = range(0, len(x), _ROWS_PER_CHUNK)
    return np.concatenate([(x[s : s + _ROWS_PER_CHUNK].astype(np.float64) - mean) @ weight for s in starts])


def _inverse_sqrt(cov: np.ndarray, reg: float) -> np.ndarray:
    """(C + reg * mean(diag C) * I)^(-1/2): ridge scaled to the features' own variance, so one
    `reg` suits SIFT counts and LDA probabilities alike (falls back to reg * I if C is 0)."""
    scale = float(np.trace(cov)) / len(cov)
    ridge = reg * (scale if scale > 0 else 1.0)
    values, vectors = np.linalg.eigh(cov + ridge * np.eye(len(cov)))
    inverse_sqrt: np.ndarray = (vectors / np.sqrt(values)) @ vectors.T
    return inverse_sqrt


def _random_rotation(size: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random orthogonal matrix (QR of a Gaussian matrix with the sign fix of Mezzadri 2007)."""
    q, r = np.linalg.qr(rng.standard_normal((size, size)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


def _itq_rotation(v: np.ndarray, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """ITQ (Gong & Lazebnik, CVPR 2011, Sec. 2.3): minimise ||B - V R||_F over codes B and
    orthogonal R by alternating B = sign(V R) and the orthogonal Procrustes step: with
    B^T V = S Omega S_hat^T (SVD), R = S_hat S^T."""
    rotation = _random_rotation(v.shape[1], rng)
    for _ in range(iterations):
        codes = np.where(v @ rotation >= 0, 1.0, -1.0)
        s, _, s_hat_t = np.linalg.svd(codes.T @ v)
        rotation = s_hat_t.T @ s.T
    return rotation


def fit_cca_itq(
    image_x: np.ndarray,
    text_x: np.ndarray,
    bits: int,
    *,
    reg: float = 1e-4,
    iterations: int = 50,
    seed: int = 0,
) -> CcaItq:
    """Fit CCA-ITQ on paired rows of image and text features.

    1. Regularised CCA (Hotelling 1936; Hardoon et al. 2004): whiten each modality with
       (C + ridge)^(-1/2), take the SVD U S V^T of the whitened cross-covariance; the
       canonical directions are C_xx^(-1/2) U and C_yy^(-1/2) V, the correlations are S.
       The top c = min(bits, d_i, d_t) pairs are kept.
    2. Each direction is scaled by its correlation, as in CCA-ITQ (Gong et al. 2013, Sec. 3.2),
       so weakly correlated dimensions weigh less in the rotation.
    3. ITQ learns one rotation on the centred projections of both modalities stacked
       (2n x bits), so paired image and text rows are pushed towards the same code.

    bits > c (e.g. 128 bits from 10-d LDA text): only c canonical pairs exist, so the scaled
    projection is zero-padded to `bits` columns before ITQ. The rotation then spreads the c
    canonical dimensions over all bits: each bit is a learned hyperplane in the shared
    c-dimensional canonical space (some bits are correlated; nothing random is added, and the
    result is deterministic for a seed).
    """
    image_x = np.asarray(image_x)
    text_x = np.asarray(text_x)
    if image_x.ndim != 2 or text_x.ndim != 2 or len(image_x) != len(text_x):
        raise ValueError(f"need paired 2-D inputs, got shapes {image_x.shape} and {text_x.shape}")
    if len(image_x) < 2:
        raise ValueError("need at least 2 training pairs")
    if bits < 1:
        raise ValueError(f"bits must be >= 1, got {bits}")
    if reg <= 0:
        raise ValueError(f"reg must be > 0, got {reg}")

    image_mean, image_cov = _mean_and_covariance(image_x)
    text_mean, text_cov = _mean_and_covariance(text_x)
    image_whiten = _inverse_sqrt(image_cov, reg)
    text_whiten = _inverse_sqrt(text_cov, reg)
    cross = image_whiten @ _cross_covariance(image_x, image_mean, text_x, text_mean) @ text_whiten
    left, singular, right_t = np.linalg.svd(cross, full_matrices=False)
    c = min(bits, len(singular))
    correlations = np.clip(singular[:c], 0.0, 1.0)
    image_directions = image_whiten @ left[:, :c]
    text_directions = text_whiten @ right_t[:c].T

    padding = np.zeros((c, bits))
    padding[:, :c] = np.diag(correlations)
    image_projection = image_directions @ padding  # d_i x bits
    text_projection = text_directions @ padding  # d_t x bits

    stacked = np.concatenate(
        [_centred_product(image_x, image_mean, image_projection), _centred_product(text_x, text_mean, text_projection)]
    )
    rotation = _itq_rotation(stacked, iterations, np.random.default_rng(seed))

    image_weight = image_projection @ rotation
    text_weight = text_projection @ rotation
    return CcaItq(
        image_weight=image_weight,
        image_bias=-image_mean @ image_weight,
        text_weight=text_weight,
        text_bias=-text_mean @ text_weight,
        rotation=rotation,
        correlations=correlations,
        image_directions=image_directions,
        text_directions=text_directions,
    )

"""Loss terms of the three deep methods, each a function of code representations and a target.

Bi_NCMH's and DJSRH's sums over pairs are taken as means (this only rescales their balancing
weights and keeps them independent of batch size); DCMH's terms are sums, and its method divides
the total by the number of pairs, as its reference code does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sign_codes(x: torch.Tensor) -> torch.Tensor:
    """Element-wise sign with sgn(0) = +1, so every code is in {-1, +1}."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def similarity_regression(target: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean of (S_ij - a_i^T b_j)^2: Bi_NCMH's inter-modal loss Psi_1 (eq. 6) for a = h_v,
    b = h_t, and each half of the intra-modal loss Psi_2 (eq. 7) for a, b of one modality."""
    return ((target - a @ b.T) ** 2).mean()


def relaxation_loss(h: torch.Tensor) -> torch.Tensor:
    """Bi_NCMH's relaxation constraint Psi_3 (eq. 8-10): mean of (1 - h_i^T h_i^b)^2, with
    h_i L2-normalised (eq. 2) and h_i^b = sgn(h_i) / ||sgn(h_i)||_2 = sgn(h_i) / sqrt(L) (eq. 9)."""
    hb = sign_codes(h.detach()) / math.sqrt(h.shape[1])
    return ((1.0 - (h * hb).sum(dim=1)) ** 2).mean()


def negative_log_likelihood(similarity: torch.Tensor, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """DCMH's likelihood term -sum_ij (S_ij Theta_ij - log(1 + e^Theta_ij)), Theta = 1/2 F^T G,
    summed over pairs (softplus keeps large |Theta| stable)."""
    theta = 0.5 * (f @ g.T)
    return (F.softplus(theta) - similarity * theta).sum()


def quantization_loss(codes: torch.Tensor, representation: torch.Tensor) -> torch.Tensor:
    """DCMH's quantization term ||B - F||_F^2 over the given items."""
    return ((codes - representation) ** 2).sum()


def balance_loss(representation_sum: torch.Tensor) -> torch.Tensor:
    """DCMH's bit-balance term ||F 1||^2, given F 1 (the sum of F over all training items)."""
    return (representation_sum**2).sum()


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos(A, B)_ij = a_i^T b_j / (||a_i|| ||b_j||) (DJSRH sec. 3)."""
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


def reconstruction_loss(target: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """DJSRH's reconstruction ||mu S - cos(B_a, B_b)||_F^2 (eq. 4) as a mean over pairs;
    `target` is mu S."""
    return F.mse_loss(cosine_matrix(a, b), target)

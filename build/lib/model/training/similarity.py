"""Similarity targets the methods regress their code inner products onto."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _as_float(labels: torch.Tensor) -> torch.Tensor:
    return labels.to(torch.float32)


def bi_direction_similarity(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """Bi_NCMH's multi-level similarity (Sun et al. 2022, eq. 3-4), n x m in [-1, 1].

    Pairs that share at least one category use the consistent direction,
    S = (K - |y_i XOR y_j|) / K in (0, 1] (eq. 3); pairs that share none use the
    inconsistent direction, S = -|y_p XOR y_q| / K in [-1, 0] (eq. 4).
    """
    a, b = _as_float(labels_a), _as_float(labels_b)
    k = a.shape[1]
    shared = a @ b.T
    xor = a.sum(1, keepdim=True) + b.sum(1).unsqueeze(0) - 2.0 * shared
    return torch.where(shared > 0, (k - xor) / k, -xor / k)


def binary_similarity(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """DCMH's cross-modal similarity: S_ij = 1 iff items i and j share a label, else 0."""
    return ((_as_float(labels_a) @ _as_float(labels_b).T) > 0).to(torch.float32)


def cosine_similarity_matrix(features: torch.Tensor, rescale: bool) -> torch.Tensor:
    """Cosine affinity of one modality's original features (DJSRH sec. 3.1).

    With `rescale` the [0, 1] cosines of non-negative features are mapped by S <- 2S - 1
    back to [-1, 1] (DJSRH sec. 4.3), which keeps some hash bits from being unchangeable.
    """
    unit = F.normalize(features.to(torch.float32), dim=1)
    s = unit @ unit.T
    return 2.0 * s - 1.0 if rescale else s


def joint_semantics_affinity(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    beta: float,
    eta: float,
    rescale_image: bool,
    rescale_text: bool,
) -> torch.Tensor:
    """DJSRH's joint-semantics affinity S = C(S_I, S_T) (Su et al. 2019, eq. 2-3).

    S~ = beta S_I + (1 - beta) S_T (eq. 2), then one diffusion step
    S = (1 - eta) S~ + eta S~ S~^T / m (eq. 3) over the m items of the batch.
    """
    s_i = cosine_similarity_matrix(image_features, rescale_image)
    s_t = cosine_similarity_matrix(text_features, rescale_text)
    s_tilde = beta * s_i + (1.0 - beta) * s_t
    m = s_tilde.shape[0]
    return (1.0 - eta) * s_tilde + eta * (s_tilde @ s_tilde.T) / m

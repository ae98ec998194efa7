"""Bi_NCMH (Sun, Latapie, Liu, Yan, CVPRW 2022).

Target: the bi-direction similarity of eq. 3-4 (`model.training.similarity.bi_direction_similarity`).
Representations: L2-normalised hash representations h = g / ||g|| (eq. 2).
Loss: alpha Psi_1 + beta Psi_2 + gamma Psi_3 (eq. 11) with the inter-modal (eq. 6),
intra-modal (eq. 7) and relaxation (eq. 8-10) terms. Each batch is paired with the latest
representations of every training item, so the sums over i, j run over the whole training set.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from model.training.losses import relaxation_loss, similarity_regression
from model.training.methods.base import Batch, HashMethod, MethodParams, TrainState
from model.training.similarity import bi_direction_similarity


class BiNcmhParams(MethodParams):
    """Balancing weights of eq. 11 (the paper grid-searches them; defaults chosen on a
    validation split carved from the training data, see docs/results.md)."""

    alpha: float = Field(1.0, ge=0, description="weight of the inter-modal loss Psi_1 (eq. 6)")
    beta: float = Field(0.1, ge=0, description="weight of the intra-modal loss Psi_2 (eq. 7)")
    gamma: float = Field(0.1, ge=0, description="weight of the relaxation loss Psi_3 (eq. 10)")


class BiNcmh(HashMethod):
    """Bi-direction relation reasoning + normalised hash representations."""

    name = "bi_ncmh"
    supervised = True
    Params = BiNcmhParams
    params: BiNcmhParams

    def loss(self, image_repr: torch.Tensor, text_repr: torch.Tensor, batch: Batch, state: TrainState) -> dict[str, torch.Tensor]:
        p = self.params
        h_v, h_t = F.normalize(image_repr, dim=1), F.normalize(text_repr, dim=1)
        bank_v, bank_t = F.normalize(state.image_bank, dim=1), F.normalize(state.text_bank, dim=1)
        s = bi_direction_similarity(batch.labels, state.labels)
        inter = similarity_regression(s, h_v, bank_t) + similarity_regression(s, h_t, bank_v)
        intra = similarity_regression(s, h_v, bank_v) + similarity_regression(s, h_t, bank_t)
        relax = relaxation_loss(h_v) + relaxation_loss(h_t)
        total = p.alpha * inter + p.beta * intra + p.gamma * relax
        return {"loss": total, "inter": inter.detach(), "intra": intra.detach(), "relax": relax.detach()}

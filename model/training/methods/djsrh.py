"""DJSRH (Su, Zhong, Zhang, ICCV 2019), unsupervised: labels are never read.

Target: the joint-semantics affinity S = C(S_I, S_T) of the batch's original features
(eq. 2-3; `joint_semantics_affinity`), each cosine matrix rescaled by 2S - 1 when its features
are non-negative (sec. 4.3).
Loss: ||mu S - cos(B_I, B_T)||^2 + lambda1 ||mu S - cos(B_I, B_I)||^2
+ lambda2 ||mu S - cos(B_T, B_T)||^2 (eq. 5) with B = tanh(alpha H) and alpha = sqrt(epoch)
(eq. 7, Algorithm 1). Paper defaults below are its MIRFlickr values (Wiki: beta = 0.3,
lambda1 = lambda2 = 0.3).
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from model.training.losses import reconstruction_loss
from model.training.methods.base import Batch, HashMethod, MethodParams, TrainState
from model.training.similarity import joint_semantics_affinity


class DjsrhParams(MethodParams):
    """DJSRH's hyper-parameters (sec. 4.3)."""

    beta: float = Field(0.9, ge=0, le=1, description="weight of the image affinity S_I in S~ (eq. 2)")
    eta: float = Field(0.4, ge=0, le=1, description="diffusion weight of S~ S~^T / m (eq. 3)")
    mu: float = Field(1.5, gt=0, description="scale of the reconstructed affinity mu S (eq. 4)")
    lambda1: float = Field(0.1, ge=0, description="weight of the image-image reconstruction (eq. 5)")
    lambda2: float = Field(0.1, ge=0, description="weight of the text-text reconstruction (eq. 5)")


class Djsrh(HashMethod):
    """Deep joint-semantics reconstructing hashing."""

    name = "djsrh"
    supervised = False
    Params = DjsrhParams
    params: DjsrhParams

    def loss(
        self, image_repr: torch.Tensor, text_repr: torch.Tensor, batch: Batch, state: TrainState
    ) -> dict[str, torch.Tensor]:
        p = self.params
        s = joint_semantics_affinity(
            batch.image_features,
            batch.text_features,
            beta=p.beta,
            eta=p.eta,
            rescale_image=bool((batch.image_features >= 0).all()),
            rescale_text=bool((batch.text_features >= 0).all()),
        )
        alpha = math.sqrt(max(state.epoch, 1))
        b_i, b_t = torch.tanh(alpha * image_repr), torch.tanh(alpha * text_repr)
        target = p.mu * s
        cross = reconstruction_loss(target, b_i, b_t)
        intra_i = reconstruction_loss(target, b_i, b_i)
        intra_t = reconstruction_loss(target, b_t, b_t)
        total = cross + p.lambda1 * intra_i + p.lambda2 * intra_t
        return {"loss": total, "cross": cross.detach(), "intra_i": intra_i.detach(), "intra_t": intra_t.detach()}

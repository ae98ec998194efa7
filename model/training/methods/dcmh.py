"""DCMH (Jiang & Li, CVPR 2017).

Target: the binary similarity S_ij = 1 iff i and j share a label (`binary_similarity`).
Loss: -sum_ij (S_ij Theta_ij - log(1 + e^Theta_ij)) + gamma (||B - F||^2 + ||B - G||^2)
+ eta (||F 1||^2 + ||G 1||^2), Theta_ij = 1/2 F_i^T G_j, B = sign(F + G).
DCMH alternates: the image net with G fixed, the text net with F fixed, then B. Here each batch
updates both nets, each against the other modality's stored (fixed, detached) representations
of all training items, which gives each net the same gradient as its alternating step; B is
recomputed as sign(F + G) after every epoch. As in the reference code the total is divided by
(batch size x training-set size).
"""

from __future__ import annotations

import torch
from pydantic import Field

from model.training.losses import (
    balance_loss,
    negative_log_likelihood,
    quantization_loss,
    sign_codes,
)
from model.training.methods.base import Batch, HashMethod, MethodParams, TrainState
from model.training.similarity import binary_similarity


class DcmhParams(MethodParams):
    """DCMH's weights. The paper's values are gamma = eta = 1 (`--hp gamma=1 --hp eta=1`): with
    Adam on these heads they collapse the codes (MIRFLICKR sample, 32 bits: MAP 0.43 / 0.48
    against chance 0.47; Wikipedia LDA validation at 64 bits: 0.155 / 0.141 against chance 0.109).
    The defaults won `python bench/tune.py --defaults --datasets mirflickr,wikipedia-lda` (mean
    validation MAP over the MIRFLICKR sample's fold-0 training rows and Wikipedia's official
    training rows at the `cmhash train` defaults): (0.1, 0.01) 0.596; (0.01, 0.001) 0.596;
    (1, 1) 0.406; (0.1, 0.1) 0.392."""

    gamma: float = Field(0.1, ge=0, description="weight of the quantization term ||B - F||^2 + ||B - G||^2 (paper: 1)")
    eta: float = Field(0.01, ge=0, description="weight of the bit-balance term ||F 1||^2 + ||G 1||^2 (paper: 1)")


class Dcmh(HashMethod):
    """Deep cross-modal hashing with a negative log-likelihood on code inner products."""

    name = "dcmh"
    supervised = True
    Params = DcmhParams
    params: DcmhParams

    def start(self, state: TrainState) -> None:
        self.codes = sign_codes(state.image_bank + state.text_bank)

    def end_epoch(self, state: TrainState) -> None:
        self.codes = sign_codes(state.image_bank + state.text_bank)

    def _one_side(
        self, own: torch.Tensor, own_bank: torch.Tensor, other_bank: torch.Tensor, s: torch.Tensor, index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        nll = negative_log_likelihood(s, own, other_bank)
        quant = quantization_loss(self.codes[index], own)
        column_sum = own_bank.sum(0) - own_bank[index].sum(0) + own.sum(0)
        return nll, quant, balance_loss(column_sum)

    def loss(
        self, image_repr: torch.Tensor, text_repr: torch.Tensor, batch: Batch, state: TrainState
    ) -> dict[str, torch.Tensor]:
        p = self.params
        s = binary_similarity(batch.labels, state.labels)
        nll_x, quant_x, bal_x = self._one_side(image_repr, state.image_bank, state.text_bank, s, batch.index)
        nll_y, quant_y, bal_y = self._one_side(text_repr, state.text_bank, state.image_bank, s, batch.index)
        pairs = float(len(batch.index) * len(state.labels))
        nll, quant, bal = (nll_x + nll_y) / pairs, (quant_x + quant_y) / pairs, (bal_x + bal_y) / pairs
        total = nll + p.gamma * quant + p.eta * bal
        return {"loss": total, "nll": nll.detach(), "quant": quant.detach(), "balance": bal.detach()}

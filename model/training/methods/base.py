"""What every deep hashing method gives the shared training loop: a similarity target and a loss."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict


class MethodParams(BaseModel):
    """Base of each method's hyper-parameters (paper defaults; unknown keys are an error)."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class Batch:
    """One training mini-batch; `index` are rows of the training set (0..n-1)."""

    index: torch.Tensor  # int64 rows of the training set in this batch
    labels: torch.Tensor  # b x K float multi-hot (unused by unsupervised methods)
    image_features: torch.Tensor  # b x d_i original image features (DJSRH's F_I)
    text_features: torch.Tensor  # b x d_t original text features (DJSRH's F_T)


@dataclass
class TrainState:
    """State shared across steps: labels of all training items and the latest representation of
    each (the F and G buffers of DCMH's alternating scheme), refreshed as batches pass."""

    labels: torch.Tensor  # n x K float multi-hot of the training set
    image_bank: torch.Tensor  # n x L latest image representations (detached)
    text_bank: torch.Tensor  # n x L latest text representations (detached)
    epoch: int = 0  # 1-based epoch currently running

    def update(self, index: torch.Tensor, image_repr: torch.Tensor, text_repr: torch.Tensor) -> None:
        """Write the batch's fresh representations into the banks."""
        self.image_bank[index] = image_repr.detach()
        self.text_bank[index] = text_repr.detach()


class HashMethod(ABC):
    """A deep cross-modal hashing method: its hyper-parameters, loss and per-epoch updates."""

    name: ClassVar[str]
    supervised: ClassVar[bool]
    Params: ClassVar[type[MethodParams]]

    def __init__(self, params: MethodParams) -> None:
        self.params = params

    def start(self, state: TrainState) -> None:  # noqa: B027 (an optional hook: most methods need none)
        """Called once before the first epoch, with the banks filled by an initial pass."""

    @abstractmethod
    def loss(
        self, image_repr: torch.Tensor, text_repr: torch.Tensor, batch: Batch, state: TrainState
    ) -> dict[str, torch.Tensor]:
        """Loss terms for one batch; key "loss" is the total that is minimised."""

    def end_epoch(self, state: TrainState) -> None:  # noqa: B027 (an optional hook)
        """Called after each epoch (DCMH updates its code matrix B here)."""

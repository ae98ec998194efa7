"""Hash encoders: per-modality heads that map an input (feature vector, or pixels through a
backbone) to an L-dimensional continuous hash representation whose sign is the code."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class HeadConfig:
    """Shape of one modality's hash head."""

    in_dim: int  # input feature dimension (backbone output, BoW size, SIFT, LDA...)
    bits: int  # code length L
    hidden: list[int] = field(default_factory=lambda: [4096])  # hidden layer widths; [] = linear
    dropout: float = 0.0  # dropout after each hidden layer during training


class FeatureStandardizer(nn.Module):
    """Fixed (x - mean) / std with training-set statistics, stored as buffers so an exported
    model carries its own input scaling."""

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, x: torch.Tensor) -> None:
        """Set mean and std from training features (std floored to avoid division by ~0)."""
        self.mean.copy_(x.mean(dim=0))
        self.std.copy_(x.std(dim=0).clamp_min(1e-6 + 1e-3 * float(x.std())))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class HashHead(nn.Module):
    """Standardise, MLP (ReLU) and a final linear layer to `bits` outputs: g = f(x; Theta) (Bi_NCMH eq. 1)."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        self.standardize = FeatureStandardizer(config.in_dim)
        layers: list[nn.Module] = []
        width = config.in_dim
        for h in config.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if config.dropout > 0:
                layers.append(nn.Dropout(config.dropout))
            width = h
        layers.append(nn.Linear(width, config.bits))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.mlp(self.standardize(x))
        return out


class CrossModalHasher(nn.Module):
    """Image and text encoders with matching `encode_image` / `encode_text`.

    The image branch is an optional backbone (pixels -> features) followed by a head; with a
    frozen backbone training runs on cached backbone features and only the head learns.
    """

    def __init__(self, image_head: HashHead, text_head: HashHead, image_backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.image_backbone = image_backbone
        self.image_head = image_head
        self.text_head = text_head

    @property
    def bits(self) -> int:
        return self.image_head.config.bits

    def encode_image(self, pixels_or_features: torch.Tensor) -> torch.Tensor:
        """Continuous hash representation of images: pixels when a backbone is attached."""
        x = pixels_or_features
        if self.image_backbone is not None:
            x = self.image_backbone(x)
        out: torch.Tensor = self.image_head(x)
        return out

    def encode_text(self, features: torch.Tensor) -> torch.Tensor:
        """Continuous hash representation of text feature vectors (BoW, LDA, embeddings)."""
        out: torch.Tensor = self.text_head(features)
        return out

    def head_configs(self) -> dict[str, dict[str, Any]]:
        """Head shapes, enough to rebuild the module from a checkpoint."""
        return {"image": asdict(self.image_head.config), "text": asdict(self.text_head.config)}


def build_hasher(image_dim: int, text_dim: int, bits: int, hidden: list[int], dropout: float = 0.0) -> CrossModalHasher:
    """The one factory for a hasher over feature inputs (attach a backbone for pixels)."""
    return CrossModalHasher(
        HashHead(HeadConfig(image_dim, bits, list(hidden), dropout)),
        HashHead(HeadConfig(text_dim, bits, list(hidden), dropout)),
    )

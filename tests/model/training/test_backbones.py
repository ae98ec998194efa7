"""model.training.backbones: offline pretrained EfficientNet-Lite and MiniLM, really using their weights."""

from __future__ import annotations

import socket
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from model.training.backbones import (
    EfficientNetLiteBackbone,
    MiniLMTextEmbedder,
    build_backbone,
    preprocess_for,
    weights_file,
)
from model.training.inputs import batch_tensor


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any download attempt (torch.hub, urllib, raw sockets) fails loudly."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLiteBackbone:
    return build_backbone("efficientnet-lite0").eval()


def _images() -> list[Image.Image]:
    """Two clearly different synthetic pictures: horizontal stripes and a radial blob."""
    yy, xx = np.mgrid[0:240, 0:320]
    stripes = np.stack([(yy // 20 % 2) * 255] * 3, axis=-1).astype(np.uint8)
    blob = np.exp(-((yy - 120) ** 2 + (xx - 160) ** 2) / 3000.0)
    blob_rgb = np.stack([blob * 255, blob * 120, 255 - blob * 255], axis=-1).astype(np.uint8)
    return [Image.fromarray(stripes), Image.fromarray(blob_rgb)]


def test_loads_offline_with_1280_d_output(no_network: None) -> None:
    backbone = build_backbone("efficientnet-lite0").eval()
    assert (backbone.feature_dim, backbone.input_size) == (1280, 224)
    assert backbone.preprocess == preprocess_for("efficientnet-lite0")
    with torch.inference_mode():
        out = backbone(batch_tensor(_images(), backbone.preprocess))
    assert out.shape == (2, 1280) and out.dtype == torch.float32


def test_lite2_loads_offline_at_260(no_network: None) -> None:
    backbone = build_backbone("efficientnet-lite2").eval()
    assert backbone.input_size == 260 and preprocess_for("efficientnet-lite2").size == 260
    with torch.inference_mode():
        out = backbone(batch_tensor(_images()[:1], backbone.preprocess))
    assert out.shape == (1, 1280)


def test_unknown_backbone_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="efficientnet-lite0"):
        build_backbone("resnet50")
    with pytest.raises(ValueError):
        build_backbone("efficientnet-lite3")


def test_state_dict_is_the_pretrained_file(lite0: EfficientNetLiteBackbone) -> None:
    saved = torch.load(weights_file("efficientnet-lite0"), map_location="cpu", weights_only=True)
    ours = lite0.state_dict()
    expected = {k: v for k, v in saved.items() if not k.startswith("_fc.")}
    assert {k.removeprefix("net.") for k in ours} == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(ours[f"net.{key}"], tensor), key


def test_activation_is_the_pretrained_relu6(lite0: EfficientNetLiteBackbone) -> None:
    kinds = {type(m).__name__ for m in lite0.modules()}
    assert "ReLU6" in kinds
    assert not kinds & {"Swish", "MemoryEfficientSwish", "SiLU"}
    # ReLU6 before the average pool bounds every feature to [0, 6]; Swish would not.
    with torch.inference_mode():
        out = lite0(torch.rand(2, 3, 224, 224) * 2 - 1)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 6.0


def test_different_images_give_different_features(lite0: EfficientNetLiteBackbone) -> None:
    with torch.inference_mode():
        a, b = lite0(batch_tensor(_images(), lite0.preprocess))
        again = lite0(batch_tensor(_images()[:1], lite0.preprocess))[0]
    torch.testing.assert_close(a, again, rtol=1e-4, atol=1e-5)  # deterministic in eval mode
    cosine = float(nn.functional.cosine_similarity(a, b, dim=0))
    assert cosine < 0.95
    assert float(a.std()) > 0.05 and float(b.std()) > 0.05  # not a degenerate constant vector


def test_classifier_is_dropped_and_parameters_train(lite0: EfficientNetLiteBackbone) -> None:
    assert isinstance(lite0.net._fc, nn.Identity)
    assert all(p.requires_grad for p in lite0.parameters())  # fine-tuning stays possible


def test_forward_exports_with_a_dynamic_batch(lite0: EfficientNetLiteBackbone) -> None:
    # torch.export underlies the ONNX exporter: it fails on Python data-dependent control flow.
    example = torch.rand(2, 3, 224, 224) * 2 - 1
    batch = torch.export.Dim("batch", min=1)
    exported = torch.export.export(lite0, (example,), dynamic_shapes=({0: batch},))
    other = torch.rand(3, 3, 224, 224) * 2 - 1
    with torch.inference_mode():
        torch.testing.assert_close(exported.module()(other), lite0(other), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def minilm() -> MiniLMTextEmbedder:
    return MiniLMTextEmbedder()


def test_minilm_gives_unit_384_d_vectors(minilm: MiniLMTextEmbedder) -> None:
    texts = ["a dog runs on the grass", "", "word " * 400]
    out = minilm.embed(texts)
    assert out.shape == (3, 384) and out.dtype == np.float32 and minilm.dim == 384
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert minilm.embed([]).shape == (0, 384)


def test_minilm_is_semantic_and_order_preserving(minilm: MiniLMTextEmbedder) -> None:
    texts = ["a dog runs on the grass", "stock market prices fell", "a puppy running in a field"]
    out = minilm.embed(texts, batch_size=2)
    dog, stocks, puppy = out
    assert dog @ puppy > dog @ stocks + 0.3
    assert puppy @ dog > puppy @ stocks + 0.3
    np.testing.assert_allclose(minilm.embed([texts[1]])[0], stocks, atol=1e-5)


def test_minilm_loads_offline(no_network: None) -> None:
    out = MiniLMTextEmbedder().embed(["offline"])
    assert out.shape == (1, 384)

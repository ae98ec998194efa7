"""Export a training run to a self-contained ONNX model directory that `model.runtime.encoder.Encoder`
serves without the training code: image.onnx, text.onnx (one file each, weights inside, dynamic
batch axis), model.json (`ModelInfo`) and, for MiniLM text, tokenizer.json.

Graphs: image.onnx maps "pixels" (B x 3 x S x S in [-1, 1], through the frozen EfficientNet-Lite)
or "features" (B x d) to "h" (B x bits); text.onnx maps "features" (a bag of words made on the
host, or given vectors) or "input_ids" / "attention_mask" (MiniLM, with mean pooling and L2
normalisation inside) to "h". Codes are h >= 0.

Everything is written to a staging folder inside the model directory, loaded back with ONNX
Runtime and compared with the PyTorch model; only a model that agrees is moved into place by
renames (model.json last), so readers never see a half-written model."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from model.runtime.encoder import Encoder
from model.runtime.errors import UserError
from model.runtime.model_dir import (
    FORMAT_VERSION,
    IMAGE_FILE,
    INFO_FILE,
    OUTPUT_NAME,
    TEXT_FILE,
    TOKENIZER_FILE,
    ImageInput,
    ModelInfo,
    SourceRun,
    TextInput,
    TokenizerSettings,
    model_checksum,
    sha256_bytes,
)
from model.runtime.text import BagOfWords
from model.training.backbones import (
    MiniLMTextEmbedder,
    build_backbone,
    preprocess_for,
    sentence_embedding,
)
from model.training.config import TrainConfig
from model.training.encoders import CrossModalHasher, HashHead
from model.training.train import load_checkpoint

__all__ = ["PARITY_TOLERANCE", "ExportError", "ModelInfo", "export_run", "relative_error"]

# Largest accepted max |h_onnx - h_torch| / max(1, max |h_torch|) in the post-export check.
PARITY_TOLERANCE = 1e-4
# Texts the post-export check encodes with both backends (accents, CJK, emoji, an over-long text).
_PROBE_TEXTS = [
    "a dog running on the beach",
    "Café naïve résumé, straße",
    "東京タワーの夜景",
    "sunset 🌅 over the sea",
    "",
    "sky " * 300,
]


class ExportError(UserError):
    """The run cannot be exported, or its ONNX graphs disagree with PyTorch; the message says why."""


@dataclass
class _Graph:
    """One graph to export: the module, example inputs and the ONNX input names."""

    module: nn.Module  # eval-mode module whose forward is the graph
    example: tuple[torch.Tensor, ...]  # example inputs (batch 2; shapes other than batch are fixed)
    input_names: list[str]  # ONNX names of the inputs, in forward order
    sequence_max: int | None = None  # axis 1 of every input is dynamic up to this (token sequences)


class _ImageGraph(nn.Module):
    """Pixels through the backbone (or feature vectors) into the image head: x -> h."""

    def __init__(self, head: HashHead, backbone: nn.Module | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h: torch.Tensor = self.head(x if self.backbone is None else self.backbone(x))
        return h


class _MiniLMGraph(nn.Module):
    """MiniLM tokens -> masked mean pooling -> L2 normalisation -> text head, as
    MiniLMTextEmbedder.embed followed by the head."""

    def __init__(self, transformer: nn.Module, head: HashHead) -> None:
        super().__init__()
        self.transformer = transformer
        self.head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        h: torch.Tensor = self.head(sentence_embedding(hidden, attention_mask))
        return h


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max(1, max |expected|): the parity figure checked after export."""
    if expected.size == 0:
        return 0.0
    return float(np.abs(actual - expected).max() / max(1.0, float(np.abs(expected).max())))


def _image_graph(model: CrossModalHasher, cfg: TrainConfig, ckpt: dict[str, Any]) -> tuple[_Graph, ImageInput]:
    """The image graph and its input description: the frozen backbone (the checkpoint's, or
    rebuilt from the config when only the head was trained) and the head for pixel runs, the
    head alone for runs on given feature vectors."""
    head = model.image_head
    if not ckpt["image_from_pixels"]:
        example = torch.randn(2, head.config.in_dim)
        return _Graph(_ImageGraph(head, None).eval(), (example,), ["features"]), ImageInput(
            kind="features", dim=head.config.in_dim
        )
    name = ckpt["image_backbone"] or cfg.image_backbone
    backbone = model.image_backbone if model.image_backbone is not None else build_backbone(name)
    backbone.eval().requires_grad_(False)
    pre = preprocess_for(name)
    example = torch.rand(2, 3, pre.size, pre.size) * 2 - 1  # exactly S x S: the 'same' paddings are static
    info = ImageInput(kind="pixels", dim=head.config.in_dim, preprocess=pre.to_json(), backbone=name)
    return _Graph(_ImageGraph(head, backbone).eval(), (example,), ["pixels"]), info


def _text_graph(
    model: CrossModalHasher, cfg: TrainConfig, ckpt: dict[str, Any], staging: Path
) -> tuple[_Graph, TextInput, MiniLMTextEmbedder | None]:
    """The text graph and its input description; for MiniLM also the embedder (the PyTorch
    reference of the check) and tokenizer.json copied into `staging`."""
    head = model.text_head
    dim = head.config.in_dim
    if cfg.text_encoder == "minilm":
        embedder = MiniLMTextEmbedder()
        source = Path(embedder.tokenizer.name_or_path) / TOKENIZER_FILE
        if not source.is_file():
            raise ExportError(f"the MiniLM tokenizer file {source} is missing")
        shutil.copyfile(source, staging / TOKENIZER_FILE)
        settings = TokenizerSettings(
            file=TOKENIZER_FILE,
            sha256=sha256_bytes((staging / TOKENIZER_FILE).read_bytes()),
            max_length=embedder.max_seq_length,
            pad_id=int(embedder.tokenizer.pad_token_id),
            pad_token=str(embedder.tokenizer.pad_token),
        )
        enc = embedder.tokenizer(
            _PROBE_TEXTS[:2], padding=True, truncation=True, max_length=embedder.max_seq_length, return_tensors="pt"
        )
        graph = _Graph(
            _MiniLMGraph(embedder.model, head).eval(),
            (enc["input_ids"], enc["attention_mask"]),
            ["input_ids", "attention_mask"],
            sequence_max=int(embedder.model.config.max_position_embeddings),
        )
        return graph, TextInput(kind="minilm", dim=dim, tokenizer=settings), embedder
    bow = ckpt.get("bag_of_words")
    if bow is not None and len(BagOfWords.from_json(bow)) != dim:
        raise ExportError(f"the run's vocabulary has {len(bow['vocabulary'])} words but its text head reads {dim}")
    graph = _Graph(head.eval(), (torch.rand(2, dim),), ["features"])
    if bow is not None:
        return graph, TextInput(kind="bow", dim=dim, bag_of_words=bow), None
    return graph, TextInput(kind="features", dim=dim), None


def _strip_source_locations(graph: onnx.GraphProto) -> None:
    """Drop the exporter's per-node debug metadata (stack traces with absolute paths and line
    numbers, FX node text), so the file, its sha256 and the model checksum depend on the graph
    and the weights, not on where the code lives or which line a forward is on."""
    for node in graph.node:
        node.ClearField("metadata_props")
        node.doc_string = ""
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                _strip_source_locations(subgraph)


def _export_graph(graph: _Graph, path: Path, opset: int | None) -> int:
    """Write `graph` to `path` as one self-contained ONNX file (weights inside, dynamic batch
    axis); return its ai.onnx opset."""
    batch = torch.export.Dim("batch")
    axes: dict[int, torch.export.Dim] = {0: batch}
    if graph.sequence_max is not None:
        axes[1] = torch.export.Dim("sequence", max=graph.sequence_max)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")  # Dims shared by inputs
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)", category=FutureWarning)
        program = torch.onnx.export(
            graph.module,
            graph.example,
            input_names=graph.input_names,
            output_names=[OUTPUT_NAME],
            dynamic_shapes=tuple(dict(axes) for _ in graph.example),
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    assert program is not None  # dynamo=True always returns an ONNXProgram
    proto = program.model_proto
    _strip_source_locations(proto.graph)
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return int(next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")))


@torch.no_grad()
def _check_parity(
    staging: Path, image: _Graph, text: _Graph, info: ModelInfo, embedder: MiniLMTextEmbedder | None
) -> None:
    """Load the staged directory with ONNX Runtime and compare its representations with PyTorch
    on a few inputs (batch 3, unlike the export example); raise ExportError beyond tolerance."""
    encoder = Encoder.load(staging, device="cpu")
    generator = torch.Generator().manual_seed(0)
    if info.image.kind == "pixels":
        x = torch.rand(3, *image.example[0].shape[1:], generator=generator) * 2 - 1
    else:
        assert isinstance(image.module, _ImageGraph)
        head = image.module.head
        x = head.standardize.mean + head.standardize.std * torch.randn(3, info.image.dim, generator=generator)
    checks = {"image": (encoder.image_representations(x.numpy()), image.module(x).numpy())}
    if info.text.kind == "minilm":
        assert embedder is not None
        assert isinstance(text.module, _MiniLMGraph)
        reference = text.module.head(torch.from_numpy(embedder.embed(_PROBE_TEXTS))).numpy()
        checks["text"] = (encoder.text_representations(_PROBE_TEXTS), reference)
    elif info.text.kind == "bow":
        bow = BagOfWords.from_json(info.text.bag_of_words or {})
        texts = [" ".join(bow.vocabulary[i::7][:5]) for i in range(3)] + _PROBE_TEXTS[:1]
        reference = text.module(torch.from_numpy(bow.transform(texts))).numpy()
        checks["text"] = (encoder.text_representations(texts), reference)
    else:
        text_head = text.module
        assert isinstance(text_head, HashHead)
        t = text_head.standardize.mean + text_head.standardize.std * torch.randn(3, info.text.dim, generator=generator)
        checks["text"] = (encoder.text_feature_representations(t.numpy()), text_head(t).numpy())
    for name, (actual, expected) in checks.items():
        error = relative_error(actual, expected)
        if not error <= PARITY_TOLERANCE:
            raise ExportError(
                f"{name}.onnx disagrees with PyTorch: relative max error {error:.3g} > {PARITY_TOLERANCE:g}"
            )


def _install(staging: Path, out_dir: Path, names: list[str]) -> None:
    """Move the staged files into `out_dir` by atomic renames, model.json last (after removing
    the old one, so the directory never shows an old description over new graphs), and drop a
    stale tokenizer file."""
    (out_dir / INFO_FILE).unlink(missing_ok=True)
    for name in names:
        os.replace(staging / name, out_dir / name)
    if TOKENIZER_FILE not in names:
        (out_dir / TOKENIZER_FILE).unlink(missing_ok=True)
    os.replace(staging / INFO_FILE, out_dir / INFO_FILE)


def export_run(run_dir: Path, out_dir: Path, opset: int | None = None) -> ModelInfo:
    """Export RUN_DIR (written by `cmhash train`) to the model directory `out_dir`; `opset`:
    ai.onnx opset to target (None: the exporter's default). Raises ExportError for a directory
    without a checkpoint or graphs that disagree with PyTorch."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    checkpoint = run_dir / "checkpoint.pt"
    if not checkpoint.is_file():
        raise ExportError(f"{run_dir} is not a run directory (no checkpoint.pt)")
    try:
        model, cfg, ckpt = load_checkpoint(checkpoint)
    except Exception as exc:  # torch.load and the model rebuild fail in many ways on a bad file
        raise ExportError(f"cannot load {checkpoint}: {exc}") from exc
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        image, image_input = _image_graph(model, cfg, ckpt)
        text, text_input, embedder = _text_graph(model, cfg, ckpt, staging)
        opsets = {
            _export_graph(image, staging / IMAGE_FILE, opset),
            _export_graph(text, staging / TEXT_FILE, opset),
        }
        if len(opsets) != 1:
            raise ExportError(f"the two graphs were exported with different opsets {sorted(opsets)}")
        image_sha = sha256_bytes((staging / IMAGE_FILE).read_bytes())
        text_sha = sha256_bytes((staging / TEXT_FILE).read_bytes())
        info = ModelInfo(
            format_version=FORMAT_VERSION,
            method=cfg.method,
            bits=model.bits,
            image=image_input,
            text=text_input,
            source=SourceRun(path=str(run_dir.resolve()), config=json.loads(cfg.model_dump_json())),
            opset=opsets.pop(),
            image_onnx_sha256=image_sha,
            text_onnx_sha256=text_sha,
            checksum=model_checksum(model.bits, image_input, text_input, image_sha, text_sha),
        )
        (staging / INFO_FILE).write_text(info.model_dump_json(indent=2), encoding="utf-8")
        _check_parity(staging, image, text, info, embedder)
        names = [IMAGE_FILE, TEXT_FILE] + ([TOKENIZER_FILE] if text_input.kind == "minilm" else [])
        _install(staging, out_dir, names)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return info

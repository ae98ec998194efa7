"""ONNX export: the graphs ONNX Runtime runs agree with the PyTorch model they came from (the
oracle: model.training.train.load_checkpoint + the backbone, MiniLMTextEmbedder for MiniLM text, and the
codes the training run wrote), model.json describes the run, the checksum identifies the
weights, a graph that disagrees never ships, and `cmhash export` wraps it all."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from model.runtime.encoder import Encoder
from model.runtime.image import load_image, to_array
from model.runtime.model_dir import ModelInfo
from model.runtime.text import BagOfWords
from model.training.backbones import MiniLMTextEmbedder, build_backbone, preprocess_for
from model.training.config import REPO_ROOT, TrainConfig, shared_data_root
from model.training.data import load_dataset
from model.training.data.mirflickr import load_mirflickr
from model.training.export import PARITY_TOLERANCE, ExportError, export_run
from model.training.run import train_run
from model.training.train import load_checkpoint
from service.cli import app
from tests.tiny_data import N_ITEMS, N_QUERY, item_text

BITS = 16
runner = CliRunner()
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Texts beyond the training captions: unseen words, accents, CJK, emoji, empty, over-long.
EXTRA_TEXTS = [
    "a red circle",
    "completely unknown words",
    "Café naïve résumé",
    "東京タワーの夜景",
    "sunset 🌅 over the sea",
    "",
    "blue " * 400,
]


def plain(text: str) -> str:
    return " ".join(ANSI.sub("", text).split())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# The tests' own parity bounds, written here and never imported from model.training.export (a
# test that reads the exporter's PARITY_TOLERANCE passes however far it is loosened). ONNX
# Runtime and PyTorch run the same float32 graph, so they differ by float32 rounding (measured on
# the tiny model: 4e-6 of max |h| for images, 0 for texts). 1e-4 leaves a 25x margin for other
# CPUs and kernels and is still 200x below a 2 % error. A code bit can only flip where |h| is within that rounding of zero:
# among the few hundred bits of a test at most one (none was seen), never one beyond the margin.
MAX_RELATIVE_ERROR = 1e-4
MAX_FLIPPED_BITS = 1


def test_exporter_parity_check_is_not_looser_than_the_tests() -> None:
    assert 0 < PARITY_TOLERANCE <= MAX_RELATIVE_ERROR


def relative_diff(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / max(1.0, float(np.abs(expected).max())))


def flips_outside_margin(codes_bits: np.ndarray, h_torch: np.ndarray) -> tuple[int, int]:
    """(bits whose sign differs from PyTorch's, those of them where |h_torch| exceeds the margin:
    1e-3 of the largest |h|, far above float32 rounding between backends)."""
    margin = 1e-3 * max(1.0, float(np.abs(h_torch).max()))
    flipped = codes_bits != (h_torch >= 0)
    return int(flipped.sum()), int((flipped & (np.abs(h_torch) > margin)).sum())


def code_bits(packed: np.ndarray, bits: int = BITS) -> np.ndarray:
    """Packed uint8 codes -> n x bits bool (bit 1 = True), independently of model.runtime.codes."""
    return np.unpackbits(packed, axis=1)[:, :bits].astype(bool)


def tiny_image_paths(manifest: Path) -> list[Path]:
    return [manifest.parent / "img" / f"{i:02d}.png" for i in range(N_ITEMS)]


@torch.no_grad()
def torch_image_h(run_dir: Path, paths: list[Path]) -> np.ndarray:
    """The PyTorch oracle: checkpoint heads + the frozen backbone on the shared preprocessing."""
    model, cfg, _ = load_checkpoint(run_dir / "checkpoint.pt")
    pre = preprocess_for(cfg.image_backbone)
    x = torch.from_numpy(np.stack([to_array(load_image(p), pre) for p in paths]))
    return model.image_head(build_backbone(cfg.image_backbone).eval()(x)).numpy()


@torch.no_grad()
def torch_text_h(run_dir: Path, texts: list[str]) -> np.ndarray:
    model, _, ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    return model.text_head(torch.from_numpy(BagOfWords.from_json(ckpt["bag_of_words"]).transform(texts))).numpy()


# 1. model.json and the graphs ---------------------------------------------------------------


def test_model_json_describes_the_run(tiny_model_dir: Path, tiny_run: Path) -> None:
    info = json.loads((tiny_model_dir / "model.json").read_text())
    _, _, ckpt = load_checkpoint(tiny_run / "checkpoint.pt")
    assert sorted(p.name for p in tiny_model_dir.iterdir()) == ["image.onnx", "model.json", "text.onnx"]
    assert (info["format_version"], info["method"], info["bits"]) == (1, "bi_ncmh", BITS)
    assert info["image"] == {
        "kind": "pixels",
        "dim": 1280,
        "preprocess": {"size": 224, "resize": 256},
        "backbone": "efficientnet-lite0",
    }
    assert info["text"]["kind"] == "bow" and info["text"]["tokenizer"] is None
    assert info["text"]["bag_of_words"] == ckpt["bag_of_words"]
    assert info["text"]["dim"] == len(ckpt["bag_of_words"]["vocabulary"])
    assert Path(info["source"]["path"]) == tiny_run.resolve()
    assert info["source"]["config"] == json.loads((tiny_run / "config.json").read_text())
    assert info["image_onnx_sha256"] == sha256(tiny_model_dir / "image.onnx")
    assert info["text_onnx_sha256"] == sha256(tiny_model_dir / "text.onnx")
    assert re.fullmatch(r"[0-9a-f]{64}", info["checksum"])
    assert ModelInfo.model_validate(info).checksum == info["checksum"]


def test_graphs_are_self_contained_with_a_dynamic_batch(tiny_model_dir: Path) -> None:
    info = json.loads((tiny_model_dir / "model.json").read_text())
    expected = {"image.onnx": ("pixels", [None, 3, 224, 224]), "text.onnx": ("features", [None, info["text"]["dim"]])}
    for name, (input_name, shape) in expected.items():
        proto = onnx.load(str(tiny_model_dir / name))
        onnx.checker.check_model(proto)
        assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [info["opset"]]
        assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
        (graph_input,) = proto.graph.input
        dims = graph_input.type.tensor_type.shape.dim
        assert graph_input.name == input_name
        assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert dims[0].dim_param and not dims[0].HasField("dim_value")  # symbolic batch
        assert [d.dim_value for d in dims[1:]] == shape[1:]
        (output,) = proto.graph.output
        out_dims = output.type.tensor_type.shape.dim
        assert output.name == "h" and out_dims[0].dim_param == dims[0].dim_param and out_dims[1].dim_value == BITS


def test_graphs_carry_no_source_locations(tiny_model_dir: Path) -> None:
    """The exporter's stack traces (absolute paths, line numbers) are stripped, so the files and
    the checksum do not change when the code moves or is edited elsewhere."""
    for name in ("image.onnx", "text.onnx"):
        data = (tiny_model_dir / name).read_bytes()
        assert b"stack_trace" not in data and str(REPO_ROOT).encode() not in data, name
        assert all(not node.metadata_props for node in onnx.load(str(tiny_model_dir / name)).graph.node)


# 2. parity with PyTorch ---------------------------------------------------------------------


def test_image_parity_with_pytorch(tiny_model_dir: Path, tiny_run: Path, tiny_manifest: Path) -> None:
    paths = tiny_image_paths(tiny_manifest)
    expected = torch_image_h(tiny_run, paths)
    encoder = Encoder.load(tiny_model_dir, device="cpu")
    arrays = np.stack([encoder.preprocess_image(p) for p in paths])
    h = encoder.image_representations(arrays)
    assert h.shape == (N_ITEMS, BITS) and h.dtype == np.float32
    assert relative_diff(h, expected) < MAX_RELATIVE_ERROR
    flipped, outside = flips_outside_margin(code_bits(encoder.encode_images(paths)), expected)
    assert outside == 0 and flipped <= MAX_FLIPPED_BITS, (flipped, outside)


def test_text_parity_with_pytorch(tiny_model_dir: Path, tiny_run: Path) -> None:
    texts = [item_text(i) for i in range(N_ITEMS)] + EXTRA_TEXTS
    expected = torch_text_h(tiny_run, texts)
    encoder = Encoder.load(tiny_model_dir, device="cpu")
    h = encoder.text_representations(texts)
    assert relative_diff(h, expected) < MAX_RELATIVE_ERROR
    flipped, outside = flips_outside_margin(code_bits(encoder.encode_texts(texts)), expected)
    assert outside == 0 and flipped <= MAX_FLIPPED_BITS, (flipped, outside)


def test_codes_match_the_training_run(tiny_model_dir: Path, tiny_run: Path, tiny_manifest: Path) -> None:
    """The codes `cmhash train` wrote (from cached backbone features) and the ONNX codes both
    agree with PyTorch away from zero."""
    with np.load(tiny_run / "codes.npz") as z:
        saved = {k: z[k] for k in z.files}
    split = json.loads((tiny_run / "split.json").read_text())
    assert len(split["query"]) == N_QUERY
    encoder = Encoder.load(tiny_model_dir, device="cpu")
    paths = tiny_image_paths(tiny_manifest)
    for part in ("query", "retrieval"):
        images, texts = [paths[i] for i in split[part]], [item_text(i) for i in split[part]]
        for onnx_codes, saved_codes, expected in (
            (encoder.encode_images(images), saved[f"{part}_image_codes"], torch_image_h(tiny_run, images)),
            (encoder.encode_texts(texts), saved[f"{part}_text_codes"], torch_text_h(tiny_run, texts)),
        ):
            assert flips_outside_margin(saved_codes > 0, expected)[1] == 0, part
            assert flips_outside_margin(code_bits(onnx_codes), expected)[1] == 0, part


def test_features_model_parity_with_pytorch(tiny_features_model_dir: Path, tiny_features_run: Path) -> None:
    model, cfg, _ = load_checkpoint(tiny_features_run / "checkpoint.pt")
    ds = load_dataset("wikipedia", cfg.data_path())
    encoder = Encoder.load(tiny_features_model_dir, device="cpu")
    with torch.no_grad():
        expected_image = model.image_head(torch.from_numpy(ds.image_features)).numpy()
        expected_text = model.text_head(torch.from_numpy(ds.text_features)).numpy()
    assert relative_diff(encoder.image_representations(ds.image_features), expected_image) < MAX_RELATIVE_ERROR
    assert relative_diff(encoder.text_feature_representations(ds.text_features), expected_text) < MAX_RELATIVE_ERROR
    for packed, expected in (
        (encoder.encode_image_features(ds.image_features), expected_image),
        (encoder.encode_text_features(ds.text_features), expected_text),
    ):
        assert flips_outside_margin(code_bits(packed), expected)[1] == 0


# 3. MiniLM text ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_run(tiny_manifest: Path, tmp_path_factory) -> Path:
    """A short Bi_NCMH run with MiniLM text embeddings on the tiny manifest."""
    out = tmp_path_factory.mktemp("minilm_runs") / "minilm16"
    cfg = TrainConfig(
        dataset="manifest",
        data=tiny_manifest,
        out=out,
        method="bi_ncmh",
        bits=BITS,
        epochs=5,
        hidden=[32],
        text_encoder="minilm",
        cache_dir=tmp_path_factory.mktemp("minilm_cache"),
        device="cpu",
    )
    train_run(cfg, progress=False)
    return out


def test_minilm_export_matches_sentence_embeddings(minilm_run: Path, tmp_path: Path) -> None:
    info = export_run(minilm_run, tmp_path / "model")
    model_dir = tmp_path / "model"
    assert info.text.kind == "minilm" and info.text.bag_of_words is None
    settings = info.text.tokenizer
    assert settings is not None and (settings.max_length, settings.pad_id, settings.pad_token) == (256, 0, "[PAD]")
    assert settings.sha256 == sha256(model_dir / "tokenizer.json")
    proto = onnx.load(str(model_dir / "text.onnx"))
    assert [i.name for i in proto.graph.input] == ["input_ids", "attention_mask"]
    for graph_input in proto.graph.input:
        assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert all(d.dim_param for d in graph_input.type.tensor_type.shape.dim)  # batch and sequence

    texts = [item_text(i) for i in range(N_ITEMS)] + EXTRA_TEXTS
    model, _, _ = load_checkpoint(minilm_run / "checkpoint.pt")
    with torch.no_grad():
        expected = model.text_head(torch.from_numpy(MiniLMTextEmbedder().embed(texts))).numpy()
    encoder = Encoder.load(model_dir, device="cpu", batch_size=4)  # several length-sorted chunks
    h = encoder.text_representations(texts)
    assert relative_diff(h, expected) < MAX_RELATIVE_ERROR
    flipped, outside = flips_outside_margin(code_bits(encoder.encode_texts(texts)), expected)
    assert outside == 0 and flipped <= MAX_FLIPPED_BITS, (flipped, outside)
    assert relative_diff(Encoder.load(model_dir, device="cpu", batch_size=64).text_representations(texts), h) < 1e-5


# 4. checksum ---------------------------------------------------------------------------------


def test_checksum_changes_with_the_weights(
    tiny_features_run: Path, tiny_features_model_dir: Path, tmp_path: Path
) -> None:
    original = ModelInfo.model_validate_json((tiny_features_model_dir / "model.json").read_text())
    run = tmp_path / "run"
    shutil.copytree(tiny_features_run, run)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    ckpt["state_dict"]["text_head.mlp.0.bias"] += 0.01
    torch.save(ckpt, run / "checkpoint.pt")
    changed = export_run(run, tmp_path / "model")
    assert changed.image_onnx_sha256 == original.image_onnx_sha256  # the image head is unchanged
    assert changed.text_onnx_sha256 != original.text_onnx_sha256
    assert changed.checksum != original.checksum
    assert Encoder.load(tmp_path / "model", device="cpu").checksum == changed.checksum


def test_opset_can_be_chosen(tiny_features_run: Path, tmp_path: Path) -> None:
    info = export_run(tiny_features_run, tmp_path / "model", opset=18)
    assert info.opset == 18
    for name in ("image.onnx", "text.onnx"):
        proto = onnx.load(str(tmp_path / "model" / name))
        assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [18]


# 5. failures ---------------------------------------------------------------------------------


def test_bad_run_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text("{}")
    for run_dir in (tmp_path / "run", tmp_path / "absent"):
        with pytest.raises(ExportError, match=re.escape(str(run_dir)) + r".*checkpoint\.pt"):
            export_run(run_dir, tmp_path / "model")
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ExportError, match="cannot load " + re.escape(str(tmp_path / "run" / "checkpoint.pt"))):
        export_run(tmp_path / "run", tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_a_graph_that_disagrees_never_ships(
    tiny_features_run: Path, tiny_features_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exporter that writes a slightly wrong graph (here: one bias shifted) is caught by the
    post-export check, and the model directory keeps its previous, working model."""
    out = tmp_path / "model"
    shutil.copytree(tiny_features_model_dir, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_export = torch.onnx.export

    def shifted_export(module, args, *rest, **kwargs):
        broken = copy.deepcopy(module)
        with torch.no_grad():
            [m for m in broken.modules() if isinstance(m, torch.nn.Linear)][-1].bias += 0.5
        return real_export(broken, args, *rest, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", shifted_export)
    with pytest.raises(ExportError, match=r"image\.onnx disagrees with PyTorch"):
        export_run(tiny_features_run, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no staging folder left either
    assert Encoder.load(out, device="cpu").checksum == json.loads(before["model.json"])["checksum"]


# 6. command line ------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CMHASH_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("COLUMNS", "240")


def test_cli_export_is_stable_across_exports(clean_env, tiny_run: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    """`cmhash export` of the run behind tiny_model_dir writes the same files and checksum."""
    out = tmp_path / "model"
    result = runner.invoke(app, ["export", str(tiny_run), "--out", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    first = json.loads((tiny_model_dir / "model.json").read_text())
    second = json.loads((out / "model.json").read_text())
    assert second["checksum"] == first["checksum"]
    for name in ("image.onnx", "text.onnx"):
        assert (out / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name
    text = plain(result.output)
    assert f"checksum: {first['checksum']}" in text
    assert "bi_ncmh 16 bits" in text and "pixels 3x224x224 through efficientnet-lite0" in text
    assert f"bag of words over {first['text']['dim']} words" in text and f"model written to {out}" in text


def test_cli_export_options_from_environment(clean_env, tiny_features_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    result = runner.invoke(app, ["export", str(tiny_features_run), "--out", str(out)], env={"CMHASH_OPSET": "18"})
    assert result.exit_code == 0, (result.output, result.exception)
    info = json.loads((out / "model.json").read_text())
    assert info["opset"] == 18 and info["text"]["kind"] == "features" and info["image"]["kind"] == "features"
    assert "raw texts cannot be encoded" in plain(result.output)


def test_cli_export_help_lists_env_vars(clean_env) -> None:
    result = runner.invoke(app, ["export", "--help"])
    assert result.exit_code == 0
    text = plain(result.output)
    assert "--opset" in text and "CMHASH_OPSET" in text
    assert "--out" in text and "CMHASH_OUT" not in text  # a per-invocation output is a flag only


def test_cli_export_bad_run_dir(clean_env, tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", str(tmp_path / "absent"), "--out", str(tmp_path / "model")])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    text = plain(result.output)
    assert "error" in text and str(tmp_path / "absent") in text and "checkpoint.pt" in text
    assert not (tmp_path / "model").exists()


# 7. real data ---------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_parity_on_real_mirflickr_images(tmp_path: Path) -> None:
    """A short run on 32 real MIRFLICKR photos and their tags, exported: ONNX Runtime codes of
    the JPEGs (EXIF, odd sizes) and tag texts agree with PyTorch."""
    root = shared_data_root() / "mirflickr25k"
    if not (root / "images").is_dir():
        pytest.skip(f"{root / 'images'} is absent")
    ds = load_mirflickr(root)
    lines = []
    for row in range(32):
        labels = [ds.label_names[j] for j in np.flatnonzero(ds.labels[row])]
        lines.append(
            json.dumps(
                {
                    "id": ds.ids[row],
                    "image": str(ds.image_paths[row]),
                    "text": ds.texts[row],
                    "labels": labels,
                    "split": "query" if row < 4 else "train+retrieval",
                }
            )
        )
    manifest = tmp_path / "items.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    train_run(
        TrainConfig(
            dataset="manifest",
            data=manifest,
            out=run,
            bits=BITS,
            epochs=3,
            hidden=[32],
            cache_dir=tmp_path / "cache",
            device="cpu",
        ),
        progress=False,
    )
    export_run(run, tmp_path / "model")
    encoder = Encoder.load(tmp_path / "model", device="cpu")
    paths, texts = list(ds.image_paths[:32]), list(ds.texts[:32])
    expected_image, expected_text = torch_image_h(run, paths), torch_text_h(run, texts)
    assert (
        relative_diff(
            encoder.image_representations(np.stack([encoder.preprocess_image(p) for p in paths])), expected_image
        )
        < MAX_RELATIVE_ERROR
    )
    assert relative_diff(encoder.text_representations(texts), expected_text) < MAX_RELATIVE_ERROR
    assert flips_outside_margin(code_bits(encoder.encode_images(paths)), expected_image)[1] == 0
    assert flips_outside_margin(code_bits(encoder.encode_texts(texts)), expected_text)[1] == 0

"""The ONNX Runtime encoder: loading verifies every file, preprocessing is the shared one and
thread-safe, chunking does not change results, empty and wrong inputs behave, devices and
input kinds are refused clearly. (Parity with PyTorch is tested in test_export.py.)"""

from __future__ import annotations

import io
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from model.runtime.encoder import Encoder
from model.runtime.errors import UserError
from model.runtime.image import ImageDecodeError, load_image, to_array
from model.runtime.model_dir import ModelDirError, ModelInfo
from model.runtime.text import BagOfWords
from model.training.backbones import preprocess_for
from tests.tiny_data import N_ITEMS, item_text

BITS = 16


@pytest.fixture(scope="module")
def encoder(tiny_model_dir: Path) -> Encoder:
    return Encoder.load(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def paths(tiny_manifest: Path) -> list[Path]:
    return [tiny_manifest.parent / "img" / f"{i:02d}.png" for i in range(N_ITEMS)]


def packbits_of(h: np.ndarray) -> np.ndarray:
    """Packed codes straight from numpy: bit 1 where h >= 0, big-endian within bytes."""
    return np.packbits((h >= 0).astype(np.uint8), axis=1)


# 1. loading ----------------------------------------------------------------------------------


def test_properties(encoder: Encoder, tiny_model_dir: Path) -> None:
    info = json.loads((tiny_model_dir / "model.json").read_text())
    assert isinstance(encoder.info, ModelInfo)
    assert encoder.bits == BITS and encoder.code_bytes == BITS // 8
    assert encoder.checksum == info["checksum"]
    assert encoder.providers == ["CPUExecutionProvider"]


def test_codes_are_the_packed_signs_of_the_representations(encoder: Encoder, paths: list[Path]) -> None:
    arrays = np.stack([encoder.preprocess_image(p) for p in paths])
    h = encoder.image_representations(arrays)
    codes = encoder.encode_image_arrays(arrays)
    assert codes.dtype == np.uint8 and codes.shape == (N_ITEMS, BITS // 8)
    np.testing.assert_array_equal(codes, packbits_of(h))
    np.testing.assert_array_equal(encoder.encode_images(paths), codes)
    texts = [item_text(i) for i in range(N_ITEMS)]
    np.testing.assert_array_equal(encoder.encode_texts(texts), packbits_of(encoder.text_representations(texts)))
    assert len({bytes(c) for c in codes}) > 1  # the codes say something about the images


@pytest.mark.parametrize("damage", ["flip_byte", "truncate"])
@pytest.mark.parametrize("name", ["image.onnx", "text.onnx"])
def test_tampered_graph_is_refused(tiny_model_dir: Path, tmp_path: Path, name: str, damage: str) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    data = bytearray((model_dir / name).read_bytes())
    if damage == "flip_byte":
        data[len(data) // 2] ^= 0x01
    else:
        del data[-100:]
    (model_dir / name).write_bytes(bytes(data))
    with pytest.raises(ModelDirError, match=rf"{name}.*modified after export"):
        Encoder.load(model_dir, device="cpu")


def test_graph_swapped_from_another_model_is_refused(
    tiny_model_dir: Path, tiny_features_model_dir: Path, tmp_path: Path
) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    shutil.copyfile(tiny_features_model_dir / "text.onnx", model_dir / "text.onnx")
    with pytest.raises(ModelDirError, match="text.onnx"):
        Encoder.load(model_dir, device="cpu")


def test_edited_model_json_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Changing the vocabulary (or any setting) without re-exporting breaks the checksum."""
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    info = json.loads((model_dir / "model.json").read_text())
    vocabulary = info["text"]["bag_of_words"]["vocabulary"]
    vocabulary[0], vocabulary[1] = vocabulary[1], vocabulary[0]
    (model_dir / "model.json").write_text(json.dumps(info))
    with pytest.raises(ModelDirError, match="edited after export"):
        Encoder.load(model_dir, device="cpu")
    info["format_version"] = 99
    (model_dir / "model.json").write_text(json.dumps(info))
    with pytest.raises(ModelDirError, match="format version 99"):
        Encoder.load(model_dir, device="cpu")


def test_missing_or_invalid_model_json(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match="not a model directory"):
        Encoder.load(tmp_path, device="cpu")
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "model.json").write_text('{"bits": 16}')
    with pytest.raises(ModelDirError, match="not a valid model description"):
        Encoder.load(model_dir, device="cpu")


# 2. devices and threads ------------------------------------------------------------------------


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this onnxruntime has CUDA")
def test_cuda_is_refused_clearly_without_the_cuda_provider(tiny_model_dir: Path) -> None:
    with pytest.raises(UserError, match=r"device='cuda'.*CUDAExecutionProvider.*onnxruntime-gpu"):
        Encoder.load(tiny_model_dir, device="cuda")
    assert Encoder.load(tiny_model_dir, device="auto").providers == ["CPUExecutionProvider"]


def test_bad_device_threads_and_batch_size(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        Encoder.load(tiny_model_dir, device="tpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threads"):
        Encoder.load(tiny_model_dir, device="cpu", threads=0)
    with pytest.raises(ValueError, match="batch_size"):
        Encoder.load(tiny_model_dir, device="cpu", batch_size=0)


def test_one_thread_and_small_chunks_give_the_same_results(
    encoder: Encoder, tiny_model_dir: Path, paths: list[Path]
) -> None:
    small = Encoder.load(tiny_model_dir, device="cpu", threads=1, batch_size=3)
    arrays = np.stack([encoder.preprocess_image(p) for p in paths])
    np.testing.assert_allclose(
        small.image_representations(arrays), encoder.image_representations(arrays), rtol=1e-5, atol=1e-4
    )
    texts = [item_text(i) for i in range(N_ITEMS)]
    np.testing.assert_allclose(
        small.text_representations(texts), encoder.text_representations(texts), rtol=1e-6, atol=1e-6
    )
    h = small.image_representations(arrays)
    near_zero = np.abs(h) <= 1e-3 * np.abs(h).max()
    agree = np.unpackbits(small.encode_images(paths), axis=1) == np.unpackbits(encoder.encode_images(paths), axis=1)
    assert (agree | near_zero).all()


# 3. images -----------------------------------------------------------------------------------


def test_preprocess_image_is_the_shared_preprocessing(encoder: Encoder, paths: list[Path]) -> None:
    expected = to_array(load_image(paths[0]), preprocess_for("efficientnet-lite0"))
    assert expected.shape == (3, 224, 224)
    for source in (paths[0], paths[0].read_bytes(), Image.open(paths[0])):
        got = encoder.preprocess_image(source)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)


def test_undecodable_images_raise_image_decode_error(encoder: Encoder, paths: list[Path], tmp_path: Path) -> None:
    png = paths[0].read_bytes()
    with pytest.raises(ImageDecodeError):
        encoder.preprocess_image(b"not an image")
    with pytest.raises(ImageDecodeError):
        encoder.preprocess_image(png[: len(png) // 2])
    with pytest.raises(ImageDecodeError):
        encoder.encode_images([paths[1], b"\x89PNG broken"])


def test_preprocess_image_is_thread_safe(encoder: Encoder, paths: list[Path]) -> None:
    buffers = []
    for p in paths:
        with Image.open(p) as img:  # a JPEG too, so decoding differs per source kind
            out = io.BytesIO()
            img.save(out, format="JPEG", quality=90)
            buffers.append(out.getvalue())
    sources = [*paths, *buffers] * 3
    sequential = [encoder.preprocess_image(s) for s in sources]
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(encoder.preprocess_image, sources))
        codes = list(pool.map(encoder.encode_images, [paths[i : i + 5] for i in range(0, N_ITEMS, 5)]))
    for a, b in zip(sequential, parallel, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.concatenate(codes), encoder.encode_images(paths))


def test_image_arrays_of_the_wrong_shape(encoder: Encoder) -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, 224, 224\).*\(2, 3, 64, 64\)"):
        encoder.image_representations(np.zeros((2, 3, 64, 64), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(B, 3, 224, 224\)"):
        encoder.encode_image_arrays(np.zeros((3, 224, 224), dtype=np.float32))


def test_empty_inputs(encoder: Encoder, tiny_features_model_dir: Path) -> None:
    for codes in (
        encoder.encode_images([]),
        encoder.encode_texts([]),
        encoder.encode_image_arrays(np.empty((0, 3, 224, 224), dtype=np.float32)),
        encoder.encode_image_arrays(np.empty((0,), dtype=np.float32)),
    ):
        assert codes.shape == (0, BITS // 8) and codes.dtype == np.uint8
    h = encoder.text_representations([])
    assert h.shape == (0, BITS) and h.dtype == np.float32
    features = Encoder.load(tiny_features_model_dir, device="cpu")
    assert features.encode_text_features(np.empty((0, 10), dtype=np.float32)).shape == (0, BITS // 8)


# 4. input kinds --------------------------------------------------------------------------------


def test_features_model_refuses_pixels_and_raw_texts(tiny_features_model_dir: Path, paths: list[Path]) -> None:
    features = Encoder.load(tiny_features_model_dir, device="cpu")
    assert (features.info.image.kind, features.info.text.kind) == ("features", "features")
    with pytest.raises(UserError, match="image feature vectors.*encode_image_features"):
        features.encode_images(paths[:2])
    with pytest.raises(UserError, match="image feature vectors"):
        features.preprocess_image(paths[0])
    with pytest.raises(UserError, match="text feature vectors.*encode_text_features"):
        features.encode_texts(["a text"])
    with pytest.raises(ValueError, match=r"\(B, 128\)"):
        features.encode_image_features(np.zeros((2, 64), dtype=np.float32))
    x = np.random.default_rng(0).random((5, 128), dtype=np.float32)
    np.testing.assert_array_equal(features.encode_image_features(x), packbits_of(features.image_representations(x)))


def test_pixels_model_refuses_image_features(encoder: Encoder) -> None:
    with pytest.raises(UserError, match="reads image pixels.*encode_images"):
        encoder.encode_image_features(np.zeros((1, 1280), dtype=np.float32))


def test_bow_model_takes_bag_of_words_vectors(encoder: Encoder) -> None:
    """encode_text_features on a bow model reads the vectors encode_texts builds from text."""
    bow = BagOfWords.from_json(encoder.info.text.bag_of_words or {})
    texts = [item_text(i) for i in range(N_ITEMS)]
    np.testing.assert_array_equal(encoder.encode_text_features(bow.transform(texts)), encoder.encode_texts(texts))


def test_texts_must_be_a_sequence_of_strings(encoder: Encoder) -> None:
    with pytest.raises(TypeError, match="not one string"):
        encoder.encode_texts("a red square")
    with pytest.raises(TypeError, match="strings"):
        encoder.encode_texts(["ok", 3])  # type: ignore[list-item]


def test_a_graph_rewritten_while_it_loads_is_refused(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runtime reads the very file that was hashed (by its open descriptor), and the hash is
    taken again after loading: a graph rewritten in place meanwhile is refused."""
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    real = ort.InferenceSession

    def tamper_then_load(source, *args, **kwargs):  # type: ignore[no-untyped-def]
        session = real(source, *args, **kwargs)
        with open(model_dir / "text.onnx", "r+b") as f:  # in place: the same inode
            f.seek(100)
            f.write(b"\x00")
        return session

    monkeypatch.setattr(ort, "InferenceSession", tamper_then_load)
    with pytest.raises(ModelDirError, match="modified after export"):
        Encoder.load(model_dir, device="cpu")

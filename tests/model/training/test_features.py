"""model.training.features: the frozen-feature cache computes each item once and recomputes changed ones."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import model.training.features as features
from model.runtime.image import ImageDecodeError, load_image
from model.training.backbones import MiniLMTextEmbedder, build_backbone
from model.training.inputs import batch_tensor

BACKBONE = "efficientnet-lite0"


class Counter:
    """Wraps the factories model.training.features uses and counts models built and items computed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.builds = 0
        self.items = 0
        monkeypatch.setattr(features, "build_backbone", self._backbone)
        counter = self

        class CountingEmbedder(MiniLMTextEmbedder):
            def __init__(self, device: str | torch.device = "cpu") -> None:
                super().__init__(device)
                counter.builds += 1

            def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
                counter.items += len(texts)
                return super().embed(texts, batch_size)

        monkeypatch.setattr(features, "MiniLMTextEmbedder", CountingEmbedder)

    def _backbone(self, name: str) -> torch.nn.Module:
        self.builds += 1
        backbone = build_backbone(name)
        backbone.register_forward_hook(lambda _m, _inp, out: self._add(out.shape[0]))
        return backbone

    def _add(self, n: int) -> None:
        self.items += n

    def reset(self) -> None:
        self.builds = self.items = 0


@pytest.fixture
def counter(monkeypatch: pytest.MonkeyPatch) -> Counter:
    return Counter(monkeypatch)


def _write_image(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


def _fresh(paths: list[Path]) -> np.ndarray:
    """Independent reference: the backbone applied directly, no cache, no threads."""
    backbone = build_backbone(BACKBONE).eval()
    with torch.inference_mode():
        return backbone(batch_tensor([load_image(p) for p in paths], backbone.preprocess)).numpy()


def test_second_call_computes_nothing_and_matches_fresh(tmp_path: Path, counter: Counter) -> None:
    paths = [_write_image(tmp_path / f"img{i}.png", i) for i in range(3)]
    cache = tmp_path / "cache"
    first = features.image_features(paths, BACKBONE, cache, batch_size=2, progress=False)
    assert first.shape == (3, 1280) and first.dtype == np.float32
    assert (counter.builds, counter.items) == (1, 3)

    counter.reset()
    second = features.image_features(paths, BACKBONE, cache, batch_size=2, progress=False)
    assert (counter.builds, counter.items) == (0, 0)  # not even the model is loaded
    np.testing.assert_array_equal(second, first)
    np.testing.assert_allclose(first, _fresh(paths), rtol=1e-4, atol=1e-4)


def test_changed_and_new_files_alone_are_recomputed(tmp_path: Path, counter: Counter) -> None:
    paths = [_write_image(tmp_path / f"img{i}.png", i) for i in range(2)]
    cache = tmp_path / "cache"
    before = features.image_features(paths, BACKBONE, cache, num_workers=0, progress=False)

    _write_image(paths[1], seed=99)
    st = paths[1].stat()
    os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    paths.append(_write_image(tmp_path / "new.png", 7))
    counter.reset()
    after = features.image_features(paths, BACKBONE, cache, num_workers=0, progress=False)
    assert counter.items == 2
    np.testing.assert_array_equal(after[0], before[0])
    assert not np.allclose(after[1], before[1])
    np.testing.assert_allclose(after[1:], _fresh(paths[1:]), rtol=1e-4, atol=1e-4)


def test_duplicates_and_no_cache(tmp_path: Path, counter: Counter) -> None:
    a = _write_image(tmp_path / "a.png", 1)
    b = _write_image(tmp_path / "b.png", 2)
    out = features.image_features([a, b, a], BACKBONE, cache_dir=None, progress=False)
    assert counter.items == 2
    np.testing.assert_array_equal(out[0], out[2])
    assert not np.allclose(out[0], out[1])


def test_undecodable_image_names_the_file(tmp_path: Path) -> None:
    good = _write_image(tmp_path / "good.png", 0)
    bad = tmp_path / "broken.png"
    bad.write_bytes(good.read_bytes()[:100])
    with pytest.raises(ImageDecodeError, match="broken.png"):
        features.image_features([good, bad], BACKBONE, tmp_path / "cache", progress=False)


def test_text_embeddings_cache(tmp_path: Path, counter: Counter) -> None:
    texts = ["a dog runs on the grass", "stock market prices fell", "a dog runs on the grass"]
    cache = tmp_path / "cache"
    first = features.text_embeddings(texts, cache, progress=False)
    assert first.shape == (3, 384) and first.dtype == np.float32
    assert (counter.builds, counter.items) == (1, 2)  # the duplicate is embedded once
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)

    counter.reset()
    second = features.text_embeddings([*texts, "a puppy running in a field"], cache, progress=False)
    assert (counter.builds, counter.items) == (1, 1)
    np.testing.assert_array_equal(second[:3], first)
    reference = MiniLMTextEmbedder().embed(["a puppy running in a field", texts[1]])
    np.testing.assert_allclose(second[[3, 1]], reference, atol=1e-5)


def test_text_chunks_are_near_equal_runs_of_words() -> None:
    assert features.text_chunks("a short caption", 200) == ["a short caption"]
    words = [f"w{i}" for i in range(450)]
    chunks = features.text_chunks("  ".join(words), 200)
    assert [len(c.split()) for c in chunks] == [150, 150, 150]
    assert " ".join(chunks).split() == words


@pytest.mark.slow
def test_chunked_embedding_is_the_mean_of_chunk_embeddings(tmp_path: Path, counter: Counter) -> None:
    long_text = " ".join(
        f"sentence {i} about rivers, mountains and the empire of the {i}th century." for i in range(40)
    )
    short = "a dog runs on the grass"
    out = features.text_embeddings([long_text, short], tmp_path / "cache", progress=False, chunk_words=100)
    chunks = features.text_chunks(long_text, 100)
    assert len(chunks) > 2
    reference = MiniLMTextEmbedder().embed([*chunks, short])
    np.testing.assert_allclose(out[0], reference[:-1].mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(out[1], reference[-1], atol=1e-5)  # one chunk: the plain embedding
    counter.reset()  # cached per chunk: nothing is embedded again
    again = features.text_embeddings([long_text, short], tmp_path / "cache", progress=False, chunk_words=100)
    assert counter.items == 0
    np.testing.assert_array_equal(again, out)

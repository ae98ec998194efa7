"""Wikipedia with real text (--text-features raw): a bag of words learned from the training
articles trains, beats chance and exports a text graph that reads raw text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from model.training.config import TrainConfig
from tests.tiny_data import wikipedia_article, write_wikipedia_miniature


def test_raw_bow_trains_beats_chance_and_exports(tmp_path_factory: pytest.TempPathFactory) -> None:
    from model.runtime.encoder import Encoder
    from tests.conftest import export_tiny, train_tiny

    data = write_wikipedia_miniature(tmp_path_factory.mktemp("wiki_raw"), texts=True)
    run = train_tiny(
        tmp_path_factory,
        "wiki_raw_bow",
        dataset="wikipedia",
        data=data,
        text_features="raw",
        text_encoder="bow",
        min_word_count=2,
        epochs=10,
        hidden=[32],
    )
    metrics = json.loads((run / "metrics.json").read_text())
    for direction in ("i2t", "t2i"):
        assert metrics[direction]["map"] > metrics["chance_map"] + 0.2, (direction, metrics)

    model_dir = export_tiny(tmp_path_factory, run)
    info = json.loads((model_dir / "model.json").read_text())
    assert info["text"]["kind"] == "bow" and "museum" in info["text"]["bag_of_words"]["vocabulary"]
    encoder = Encoder.load(model_dir)
    article = wikipedia_article("q0", 0)[1]
    codes = encoder.encode_texts([article, "river mountain valley"])
    assert codes.shape[0] == 2


def test_minilm_on_wikipedia_needs_raw(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="text-features raw"):
        TrainConfig(dataset="wikipedia", out=tmp_path, text_encoder="minilm")
    TrainConfig(dataset="wikipedia", out=tmp_path, text_encoder="minilm", text_features="raw")

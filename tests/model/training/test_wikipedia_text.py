"""Wikipedia with real text (--text-features raw): a bag of words learned from the training
articles trains, beats chance and exports a text graph that reads raw text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from model.training.config import TrainConfig
from tests.tiny_data import wikipedia_article, write_wikipedia_miniature


@pytest.mark.parametrize(
    "vocabulary", [{}, {"text_weighting": "tfidf", "max_word_share": 0.5, "max_words": 200}], ids=["binary", "tfidf"]
)
def test_raw_bow_trains_beats_chance_and_exports(
    tmp_path_factory: pytest.TempPathFactory, vocabulary: dict[str, object]
) -> None:
    from model.runtime.encoder import Encoder
    from model.runtime.text import BagOfWords
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
        **vocabulary,
    )
    metrics = json.loads((run / "metrics.json").read_text())
    for direction in ("i2t", "t2i"):
        assert metrics[direction]["map"] > metrics["chance_map"] + 0.2, (direction, metrics)

    model_dir = export_tiny(tmp_path_factory, run)
    info = json.loads((model_dir / "model.json").read_text())
    assert info["text"]["kind"] == "bow" and "museum" in info["text"]["bag_of_words"]["vocabulary"]
    bow = BagOfWords.from_json(info["text"]["bag_of_words"])
    assert (bow.idf is not None) == (vocabulary.get("text_weighting") == "tfidf")
    if vocabulary:
        assert 0 < len(bow) <= 200 and "the" not in bow.vocabulary  # in every article: over the share
    encoder = Encoder.load(model_dir)
    article = wikipedia_article("q0", 0)[1]
    codes = encoder.encode_texts([article, "river mountain valley"])
    assert codes.shape[0] == 2


def test_vocabulary_settings_refused_without_raw_texts(tmp_path: Path) -> None:
    from model.training.data import DataError
    from model.training.train import prepare_run

    data = write_wikipedia_miniature(tmp_path / "wiki", texts=True)
    cfg = TrainConfig(
        dataset="wikipedia", data=data, out=tmp_path / "run", text_features="tfidf", text_weighting="tfidf"
    )
    with pytest.raises(DataError, match="--text-weighting .* given vectors"):
        prepare_run(cfg, progress=False)


def test_minilm_on_wikipedia_needs_raw(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="text-features raw"):
        TrainConfig(dataset="wikipedia", out=tmp_path, text_encoder="minilm")
    TrainConfig(dataset="wikipedia", out=tmp_path, text_encoder="minilm", text_features="raw")


def test_evaluate_reads_texts_with_the_runs_own_vocabulary(tmp_path_factory: pytest.TempPathFactory) -> None:
    # A run saved before a vocabulary default changed: its config lacks max_words, so fitting anew
    # would build a vocabulary the checkpoint's text head does not take. evaluate_run must use the
    # checkpoint's own, and reproduce the codes training wrote.
    import numpy as np
    import torch

    from model.training.run import evaluate_run
    from tests.conftest import train_tiny

    data = write_wikipedia_miniature(tmp_path_factory.mktemp("wiki_old"), texts=True)
    run = train_tiny(
        tmp_path_factory, "wiki_old_vocab", dataset="wikipedia", data=data, text_features="raw", epochs=3, hidden=[16]
    )
    codes = dict(np.load(run / "codes.npz"))
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert len(ckpt["bag_of_words"]["vocabulary"]) > 3
    ckpt["config"]["max_words"] = 3  # what a refit would now give, and the text head cannot take
    torch.save(ckpt, run / "checkpoint.pt")
    evaluate_run(run, progress=False)
    again = np.load(run / "codes.npz")
    for key, value in codes.items():
        np.testing.assert_array_equal(again[key], value, err_msg=key)

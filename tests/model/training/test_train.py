"""End to end: every method learns codes on synthetic paired data with learnable structure,
far above the MAP of random codes, and the same seed gives the same codes."""

from pathlib import Path

import numpy as np
import pytest
import torch

from model.training.config import TrainConfig
from model.training.data import CrossModalDataset, Split
from model.training.evaluate import evaluate_codes, split_codes
from model.training.inputs import PreparedInputs
from model.training.metrics import mean_average_precision
from model.training.train import (
    PreparedRun,
    load_checkpoint,
    save_checkpoint,
    train_model,
)


def synthetic_run(n: int = 360, n_query: int = 60, seed: int = 0) -> PreparedRun:
    """Items of 4 latent classes (some with a second label); each modality sees the class
    through its own random linear map plus noise, so both must be learned to match."""
    rng = np.random.default_rng(seed)
    k = 4
    primary = rng.integers(0, k, n)
    labels = np.eye(k, dtype=np.uint8)[primary]
    second = rng.random(n) < 0.2
    labels[second, rng.integers(0, k, second.sum())] = 1
    centres = rng.normal(size=(k, 12))
    latent = labels @ centres / labels.sum(1, keepdims=True) + 0.35 * rng.normal(size=(n, 12))
    image = np.abs(latent @ rng.normal(size=(12, 40)) + 0.3 * rng.normal(size=(n, 40))).astype(np.float32)
    text = np.abs(latent @ rng.normal(size=(12, 24)) + 0.3 * rng.normal(size=(n, 24))).astype(np.float32)
    ds = CrossModalDataset(
        name="synthetic",
        ids=[str(i) for i in range(n)],
        labels=labels,
        label_names=list("abcd"),
        image_features=image,
        text_features=text,
    )
    split = Split(query=np.arange(n_query), retrieval=np.arange(n_query, n), train=np.arange(n_query, n))
    inputs = PreparedInputs(
        image=torch.from_numpy(image),
        text=torch.from_numpy(text),
        labels=torch.from_numpy(labels.astype(np.float32)),
        bag_of_words=None,
    )
    return PreparedRun(ds, split, split, inputs)


def _cfg(method: str, tmp_path: Path, **kw) -> TrainConfig:
    base = dict(
        dataset="manifest",
        out=tmp_path,
        method=method,
        bits=16,
        epochs=25,
        batch_size=32,
        hidden=[64],
        lr=1e-3,
        device="cpu",
        seed=3,
    )
    base.update(kw)
    return TrainConfig(**base)


def _codes(model, run):
    inp = run.inputs
    return split_codes(model, inp, run.split.query, run.split.retrieval)


@pytest.fixture(scope="module")
def run():
    return synthetic_run()


@pytest.mark.parametrize("method", ["bi_ncmh", "dcmh", "djsrh", "cca_itq"])
def test_method_beats_random_codes(method, run, tmp_path):
    model, history = train_model(_cfg(method, tmp_path), run, progress=False)
    codes = _codes(model, run)
    metrics = evaluate_codes(codes)
    rng = np.random.default_rng(0)
    random_map = np.mean(
        [
            mean_average_precision(
                np.where(rng.random((60, 16)) < 0.5, -1, 1),
                np.where(rng.random((300, 16)) < 0.5, -1, 1),
                codes["query_labels"],
                codes["retrieval_labels"],
            )
            for _ in range(5)
        ]
    )
    for direction in ("i2t", "t2i"):
        assert metrics[direction]["map"] > random_map + 0.2, (method, direction, metrics[direction]["map"], random_map)
    if method != "cca_itq":
        assert history.epochs[-1]["loss"] < history.epochs[0]["loss"]


@pytest.mark.parametrize("method", ["bi_ncmh", "djsrh"])
def test_same_seed_same_codes(method, run, tmp_path):
    a, _ = train_model(_cfg(method, tmp_path, epochs=3), run, progress=False)
    b, _ = train_model(_cfg(method, tmp_path, epochs=3), run, progress=False)
    c, _ = train_model(_cfg(method, tmp_path, epochs=3, seed=4), run, progress=False)
    ca, cb, cc = _codes(a, run), _codes(b, run), _codes(c, run)
    for key in ("query_image_codes", "retrieval_text_codes"):
        np.testing.assert_array_equal(ca[key], cb[key])
    assert not np.array_equal(ca["query_image_codes"], cc["query_image_codes"])


def test_djsrh_never_reads_labels(run, tmp_path):
    scrambled = synthetic_run()
    scrambled.inputs.labels = torch.zeros_like(scrambled.inputs.labels)
    a, _ = train_model(_cfg("djsrh", tmp_path, epochs=2), run, progress=False)
    b, _ = train_model(_cfg("djsrh", tmp_path, epochs=2), scrambled, progress=False)
    np.testing.assert_array_equal(_codes(a, run)["query_image_codes"], _codes(b, run)["query_image_codes"])


def test_image_rows_replace_what_the_image_head_reads(run, tmp_path):
    # The training rows' own features given as image_rows train the same model as the default;
    # other rows (the features shuffled across items) train a different one; a fine-tuned
    # backbone reads pixels, so both together are refused.
    cfg = _cfg("bi_ncmh", tmp_path, epochs=3)
    rows = torch.from_numpy(run.eval_split.train)
    a, _ = train_model(cfg, run, progress=False)
    b, _ = train_model(cfg, run, progress=False, image_rows=run.inputs.image[rows])
    c, _ = train_model(cfg, run, progress=False, image_rows=run.inputs.image[rows.flip(0)])
    np.testing.assert_array_equal(_codes(a, run)["query_image_codes"], _codes(b, run)["query_image_codes"])
    assert not np.array_equal(_codes(a, run)["query_image_codes"], _codes(c, run)["query_image_codes"])
    with pytest.raises(ValueError, match="image_rows"):
        train_model(cfg.model_copy(update={"finetune_backbone": True}), run, image_rows=run.inputs.image[rows])


def test_checkpoint_round_trip(run, tmp_path):
    cfg = _cfg("bi_ncmh", tmp_path, epochs=2)
    model, _ = train_model(cfg, run, progress=False)
    save_checkpoint(tmp_path / "checkpoint.pt", model, cfg, run)
    loaded, loaded_cfg, _ = load_checkpoint(tmp_path / "checkpoint.pt")
    assert loaded_cfg == cfg
    x = run.inputs.image[:10]
    torch.testing.assert_close(loaded.encode_image(x), model.eval().encode_image(x))


def test_finetune_backbone_trains_it_and_round_trips(tmp_path, monkeypatch):
    from PIL import Image

    from model.training.inputs import prepare_inputs

    rng = np.random.default_rng(0)
    colours = [(220, 30, 30), (30, 30, 220)]
    paths, labels = [], []
    for i in range(12):
        c = i % 2
        arr = np.clip(np.array(colours[c]) + rng.normal(0, 20, (48, 48, 3)), 0, 255).astype(np.uint8)
        p = tmp_path / f"im{i}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
        labels.append(np.eye(2, dtype=np.uint8)[c])
    labels = np.array(labels)
    ds = CrossModalDataset(
        name="tiny",
        ids=[str(i) for i in range(12)],
        labels=labels,
        label_names=["red", "blue"],
        image_paths=paths,
        text_features=labels.astype(np.float32) + 0.1,
    )
    split = Split(query=np.arange(4), retrieval=np.arange(4, 12), train=np.arange(4, 12))
    cfg = _cfg(
        "bi_ncmh",
        tmp_path,
        epochs=2,
        batch_size=4,
        finetune_backbone=True,
        backbone_lr=1e-3,
        cache_dir=tmp_path / "cache",
    )
    run = PreparedRun(ds, split, split, prepare_inputs(ds, split.train, cfg, progress=False))
    from model.training.backbones import build_backbone

    before = build_backbone("efficientnet-lite0").state_dict()
    model, _ = train_model(cfg, run, progress=False)
    after = model.image_backbone.state_dict()
    changed = [k for k in before if before[k].dtype.is_floating_point and not torch.equal(before[k], after[k])]
    assert changed, "fine-tuning left every backbone weight unchanged"
    running = [k for k in before if "running_mean" in k]
    assert all(torch.equal(before[k], after[k]) for k in running), "batch-norm statistics must stay frozen"
    codes = split_codes(model, run.inputs, split.query, split.retrieval)
    save_checkpoint(tmp_path / "checkpoint.pt", model, cfg, run)
    loaded, _, _ = load_checkpoint(tmp_path / "checkpoint.pt")
    again = split_codes(loaded, run.inputs, split.query, split.retrieval)
    np.testing.assert_array_equal(codes["query_image_codes"], again["query_image_codes"])

"""`cmhash train`: train a cross-modal hashing model and evaluate it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from model.runtime.choices import Device
from model.training.config import (
    BackboneName,
    DatasetName,
    MethodName,
    OptimizerName,
    TextEncoderName,
    TextFeatures,
    TextWeighting,
    TrainConfig,
)
from service.cli.common import env_option, flag_option, needs_training_extra, user_errors

NAME = "train"


def parse_hp(items: list[str]) -> dict[str, float]:
    """NAME=NUMBER pairs of --hp as a dict."""
    out: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[key.strip()] = float(value)
        except ValueError:
            raise typer.BadParameter(f"--hp expects NAME=NUMBER, got {item!r}") from None
    return out


def parse_hidden(hidden: str) -> list[int]:
    """Comma-separated hidden widths of --hidden ('' = linear heads)."""
    try:
        return [int(h) for h in hidden.split(",") if h.strip()]
    except ValueError:
        raise typer.BadParameter(f"--hidden expects comma-separated integers, got {hidden!r}") from None


def run(
    dataset: Annotated[DatasetName, env_option("Dataset loader.", "DATASET")],
    out: Annotated[Path, flag_option("Run directory to write (checkpoint, metrics, codes, plots).")],
    data: Annotated[
        Path | None, env_option("Dataset path (default: the dataset's folder under CMHASH_DATA_ROOT).", "DATA")
    ] = None,
    method: Annotated[MethodName, env_option("Hashing method.", "METHOD")] = "bi_ncmh",
    bits: Annotated[int, env_option("Code length in bits (multiple of 8; 16-128 typical).", "BITS")] = 64,
    seed: Annotated[int, env_option("Seed of split, initialisation and batch order.", "SEED")] = 0,
    epochs: Annotated[int, env_option("Training epochs.", "EPOCHS")] = 60,
    batch_size: Annotated[int, env_option("Training mini-batch size.", "BATCH_SIZE")] = 128,
    optimizer: Annotated[OptimizerName, env_option("Optimiser of the hash heads.", "OPTIMIZER")] = "adam",
    lr: Annotated[float, env_option("Learning rate of the hash heads.", "LR")] = 1e-3,
    weight_decay: Annotated[float, env_option("L2 weight decay.", "WEIGHT_DECAY")] = 0.0,
    hidden: Annotated[
        str, env_option("Hidden widths of the hash heads, comma separated ('' = linear).", "HIDDEN")
    ] = "2048",
    dropout: Annotated[float, env_option("Dropout after hidden layers.", "DROPOUT")] = 0.0,
    hp: Annotated[
        list[str] | None, env_option("Method hyper-parameter NAME=VALUE (repeatable), e.g. alpha=1.", "HP")
    ] = None,
    text_features: Annotated[TextFeatures, env_option("Wikipedia text features.", "TEXT_FEATURES")] = "lda",
    text_encoder: Annotated[TextEncoderName, env_option("Text input: bag of words or MiniLM.", "TEXT_ENCODER")] = "bow",
    min_word_count: Annotated[int, env_option("Vocabulary cut-off for raw texts.", "MIN_WORD_COUNT")] = 1,
    max_word_share: Annotated[
        float, env_option("Raw-text bag of words: drop words in more than this share of texts.", "MAX_WORD_SHARE")
    ] = 1.0,
    max_words: Annotated[
        int, env_option("Raw-text bag of words: keep only this many most frequent words.", "MAX_WORDS", min=1)
    ] = 5000,
    text_weighting: Annotated[
        TextWeighting, env_option("Raw-text bag of words: word presence or tf-idf.", "TEXT_WEIGHTING")
    ] = "binary",
    image_backbone: Annotated[
        BackboneName, env_option("Image backbone (pixel inputs).", "IMAGE_BACKBONE")
    ] = "efficientnet-lite0",
    finetune_backbone: Annotated[
        bool, env_option("Also train the image backbone (slow on CPU).", "FINETUNE_BACKBONE")
    ] = False,
    backbone_lr: Annotated[float, env_option("Learning rate of the backbone when fine-tuned.", "BACKBONE_LR")] = 1e-5,
    query_size: Annotated[
        int | None, env_option("Number of queries (default: dataset protocol).", "QUERY_SIZE")
    ] = None,
    train_size: Annotated[
        int | None, env_option("Training items drawn from retrieval (default: protocol).", "TRAIN_SIZE")
    ] = None,
    validation_fraction: Annotated[
        float, env_option("Evaluate on this fraction of the training set instead (tuning).", "VALIDATION_FRACTION")
    ] = 0.0,
    folds: Annotated[
        int | None,
        env_option(
            "K-fold evaluation: K runs into OUT/fold-i, every item a query once; metrics.json: "
            "per-fold MAPs, mean, 95% CI (not for preset splits).",
            "FOLDS",
            min=2,
        ),
    ] = None,
    cache_dir: Annotated[
        Path | None, env_option("Feature cache directory (default ~/.cache/cmhash).", "CACHE_DIR")
    ] = None,
    device: Annotated[
        Device, env_option("Where the work runs: auto (CUDA when present), cpu or cuda.", "DEVICE")
    ] = "auto",
    torch_threads: Annotated[
        int | None, env_option("Torch CPU threads (default: torch's).", "TORCH_THREADS", min=1)
    ] = None,
    progress: Annotated[bool, env_option("Show progress bars.", "PROGRESS")] = True,
) -> None:
    """Train a cross-modal hashing model and evaluate it (MAP over the whole ranking and MAP@50,
    per label, and warnings about the training data)."""
    fields = dict(
        dataset=str(dataset),
        out=out,
        data=data,
        method=method,
        bits=bits,
        seed=seed,
        epochs=epochs,
        batch_size=batch_size,
        optimizer=optimizer,
        lr=lr,
        weight_decay=weight_decay,
        hidden=parse_hidden(hidden),
        dropout=dropout,
        hp=parse_hp(hp or []),
        text_features=text_features,
        text_encoder=text_encoder,
        min_word_count=min_word_count,
        max_word_share=max_word_share,
        max_words=max_words,
        text_weighting=text_weighting,
        image_backbone=image_backbone,
        finetune_backbone=finetune_backbone,
        backbone_lr=backbone_lr,
        query_size=query_size,
        train_size=train_size,
        validation_fraction=validation_fraction,
        folds=folds,
        device=device,
        torch_threads=torch_threads,
    )
    if cache_dir is not None:
        fields["cache_dir"] = cache_dir
    with user_errors():
        cfg = TrainConfig(**fields)
        try:
            from model.training.evaluate import report
            from model.training.run import train_run
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] == "torch":
                needs_training_extra()
            raise
        metrics = train_run(cfg, progress=progress)
    typer.echo(report(metrics, out))
    typer.echo(f"run written to {out}")

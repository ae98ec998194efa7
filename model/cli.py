"""`cmhash` command line. Every flag can also be set by an environment variable (shown in
--help as env var CMHASH_...)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ValidationError

from model.config import TrainConfig
from model.data import DataError

app = typer.Typer(help="cmhash: cross-modal hashing (text <-> image) with binary codes.", no_args_is_help=True)


def _opt(help_text: str, env: str, **kw):
    return typer.Option(help=help_text, envvar=f"CMHASH_{env}", **kw)


def _parse_hp(items: list[str]) -> dict[str, float]:
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


def _parse_hidden(hidden: str) -> list[int]:
    try:
        return [int(h) for h in hidden.split(",") if h.strip()]
    except ValueError:
        raise typer.BadParameter(f"--hidden expects comma-separated integers, got {hidden!r}") from None


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def train(
    dataset: Annotated[str, _opt("Dataset loader: wikipedia, mirflickr or manifest.", "DATASET")],
    out: Annotated[Path, _opt("Run directory to write (checkpoint, metrics, codes, plots).", "OUT")],
    data: Annotated[Optional[Path], _opt("Dataset path (default: ../shared/data/<dataset>).", "DATA")] = None,
    method: Annotated[str, _opt("bi_ncmh, dcmh, djsrh or cca_itq.", "METHOD")] = "bi_ncmh",
    bits: Annotated[int, _opt("Code length in bits (multiple of 8; 16-128 typical).", "BITS")] = 64,
    seed: Annotated[int, _opt("Seed of split, initialisation and batch order.", "SEED")] = 0,
    epochs: Annotated[int, _opt("Training epochs.", "EPOCHS")] = 60,
    batch_size: Annotated[int, _opt("Mini-batch size.", "BATCH_SIZE")] = 128,
    optimizer: Annotated[str, _opt("adam or sgd.", "OPTIMIZER")] = "adam",
    lr: Annotated[float, _opt("Learning rate of the hash heads.", "LR")] = 1e-3,
    weight_decay: Annotated[float, _opt("L2 weight decay.", "WEIGHT_DECAY")] = 0.0,
    hidden: Annotated[str, _opt("Hidden widths of the hash heads, comma separated ('' = linear).", "HIDDEN")] = "2048",
    dropout: Annotated[float, _opt("Dropout after hidden layers.", "DROPOUT")] = 0.0,
    hp: Annotated[list[str], _opt("Method hyper-parameter NAME=VALUE (repeatable), e.g. alpha=1.", "HP")] = [],
    text_features: Annotated[str, _opt("Wikipedia text features: lda or tfidf.", "TEXT_FEATURES")] = "lda",
    text_encoder: Annotated[str, _opt("Text input: bow (bag of words) or minilm.", "TEXT_ENCODER")] = "bow",
    min_word_count: Annotated[int, _opt("Vocabulary cut-off for raw texts.", "MIN_WORD_COUNT")] = 1,
    image_backbone: Annotated[str, _opt("efficientnet-lite0 or efficientnet-lite2 (pixel inputs).", "IMAGE_BACKBONE")] = "efficientnet-lite0",
    finetune_backbone: Annotated[bool, _opt("Also train the image backbone (slow on CPU).", "FINETUNE_BACKBONE")] = False,
    backbone_lr: Annotated[float, _opt("Learning rate of the backbone when fine-tuned.", "BACKBONE_LR")] = 1e-5,
    query_size: Annotated[Optional[int], _opt("Number of queries (default: dataset protocol).", "QUERY_SIZE")] = None,
    train_size: Annotated[Optional[int], _opt("Training items drawn from retrieval (default: protocol).", "TRAIN_SIZE")] = None,
    validation_fraction: Annotated[float, _opt("Evaluate on this fraction of the training set instead (tuning).", "VALIDATION_FRACTION")] = 0.0,
    cache_dir: Annotated[Optional[Path], _opt("Feature cache directory.", "CACHE_DIR")] = None,
    device: Annotated[str, _opt("auto, cpu or cuda.", "DEVICE")] = "auto",
    threads: Annotated[Optional[int], _opt("Torch CPU threads.", "THREADS")] = None,
    progress: Annotated[bool, _opt("Show progress bars.", "PROGRESS")] = True,
) -> None:
    """Train a cross-modal hashing model and evaluate it (MAP over the whole ranking and MAP@50)."""
    from model.evaluate import summary_line
    from model.run import train_run

    fields = dict(
        dataset=dataset, out=out, data=data, method=method, bits=bits, seed=seed, epochs=epochs,
        batch_size=batch_size, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
        hidden=_parse_hidden(hidden), dropout=dropout, hp=_parse_hp(hp),
        text_features=text_features, text_encoder=text_encoder, min_word_count=min_word_count,
        image_backbone=image_backbone, finetune_backbone=finetune_backbone, backbone_lr=backbone_lr,
        query_size=query_size, train_size=train_size,
        validation_fraction=validation_fraction, device=device, threads=threads,
    )
    if cache_dir is not None:
        fields["cache_dir"] = cache_dir
    try:
        cfg = TrainConfig(**fields)
        metrics = train_run(cfg, progress=progress)
    except ValidationError as exc:
        _fail(str(exc))
    except (DataError, ValueError, RuntimeError) as exc:
        _fail(str(exc))
    typer.echo(summary_line(metrics))
    typer.echo(f"run written to {out}")


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `cmhash train`.")],
    progress: Annotated[bool, _opt("Show progress bars.", "PROGRESS")] = True,
) -> None:
    """Recompute a run's codes, metrics.json and P-R plot from its checkpoint and the data."""
    from model.evaluate import summary_line
    from model.run import evaluate_run

    if not (run_dir / "checkpoint.pt").exists():
        _fail(f"{run_dir} is not a run directory (no checkpoint.pt)")
    try:
        metrics = evaluate_run(run_dir, progress=progress)
    except (DataError, ValueError, RuntimeError) as exc:
        _fail(str(exc))
    typer.echo(summary_line(metrics))
    typer.echo(json.dumps({k: {m: metrics[k][m] for m in ("map", "map@50")} for k in ("i2t", "t2i")}))


if __name__ == "__main__":
    app()

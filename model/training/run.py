"""A training run as files: RUN_DIR holds config.json, split.json, checkpoint.pt,
history.json, metrics.json, codes.npz and pr_curve.png; `evaluate_run` recomputes them.
metrics.json also holds the per-label MAPs and the warnings about the training data
(`data_checks.data_warnings` of the rows trained on).

A k-fold run (`folds` set) is RUN_DIR/fold-0 ... fold-(k-1), each such a run directory, plus
RUN_DIR/config.json and RUN_DIR/metrics.json with the per-fold MAPs, their mean and its 95%
confidence interval, the per-label MAPs over all folds' queries and the folds' data warnings
(`evaluate.aggregate_folds`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from model.training.config import TrainConfig
from model.training.data import Split
from model.training.data_checks import data_warnings
from model.training.encoders import CrossModalHasher
from model.training.evaluate import aggregate_folds, split_codes, write_evaluation
from model.training.train import (
    PreparedRun,
    TrainHistory,
    checkpoint_bag_of_words,
    load_checkpoint,
    prepare_run,
    save_checkpoint,
    train_model,
)


def _title(cfg: TrainConfig) -> str:
    fold = f", fold {cfg.fold} of {cfg.folds}" if cfg.fold is not None else ""
    return f"{cfg.method} {cfg.bits} bits on {cfg.dataset} (seed {cfg.seed}{fold})"


def fold_dir(out: Path, fold: int) -> Path:
    """The run directory of fold `fold` inside a k-fold run directory."""
    return Path(out) / f"fold-{fold}"


def fold_configs(cfg: TrainConfig) -> list[TrainConfig]:
    """One config per fold of a k-fold config, each writing RUN_DIR/fold-i."""
    assert cfg.folds is not None
    return [cfg.model_copy(update={"fold": i, "out": fold_dir(cfg.out, i)}) for i in range(cfg.folds)]


def run_warnings(cfg: TrainConfig, run: PreparedRun) -> list[str]:
    """`data_warnings` of the run: the labels of the rows the model trains on, for `cfg.bits`."""
    return data_warnings(run.dataset.labels[run.eval_split.train], run.dataset.label_names, cfg.bits)


def train_summary(cfg: TrainConfig, run: PreparedRun, history: TrainHistory) -> dict[str, Any]:
    """The "train" section of metrics.json: epochs, time per epoch, peak memory, what was evaluated."""
    return {
        "seconds_per_epoch_mean": sum(history.seconds_per_epoch) / max(1, len(history.seconds_per_epoch)),
        "epochs": len(history.seconds_per_epoch),
        "peak_rss_mib": history.peak_rss_mib,
        "n_train": len(run.eval_split.train),
        "evaluated_on": "validation" if cfg.validation_fraction > 0 else "query/retrieval",
    }


def write_run_dir(
    cfg: TrainConfig,
    run: PreparedRun,
    model: CrossModalHasher,
    history: TrainHistory,
    codes: dict[str, Any],
    train: dict[str, Any],
) -> dict[str, Any]:
    """Write every file of the run directory `cfg.out` for a trained model; return the metrics
    (with `train` as their "train" section)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(cfg.model_dump_json(indent=2))
    run.split.save(out / "split.json")
    save_checkpoint(out / "checkpoint.pt", model, cfg, run)
    (out / "history.json").write_text(json.dumps(history.to_json(), indent=2))
    metrics = write_evaluation(out, codes, _title(cfg), run.dataset.label_names, run_warnings(cfg, run))
    metrics["train"] = train
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def write_fold_aggregate(cfg: TrainConfig, fold_metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """RUN_DIR/config.json and the aggregate RUN_DIR/metrics.json of a k-fold run."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(cfg.model_dump_json(indent=2))
    metrics = aggregate_folds(fold_metrics)
    metrics["fold_dirs"] = [fold_dir(out, i).name for i in range(len(fold_metrics))]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def train_run(cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train `cfg.method`, evaluate on the query/retrieval split (or the validation part of the
    training set) and write the run directory. Returns the metrics. With `cfg.folds` (and no
    `cfg.fold`), run every fold into RUN_DIR/fold-i and return the aggregate metrics."""
    if cfg.folds is not None and cfg.fold is None:
        return write_fold_aggregate(cfg, [train_run(c, progress) for c in fold_configs(cfg)])
    run = prepare_run(cfg, progress)
    model, history = train_model(cfg, run, progress)
    return write_run_dir(cfg, run, model, history, _codes(model, run), train_summary(cfg, run, history))


def _codes(model: CrossModalHasher, run: PreparedRun) -> dict[str, Any]:
    return split_codes(model, run.inputs, run.eval_split.query, run.eval_split.retrieval)


def evaluate_run(run_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Reload RUN_DIR's checkpoint, config and split, recompute the codes and metrics from the
    data, and rewrite metrics.json, codes.npz and pr_curve.png."""
    run_dir = Path(run_dir)
    if not (run_dir / "checkpoint.pt").exists() and (fold_dir(run_dir, 0) / "checkpoint.pt").exists():
        cfg = TrainConfig.model_validate_json((run_dir / "config.json").read_text())
        assert cfg.folds is not None
        return write_fold_aggregate(cfg, [evaluate_run(fold_dir(run_dir, i), progress) for i in range(cfg.folds)])
    model, cfg, ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    run = prepare_run(cfg, progress, checkpoint_bag_of_words(ckpt))
    saved = Split.load(run_dir / "split.json")
    if cfg.validation_fraction == 0:
        run.eval_split = saved
    previous = run_dir / "metrics.json"
    train_info = json.loads(previous.read_text()).get("train") if previous.exists() else None
    metrics = write_evaluation(
        run_dir, _codes(model, run), _title(cfg), run.dataset.label_names, run_warnings(cfg, run)
    )
    if train_info is not None:
        metrics["train"] = train_info
        previous.write_text(json.dumps(metrics, indent=2))
    return metrics

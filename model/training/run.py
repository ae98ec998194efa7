"""A training run as files: RUN_DIR holds config.json, split.json, checkpoint.pt,
history.json, metrics.json, codes.npz and pr_curve.png; `evaluate_run` recomputes them."""

from __future__ import annotations

import json
from pathlib import Path

from model.training.config import TrainConfig
from model.training.data import Split
from model.training.encoders import CrossModalHasher
from model.training.evaluate import split_codes, write_evaluation
from model.training.train import (
    PreparedRun,
    TrainHistory,
    load_checkpoint,
    prepare_run,
    save_checkpoint,
    train_model,
)


def _title(cfg: TrainConfig) -> str:
    return f"{cfg.method} {cfg.bits} bits on {cfg.dataset} (seed {cfg.seed})"


def train_summary(cfg: TrainConfig, run: PreparedRun, history: TrainHistory) -> dict:
    """The "train" section of metrics.json: epochs, time per epoch, peak memory, what was evaluated."""
    return {
        "seconds_per_epoch_mean": sum(history.seconds_per_epoch) / max(1, len(history.seconds_per_epoch)),
        "epochs": len(history.seconds_per_epoch),
        "peak_rss_mib": history.peak_rss_mib,
        "n_train": int(len(run.eval_split.train)),
        "evaluated_on": "validation" if cfg.validation_fraction > 0 else "query/retrieval",
    }


def write_run_dir(cfg: TrainConfig, run: PreparedRun, model: CrossModalHasher, history: TrainHistory,
                  codes: dict, train: dict) -> dict:
    """Write every file of the run directory `cfg.out` for a trained model; return the metrics
    (with `train` as their "train" section)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(cfg.model_dump_json(indent=2))
    run.split.save(out / "split.json")
    save_checkpoint(out / "checkpoint.pt", model, cfg, run)
    (out / "history.json").write_text(json.dumps(history.to_json(), indent=2))
    metrics = write_evaluation(out, codes, _title(cfg))
    metrics["train"] = train
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def train_run(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train `cfg.method`, evaluate on the query/retrieval split (or the validation part of the
    training set) and write the run directory. Returns the metrics."""
    run = prepare_run(cfg, progress)
    model, history = train_model(cfg, run, progress)
    return write_run_dir(cfg, run, model, history, _codes(model, run), train_summary(cfg, run, history))


def _codes(model: CrossModalHasher, run: PreparedRun) -> dict:
    return split_codes(model, run.inputs, run.eval_split.query, run.eval_split.retrieval)


def evaluate_run(run_dir: Path, progress: bool = True) -> dict:
    """Reload RUN_DIR's checkpoint, config and split, recompute the codes and metrics from the
    data, and rewrite metrics.json, codes.npz and pr_curve.png."""
    run_dir = Path(run_dir)
    model, cfg, _ = load_checkpoint(run_dir / "checkpoint.pt")
    run = prepare_run(cfg, progress)
    saved = Split.load(run_dir / "split.json")
    if cfg.validation_fraction == 0:
        run.eval_split = saved
    previous = run_dir / "metrics.json"
    train_info = json.loads(previous.read_text()).get("train") if previous.exists() else None
    metrics = write_evaluation(run_dir, _codes(model, run), _title(cfg))
    if train_info is not None:
        metrics["train"] = train_info
        previous.write_text(json.dumps(metrics, indent=2))
    return metrics

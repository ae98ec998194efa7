"""`cmhash evaluate`: recompute a run's codes and metrics from its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from service.cli.common import env_option, fail, needs_training_extra, user_errors

NAME = "evaluate"


def run(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `cmhash train`.")],
    progress: Annotated[bool, env_option("Show progress bars.", "PROGRESS")] = True,
) -> None:
    """Recompute a run's codes, metrics.json and P-R plot from its checkpoint and the data."""
    if not (run_dir / "checkpoint.pt").exists():
        fail(f"{run_dir} is not a run directory (no checkpoint.pt)")
    try:
        from model.training.evaluate import summary_line
        from model.training.run import evaluate_run
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "torch":
            needs_training_extra()
        raise
    with user_errors():
        metrics = evaluate_run(run_dir, progress=progress)
    typer.echo(summary_line(metrics))
    typer.echo(json.dumps({k: {m: metrics[k][m] for m in ("map", "map@50")} for k in ("i2t", "t2i")}))

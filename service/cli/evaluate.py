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
    rerank: Annotated[
        str | None,
        typer.Option(
            "--rerank",
            help="Asymmetric re-ranking by the queries' h . b: R (re-rank the Hamming top R) or all. "
            "Writes RUN/metrics-rerank.json and RUN/codes-rerank.npz instead (metrics.json is kept).",
            metavar="R|all",
        ),
    ] = None,
) -> None:
    """Recompute a run's codes, metrics.json and P-R plot from its checkpoint and the data."""
    if not (run_dir / "checkpoint.pt").exists():
        fail(f"{run_dir} is not a run directory (no checkpoint.pt)")
    if rerank is not None:
        return _rerank(run_dir, rerank, progress)
    try:
        from model.training.evaluate import report
        from model.training.run import evaluate_run
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "torch":
            needs_training_extra()
        raise
    with user_errors():
        metrics = evaluate_run(run_dir, progress=progress)
    typer.echo(report(metrics, run_dir))
    typer.echo(json.dumps({k: {m: metrics[k][m] for m in ("map", "map@50")} for k in ("i2t", "t2i")}))


def _rerank(run_dir: Path, rerank: str, progress: bool) -> None:
    """`cmhash evaluate RUN --rerank R|all`: the re-ranked metrics beside the plain ones."""
    try:
        from model.training.evaluate import summary_line
        from model.training.rerank import evaluate_run_rerank, parse_rerank
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "torch":
            needs_training_extra()
        raise
    try:
        candidates = parse_rerank(rerank)
    except ValueError as exc:
        fail(str(exc))
    with user_errors():
        metrics = evaluate_run_rerank(run_dir, candidates, progress=progress)
    typer.echo(summary_line(metrics))
    typer.echo(
        json.dumps(
            {
                "rerank": {k: {m: metrics[k][m] for m in ("map", "map@50")} for k in ("i2t", "t2i")},
                "hamming": metrics["rerank"]["hamming"],
                "candidates": candidates,
            }
        )
    )

"""`cmhash export`: a training run to an ONNX model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from service.cli.common import (
    env_option,
    fail,
    flag_option,
    needs_training_extra,
    quiet_third_party_warnings,
    user_errors,
)

NAME = "export"


def run(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `cmhash train`.")],
    out: Annotated[Path, flag_option("Model directory to write (image.onnx, text.onnx, model.json).")],
    opset: Annotated[int | None, env_option("ONNX opset to target (default: the exporter's).", "OPSET")] = None,
) -> None:
    """Export a run's image and text encoders to ONNX for serving with ONNX Runtime; the graphs are
    checked against PyTorch before the model directory is written."""
    if not (run_dir / "checkpoint.pt").is_file():
        fail(f"{run_dir} is not a run directory (no checkpoint.pt)")
    try:
        from model.training.export import export_run
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("torch", "onnx", "onnxscript"):
            needs_training_extra()
        raise
    quiet_third_party_warnings()  # again: importing torch resets its loggers' levels
    with user_errors():
        info = export_run(run_dir, out, opset=opset)
    image, text = info.image, info.text
    image_desc = (
        f"pixels 3x{image.preprocess['size']}x{image.preprocess['size']} through {image.backbone}"
        if image.kind == "pixels" and image.preprocess
        else f"{image.dim}-d feature vectors"
    )
    text_desc = {
        "bow": f"bag of words over {text.dim} words",
        "minilm": "MiniLM tokens",
        "features": f"{text.dim}-d feature vectors (no vocabulary: raw texts cannot be encoded)",
    }[text.kind]
    typer.echo(f"exported {info.method} {info.bits} bits from {run_dir} (ONNX opset {info.opset})")
    typer.echo(f"image input: {image_desc}")
    typer.echo(f"text input: {text_desc}")
    typer.echo(f"checksum: {info.checksum}")
    typer.echo(f"model written to {out}")

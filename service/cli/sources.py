"""`cmhash sources`: a dataset's items as `cmhash index` inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from model.training.config import DatasetName, TrainConfig
from service.cli.common import env_option, flag_option, user_errors

NAME = "sources"


def run(
    dataset: Annotated[
        DatasetName, env_option("Dataset loader (image files needed: mirflickr or manifest).", "DATASET")
    ],
    out: Annotated[Path, flag_option("Folder to write images.jsonl and texts.jsonl into.")],
    data: Annotated[
        Path | None, env_option("Dataset path (default: the dataset's folder under CMHASH_DATA_ROOT).", "DATA")
    ] = None,
) -> None:
    """Write a dataset's images and texts as `cmhash index` inputs (JSONL with ids, labels, texts)."""
    from model.training.data import load_dataset
    from model.training.data.sources import write_dataset_sources

    with user_errors():
        path = TrainConfig(dataset=dataset, data=data, out=out).data_path()
        images, texts = write_dataset_sources(load_dataset(dataset, path), out)
    typer.echo(f"wrote {images}" + (f" and {texts}" if texts else ""))

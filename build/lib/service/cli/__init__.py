"""`cmhash`: a thin command line over the layers below it, one module per command.

This package is the top layer, the only one that knows every other: training commands
(train, evaluate, export, sources) import the torch training library lazily, so the serving
commands (index, search, serve) run where torch is not installed."""

from __future__ import annotations

import typer

from service.cli import evaluate, export, index, search, serve, sources, train
from service.cli.common import quiet_third_party_warnings

app = typer.Typer(help="cmhash: cross-modal hashing (text <-> image) with binary codes.", no_args_is_help=True)
quiet_third_party_warnings()
for command in (train, evaluate, export, sources, index, search, serve):
    app.command(command.NAME)(command.run)

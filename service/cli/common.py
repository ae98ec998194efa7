"""What every `cmhash` command shares: options read from CMHASH_* variables (enumerated
choices are `Literal` types, listed by --help and checked by typer), and the one way a user's mistake ends a command (one line, exit status 2)."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from pydantic import ValidationError

from model.runtime.errors import UserError

ENV_PREFIX = "CMHASH_"


def env_option(help_text: str, name: str, *decls: str, **kw: Any) -> Any:
    """A typer option that can also be set by the variable CMHASH_<name>. Each variable name
    means one thing in every command that reads it (see the README's variable table)."""
    return typer.Option(*decls, help=help_text, envvar=ENV_PREFIX + name, **kw)


def flag_option(help_text: str, *decls: str, **kw: Any) -> Any:
    """A per-invocation option (an input or output path, a query): a flag only, never read from
    the environment, so a variable left set for one command cannot leak into another."""
    return typer.Option(*decls, help=help_text, **kw)


def fail(message: str) -> NoReturn:
    """Print `message` as one error line and exit with status 2 (the user's mistake)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def one_line(exc: ValidationError) -> str:
    """A pydantic validation error as one line: field: problem; field: problem."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors())


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn what the user did wrong (UserError, invalid settings) into one line and exit 2;
    anything else is a bug and keeps its traceback."""
    try:
        yield
    except UserError as exc:
        fail(str(exc))
    except ValidationError as exc:
        fail(one_line(exc))


def quiet_third_party_warnings() -> None:
    """Silence warnings from libraries that a user cannot act on (torchvision, setuptools,
    onnxscript deprecations); CMHASH_SHOW_WARNINGS=1 keeps them."""
    if os.environ.get(ENV_PREFIX + "SHOW_WARNINGS"):
        return
    for category in (DeprecationWarning, FutureWarning, UserWarning):
        warnings.filterwarnings(
            "ignore",
            category=category,
            module=r"(torch|torchvision|onnxscript|onnx|setuptools|pkg_resources|transformers).*",
        )
    # torch's ONNX exporter logs one line per torchvision op it cannot register (torchvision is
    # not a dependency) and onnxscript its rewrite passes: nothing a user can act on.
    for name in ("torch.onnx", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)


def needs_training_extra() -> NoReturn:
    """Exit with the install hint when a training command runs where torch is absent."""
    fail(
        "this command needs the training extra (PyTorch): pip install 'cmhash[train]' "
        "(serving, indexing and search run without it)"
    )

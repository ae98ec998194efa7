"""Refuse a runtime install that mixes the CPU and the GPU builds of a package.

`pip install 'cmhash[gpu]'` into a venv that has the `cpu` extra leaves both distributions'
files in one import package (`onnxruntime` and `onnxruntime-gpu` both install `onnxruntime/`):
whichever was written last wins file by file, and device "auto" silently stays on the CPU."""

from __future__ import annotations

from functools import cache
from importlib import metadata

from model.runtime.errors import UserError

# One import package, two distributions that must never be installed together.
EXCLUSIVE = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "faiss": ("faiss-cpu", "faiss-gpu")}


def installed(distribution: str) -> bool:
    """Whether `distribution` is installed in this environment."""
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


@cache
def check_exclusive_installs(package: str) -> None:
    """Raise UserError when both builds of `package` ("onnxruntime" or "faiss") are installed."""
    cpu, gpu = EXCLUSIVE[package]
    if installed(cpu) and installed(gpu):
        raise UserError(
            f"both {cpu} and {gpu} are installed, and their files are mixed in one '{package}' package: "
            f"uninstall both, then install one extra, cmhash[cpu] or cmhash[gpu] (never both)"
        )

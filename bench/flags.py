"""Small helpers shared by the bench scripts (kept free of torch so light scripts stay light):
flags read from CMHASH_BENCH_<FLAG> variables, argparse types, the command line as typed,
/proc facts for the machine line and a free local port."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import socket
import sys
from pathlib import Path


def env(flag: str, default: str | None) -> str | None:
    """The value of CMHASH_BENCH_<FLAG> when set, else `default`."""
    return os.environ.get(f"CMHASH_BENCH_{flag.upper().replace('-', '_')}", default)


def boolean(text: str) -> bool:
    """An environment value of a boolean flag: 1/true/yes/on or 0/false/no/off/''."""
    value = text.strip().lower()
    if value not in {"1", "true", "yes", "on", "0", "false", "no", "off", ""}:
        raise argparse.ArgumentTypeError(f"expected a boolean; got {text!r}")
    return value in {"1", "true", "yes", "on"}


def proc_field(path: str, field: str) -> str | None:
    """The value of the first `field: value` line of a /proc file, or None."""
    try:
        match = re.search(rf"^{field}\s*:\s*(.+)$", Path(path).read_text(), re.MULTILINE)
    except OSError:
        return None
    return match.group(1).strip() if match else None


def ints(text: str) -> list[int]:
    """An argparse type: a non-empty comma list of positive integers (duplicates dropped)."""
    try:
        items = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        items = []
    if not items or min(items) < 1:
        raise argparse.ArgumentTypeError(f"expected a comma list of positive integers; got {text!r}")
    return list(dict.fromkeys(items))


def positive(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return value


def command_line() -> str:
    """The command as typed, with the CMHASH_* variables that were set in front."""
    variables = [f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items()) if k.startswith("CMHASH_")]
    python = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else sys.executable
    return " ".join([*variables, shlex.join([python, *sys.argv])])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

"""Small helpers shared by the bench scripts (kept free of torch so light scripts stay light):
flags read from CMHASH_BENCH_<FLAG> variables, and /proc facts for the machine line."""

from __future__ import annotations

import argparse
import os
import re
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

"""Small helpers shared by the bench scripts (kept free of torch so light scripts stay light):
flags read from CMHASH_BENCH_<FLAG> variables, argparse types, the command line as typed,
/proc facts for the machine line, a free local port and waiting for a started server."""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx


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


def usable_cpus() -> int:
    """CPUs this process may run on (what `nproc` prints)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine_base() -> dict[str, Any]:
    """The machine facts every benchmark reports: CPU model and counts, memory, platform, python."""
    mem_kb = proc_field("/proc/meminfo", "MemTotal")
    return {
        "cpu_model": proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "nproc": usable_cpus(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(int(mem_kb.split()[0]) / 2**20, 1) if mem_kb else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


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


def wait_ready(proc: subprocess.Popen[bytes], base: str, log: Path, timeout_s: float) -> None:
    """Return once the server `proc` started answers GET {base}/readyz with 200; RuntimeError
    (with the end of its `log`) when it exits first or is not ready within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"server not ready after {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")
        try:
            ready = httpx.get(f"{base}/readyz", timeout=5)
            if ready.status_code == 200:
                return
            if ready.json().get("status") == "failed":  # the model or every gallery failed to load: no use waiting
                raise RuntimeError(f"server failed to load: {ready.json().get('detail')}\n{log.read_text()[-3000:]}")
        except (httpx.TransportError, ValueError):
            pass
        time.sleep(0.1)


RESULTS_DIR = Path(__file__).resolve().parents[1] / "docs" / "results"  # committed results behind docs/results.md


def provenance() -> dict[str, Any]:
    """Where a result comes from: the commit (`git describe --always --dirty`), whether the tree
    was clean, the command and the UTC time. docs/results.md cites only results made clean."""
    root = Path(__file__).resolve().parents[1]
    try:
        described = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True, text=True, check=True
        ).stdout.strip()
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        described, head = "unknown", "unknown"
    return {
        "commit": head,
        "describe": described,
        "clean": not described.endswith("-dirty") and head != "unknown",
        "command": command_line(),
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_result(name: str, result: dict[str, Any], out_dir: Path | None = None) -> Path:
    """Write `result` with its provenance as `name`.json (under docs/results/ by default, where
    only results made at a clean commit belong: a dirty tree writes to bench/out/ instead)."""
    import json

    record = {"provenance": provenance(), "machine": machine_base(), **result}
    if out_dir is None:
        out_dir = RESULTS_DIR if record["provenance"]["clean"] else RESULTS_DIR.parents[1] / "bench" / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return path

"""The serving path runs where torch is absent: `cmhash index`, `cmhash search` and `cmhash
serve` in a subprocess in which importing torch (or anything built on it) fails, and
`cmhash train` there says which extra to install instead of a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.servers import free_port, wait_ready
from tests.tiny_data import draw_item

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[3]
# Every import of these fails in the child, as it would where they are not installed.
BLOCKER = """
import sys
class _NoTraining:
    BLOCKED = ("torch", "torchvision", "transformers", "onnx", "onnxscript", "efficientnet_lite_pytorch", "scipy", "matplotlib")
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None
sys.meta_path.insert(0, _NoTraining())
sys.argv = ["cmhash", *sys.argv[1:]]
from service.cli import app
app()
"""


def cmhash(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `cmhash ARGS` with torch unimportable; no CMHASH_* variable of the caller leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMHASH_")}
    return subprocess.run(
        [sys.executable, "-c", BLOCKER, *map(str, args)],
        cwd=ROOT,
        env=env,
        text=True,
        capture_output=True,
        timeout=timeout,
    )


def test_index_and_search_run_without_torch(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        draw_item(i % 4, rng).save(folder / f"{i}.png")
    result = cmhash("index", "--model", tiny_model_dir, "--images", folder, "--out", tmp_path / "g", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "added 6 items" in result.stdout
    result = cmhash(
        "search", "--model", tiny_model_dir, "--gallery", tmp_path / "g", "--text", "red", "-k", "3", "--json"
    )
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)
    assert [h["rank"] for h in hits] == [1, 2, 3]


def test_train_without_torch_names_the_extra(tiny_manifest: Path, tmp_path: Path) -> None:
    result = cmhash("train", "--dataset", "manifest", "--data", tiny_manifest, "--out", tmp_path / "run")
    assert result.returncode == 2
    assert "cmhash[train]" in result.stderr and "Traceback" not in result.stderr


def test_serve_runs_without_torch(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMHASH_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            BLOCKER,
            "serve",
            "--model",
            str(tiny_model_dir),
            "--text-gallery",
            str(tmp_path / "texts"),
            "--port",
            str(port),
            "--encoder-threads",
            "1",
        ],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", alive=lambda: proc.poll() is None, timeout=60)
        r = httpx.post(f"http://127.0.0.1:{port}/encode/text", json={"text": "a red circle"}, timeout=10)
        assert r.status_code == 200 and len(r.json()["code"]) == 16 // 4
    finally:
        proc.terminate()
        proc.wait(timeout=30)

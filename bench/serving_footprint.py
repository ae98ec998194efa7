"""What serving costs without torch: the size of a fresh serving-only venv (`pip install
'.[cpu]'`), the time from `cmhash serve` to a ready server, and the server's memory at idle and
after 1,000 searches (goals of issue 11: venv under 500 MB, RSS at idle under 200 MB).

    python bench/serving_footprint.py --model runs/demo/model --galleries runs/demo

The venv is made in a temporary folder (or --venv, reused when it exists) from this checkout,
not editable, so it holds exactly what a user's `pip install 'cmhash[cpu]'` holds. Writes
docs/results/serving_footprint.json (bench/out/ from a dirty tree) and prints a table."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.flags import free_port, proc_field, write_result  # noqa: E402


def folder_bytes(path: Path) -> int:
    """Bytes of every regular file below `path` (what `du -sb` counts, without directories)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def make_venv(venv: Path) -> float:
    """Create `venv` with the serving install; seconds taken (0 when it already exists)."""
    if (venv / "bin" / "cmhash").exists():
        return 0.0
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    with tempfile.TemporaryDirectory() as copy:  # build from a copy: setuptools leaves build/ in the source tree
        shutil.copytree(
            ROOT,
            copy,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns(".venv", ".git", "runs", "build", "bench", "tests", "docs"),
        )
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", f"{copy}[cpu]"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return time.perf_counter() - start


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """A /proc/<pid>/status memory field in MiB."""
    value = proc_field(f"/proc/{pid}/status", field)
    return int(value.split()[0]) / 1024 if value else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "runs" / "demo" / "model")
    parser.add_argument(
        "--galleries",
        type=Path,
        default=ROOT / "runs" / "demo",
        help="folder with gallery-images/ and gallery-texts/ (copied; the copies are served)",
    )
    parser.add_argument("--venv", type=Path, help="serving venv to make or reuse (default: a temporary one)")
    parser.add_argument("--searches", type=int, default=1000)
    args = parser.parse_args()
    args.model, args.galleries = args.model.resolve(), args.galleries.resolve()  # the server runs in a temp folder
    if not (args.model / "model.json").is_file():
        sys.exit(f"{args.model} is not a model directory: run `make demo` first (or pass --model)")
    work = Path(tempfile.mkdtemp(prefix="cmhash-footprint-"))
    venv = args.venv or work / "venv"
    report: dict[str, Any] = {}
    report["venv_install_s"] = round(make_venv(venv), 1)
    report["venv_mib"] = round(folder_bytes(venv) / 2**20, 1)
    python = venv / "bin" / "python"
    probe = subprocess.run([str(python), "-c", "import torch"], capture_output=True)
    report["torch_importable"] = probe.returncode == 0
    for name in ("gallery-images", "gallery-texts"):
        shutil.copytree(args.galleries / name, work / name)
    port = free_port()
    log = work / "server.log"
    start = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                str(venv / "bin" / "cmhash"),
                "serve",
                "--model",
                str(args.model),
                "--image-gallery",
                str(work / "gallery-images"),
                "--text-gallery",
                str(work / "gallery-texts"),
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=work,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None or time.perf_counter() - start > 120:
                sys.exit(f"server did not become ready:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        report["start_to_ready_s"] = round(time.perf_counter() - start, 2)
        time.sleep(2)
        report["rss_idle_mib"] = round(rss_mib(proc.pid), 1)
        words = ["dog", "beach", "sunset", "sky", "flower", "city", "night", "car", "tree", "water"]
        with httpx.Client(base_url=base, timeout=30) as client:
            for i in range(args.searches):
                text = f"{words[i % 10]} {words[(i * 7) % 10]}"
                path = "/search/text-to-image" if i % 2 else "/search/text-to-text"
                client.post(path, json={"text": text, "k": 10}).raise_for_status()
        report["rss_after_searches_mib"] = round(rss_mib(proc.pid), 1)
        report["rss_peak_mib"] = round(rss_mib(proc.pid, "VmHWM"), 1)
        report["searches"] = args.searches
        report["server_modules_torch"] = "torch" in (Path(f"/proc/{proc.pid}/maps").read_text())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(work / "gallery-images", ignore_errors=True)
        shutil.rmtree(work / "gallery-texts", ignore_errors=True)
    print(f"written to {write_result('serving_footprint', report)}")
    print("| serving venv | torch importable | start to ready | RSS idle | RSS after searches | peak RSS |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {report['venv_mib']:.0f} MiB | {report['torch_importable']} | {report['start_to_ready_s']} s | "
        f"{report['rss_idle_mib']:.0f} MiB | {report['rss_after_searches_mib']:.0f} MiB ({args.searches}) | "
        f"{report['rss_peak_mib']:.0f} MiB |"
    )


if __name__ == "__main__":
    main()

"""Hostile-image benchmark (issue 10, finding 1): a real `cmhash serve` (uvicorn, in a subprocess) is
sent three images at once on POST /search/image-to-text, and its peak resident memory is measured.

    .venv/bin/python bench/hostile_images.py --model runs/demo/model            # ~1 min
    CMHASH_BENCH_MODEL=/path/to/model .venv/bin/python bench/hostile_images.py

Each scenario posts three images concurrently (one thread and httpx.Client each). Before it, the
server's peak RSS is reset (`5` written to /proc/<pid>/clear_refs) and its VmRSS read; after all three
answers, its VmHWM (peak RSS) is read: the growth is VmHWM - VmRSS before. A sampling thread also
records the largest VmRSS seen, in case clear_refs is not permitted. Scenarios: the issue's images
(96 x 400,000 PNG, 1 x 39,000,000 PNG, 6000 x 6000 JPEG) together and three of each, plus three
5000 x 5000 PNGs (over the decoding limit) and three 4000 x 4000 PNGs (16 Mpixels: the largest a
server with the default settings decodes; the worst case the decode semaphore bounds). The goal:
every scenario grows the server by less than 256 MiB and every answer is a 4xx with the error body
naming the limit, or a 200. The galleries are empty (created in a temporary folder): the search
itself costs nothing, only the upload handling is measured. Writes OUT/hostile_images.json.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from flags import command_line, env, free_port, machine_base, wait_ready
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "out"
ROUTE = "/search/image-to-text"
GOAL_MIB = 256
READY_TIMEOUT_S = 300.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--model",
        type=Path,
        default=env("model", str(ROOT / "runs/demo/model")),
        help="exported model directory (`cmhash export`; `make demo` writes runs/demo/model)",
    )
    p.add_argument("--out", type=Path, default=env("out", str(DEFAULT_OUT)), help="folder of the JSON report")
    p.add_argument("--timeout", type=float, default=float(env("timeout", "120")), help="seconds per request")
    p.add_argument(
        "--scenarios", default=env("scenarios", ""), help="comma list of scenario names to run (default: all)"
    )
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Images (built without ever holding them decoded)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(width: int, height: int, rgb: bool = True) -> bytes:
    """A valid flat-colour 8-bit PNG (RGB or grey) of any size, compressed row by row."""
    z = zlib.compressobj(9)
    row = b"\x00" + (b"\x10\x80\xf0" if rgb else b"\x80") * width
    per_piece = max(1, (1 << 20) // len(row))
    idat = b"".join(z.compress(row * min(per_piece, height - y)) for y in range(0, height, per_piece)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2 if rgb else 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (40, 120, 200)).save(buf, "JPEG", quality=80)
    return buf.getvalue()


MAKERS = {
    "strip_96x400000.png": lambda: png(96, 400_000),
    "line_1x39000000.png": lambda: png(1, 39_000_000, rgb=False),
    "huge_6000x6000.jpg": lambda: jpeg(6000, 6000),
    "square_5000x5000.png": lambda: png(5000, 5000),
    "large_4000x4000.png": lambda: png(4000, 4000),
}


def images(names: list[str] | None = None) -> dict[str, bytes]:
    """The hostile images by name (only `names` when given)."""
    return {name: make() for name, make in MAKERS.items() if names is None or name in names}


SCENARIOS = {
    "issue_mix": ["strip_96x400000.png", "line_1x39000000.png", "huge_6000x6000.jpg"],
    "3_strips": ["strip_96x400000.png"] * 3,
    "3_lines": ["line_1x39000000.png"] * 3,
    "3_huge_jpegs": ["huge_6000x6000.jpg"] * 3,
    "3_squares_over_decode_limit": ["square_5000x5000.png"] * 3,
    "3_largest_decodable_pngs": ["large_4000x4000.png"] * 3,
}


# ---------------------------------------------------------------------------------------------
# Server and measurements


def status_kib(pid: int, field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    return int(match.group(1)) if match else 0


def reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def post(base: str, name: str, data: bytes, timeout: float) -> dict[str, Any]:
    started = time.perf_counter()
    with httpx.Client(base_url=base, timeout=timeout) as http:
        r = http.post(ROUTE, files={"file": (name, data, "application/octet-stream")}, data={"k": "5"})
    took = time.perf_counter() - started
    try:
        body = r.json()
    except ValueError:
        body = {}
    error = body.get("error") if isinstance(body, dict) else None
    return {
        "image": name,
        "bytes": len(data),
        "status": r.status_code,
        "seconds": round(took, 3),
        "error_code": error.get("code") if error else None,
        "message": error.get("message") if error else None,
    }


def run_scenario(base: str, pid: int, files: dict[str, bytes], names: list[str], timeout: float) -> dict[str, Any]:
    time.sleep(0.5)  # let the previous scenario's memory settle
    peak_reset = reset_peak(pid)
    before = status_kib(pid, "VmRSS")
    sampled = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            sampled.append(status_kib(pid, "VmRSS"))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    with ThreadPoolExecutor(len(names)) as pool:
        answers = list(pool.map(lambda n: post(base, n, files[n], timeout), names))
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    hwm = status_kib(pid, "VmHWM")
    growth_kib = (hwm - before) if peak_reset else (max(sampled) - before)
    return {
        "images": names,
        "answers": answers,
        "wall_s": round(wall, 3),
        "rss_before_mib": round(before / 1024, 1),
        "peak_growth_mib": round(growth_kib / 1024, 1),
        "sampled_growth_mib": round((max(sampled) - before) / 1024, 1),
        "peak_source": "VmHWM after clear_refs" if peak_reset else "sampled VmRSS",
        "statuses": [a["status"] for a in answers],
        "ok": growth_kib / 1024 < GOAL_MIB
        and all(a["status"] == 200 or (400 <= a["status"] < 500 and a["message"]) for a in answers),
    }


def run_scenarios(
    base: str, pid: int, files: dict[str, bytes], wanted: list[str], timeout: float
) -> dict[str, dict[str, Any]]:
    """A warm-up search (sessions and arenas in the baseline), then each of the `wanted` scenarios
    against the server `pid` at `base`."""
    warm = post(base, "warm.jpg", jpeg(640, 480), timeout)
    if warm["status"] != 200:
        raise RuntimeError(f"warm-up request failed: {warm}")
    results: dict[str, dict[str, Any]] = {}
    for name in wanted:
        results[name] = run_scenario(base, pid, files, SCENARIOS[name], timeout)
        print(f"{name}: {results[name]['statuses']} +{results[name]['peak_growth_mib']} MiB", flush=True)
    return results


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'scenario':30} {'statuses':16} {'peak growth MiB':>16} {'wall s':>8}  verdict", "-" * 84]
    for name, r in results.items():
        lines.append(
            f"{name:30} {','.join(map(str, r['statuses'])):16} {r['peak_growth_mib']:16.1f} "
            f"{r['wall_s']:8.2f}  {'ok' if r['ok'] else 'FAIL'}"
        )
    lines.append("")
    lines.append("messages:")
    seen = set()
    for r in results.values():
        for a in r["answers"]:
            key = (a["image"], a["status"], a["message"])
            if key not in seen:
                seen.add(key)
                lines.append(f"  {a['image']}: {a['status']} {a['error_code'] or ''} {a['message'] or ''}".rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.model / "model.json").is_file():
        print(f"no exported model at {args.model}: pass --model (e.g. after `make demo`)", file=sys.stderr)
        return 2
    wanted = [s for s in args.scenarios.split(",") if s] or list(SCENARIOS)
    files = images([image for name in wanted for image in SCENARIOS[name]])
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="cmhash-hostile-") as tmp:
        port = free_port()
        log = Path(tmp) / "server.log"
        command = [
            sys.executable,
            "-m",
            "service.cli",
            "serve",
            "--model",
            str(args.model),
            "--image-gallery",
            str(Path(tmp) / "images"),
            "--text-gallery",
            str(Path(tmp) / "texts"),
            "--port",
            str(port),
            "--device",
            "cpu",
        ]
        with log.open("wb") as out:
            proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(proc, base, log, READY_TIMEOUT_S)
            settings = {}
            results = run_scenarios(base, proc.pid, files, wanted, args.timeout)
            settings["final_rss_mib"] = round(status_kib(proc.pid, "VmRSS") / 1024, 1)
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        server_log = log.read_text(errors="replace")
    report = table(results)
    print(report)
    meta = {
        "benchmark": "hostile_images",
        "date": datetime.datetime.now(datetime.UTC).isoformat(),
        "command": command_line(),
        "machine": machine_base(),
        "model": str(args.model),
        "route": ROUTE,
        "goal_peak_growth_mib": GOAL_MIB,
        "image_bytes": {k: len(v) for k, v in files.items()},
        "scenarios": results,
        "server": settings,
        "server_500s": server_log.count("unhandled error"),
        "all_ok": all(r["ok"] for r in results.values()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "hostile_images.json"
    path.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"\nwrote {path}")
    return 0 if meta["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

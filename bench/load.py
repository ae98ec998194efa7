"""Load test of `cmhash serve`: a bounded run of concurrent clients against a real server
process on 127.0.0.1, over fresh copies of the galleries (the originals stay untouched).

    .venv/bin/python bench/load.py                       # 60 s, 16 clients, runs/demo/model
    .venv/bin/python bench/load.py --duration 20 --clients 8

Each client draws requests from a mix (default text-to-image=4, image-to-text=2, add-text=2,
delete-text=1, add-image=1, delete-image=1) of text-to-image and image-to-text searches, text and
image adds, and deletes of its own acknowledged adds of that kind (a delete with none left
becomes an add), and records what was acknowledged. At the end:
  - status counts per route (any 5xx or connection error fails the run), p50 / p95 latency;
  - both final galleries (texts and images) checked against the clients' records: every item
    exactly once in a full radius search, every acknowledged add present and readable, every
    acknowledged delete gone (404), and the count equal to the initial items plus the live adds
    (nothing lost, nothing duplicated);
  - the upload folder (<image gallery>/uploads) holding exactly the files of the live uploaded
    images, by their metadata "path" (no file missing, no orphan or leftover *.tmp file), and
    each live uploaded image's file served (GET /gallery/images/{id}/file);
  - the server's RSS (VmRSS, sampled every second): first, last and max.

Every flag can also be set by an environment variable CMHASH_BENCH_<FLAG>. Writes
bench/out/load.json; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from flags import env, free_port, proc_field, wait_ready, write_result

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "out"  # an explicit --out writes there; the default writes docs/results/ when clean
HOST = "127.0.0.1"
READY_TIMEOUT_S = 180.0
ROUTES = ("text-to-image", "image-to-text", "add-text", "delete-text", "add-image", "delete-image")
KINDS = ("text", "image")  # the galleries; "add-<kind>" / "delete-<kind>" routes write to them


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model",
        type=Path,
        default=Path(env("model", str(ROOT / "runs/demo/model"))),
        help="exported model directory [CMHASH_BENCH_MODEL]",
    )
    p.add_argument(
        "--image-gallery",
        type=Path,
        default=Path(env("image_gallery", str(ROOT / "runs/demo/gallery-images"))),
        help="image gallery, copied before the run [CMHASH_BENCH_IMAGE_GALLERY]",
    )
    p.add_argument(
        "--text-gallery",
        type=Path,
        default=Path(env("text_gallery", str(ROOT / "runs/demo/gallery-texts"))),
        help="text gallery, copied before the run [CMHASH_BENCH_TEXT_GALLERY]",
    )
    p.add_argument(
        "--queries",
        type=Path,
        default=Path(env("queries", str(ROOT / "runs/demo/sources/images.jsonl"))),
        help="JSONL with 'image' paths and 'text' fields: the query images and texts [CMHASH_BENCH_QUERIES]",
    )
    p.add_argument(
        "--duration", type=float, default=float(env("duration", "60")), help="seconds of load [CMHASH_BENCH_DURATION]"
    )
    p.add_argument(
        "--clients", type=int, default=int(env("clients", "16")), help="concurrent clients [CMHASH_BENCH_CLIENTS]"
    )
    p.add_argument(
        "--max-requests",
        type=int,
        default=int(env("max_requests", "20000")),
        help="most requests per client [CMHASH_BENCH_MAX_REQUESTS]",
    )
    p.add_argument(
        "--mix",
        default=env("mix", "text-to-image=4,image-to-text=2,add-text=2,delete-text=1,add-image=1,delete-image=1"),
        help="relative weights of the request kinds [CMHASH_BENCH_MIX]",
    )
    p.add_argument(
        "--device", default=env("device", "auto"), help="server device: auto, cpu or cuda [CMHASH_BENCH_DEVICE]"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=int(env("threads", "0")) or None,
        help="server ONNX Runtime threads (default: all cores) [CMHASH_BENCH_THREADS]",
    )
    p.add_argument(
        "--seed", type=int, default=int(env("seed", "0")), help="random seed of the clients [CMHASH_BENCH_SEED]"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path(env("out", str(DEFAULT_OUT))),
        help="output folder [CMHASH_BENCH_OUT]",
    )
    args = p.parse_args()
    try:
        args.mix = {name: float(w) for name, w in (part.split("=") for part in args.mix.split(","))}
    except ValueError:
        p.error(f"--mix must look like text-to-image=4,add-text=1; got {args.mix!r}")
    if set(args.mix) - set(ROUTES) or sum(args.mix.values()) <= 0:
        p.error(f"--mix names must be among {', '.join(ROUTES)} with a positive total")
    return args


@dataclass
class Record:
    """One client's view: latencies and statuses per route, and what it saw acknowledged."""

    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    status: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    added: dict[str, set[str]] = field(default_factory=lambda: {kind: set() for kind in KINDS})
    deleted: dict[str, set[str]] = field(default_factory=lambda: {kind: set() for kind in KINDS})
    # writes that got no answer (the server died under them): they may or may not have happened
    unsure: dict[str, set[str]] = field(default_factory=lambda: {kind: set() for kind in KINDS})
    sent: dict[str, Any] = field(default_factory=dict)  # id of an add -> its text, or the index of its image
    errors: list[str] = field(default_factory=list)


def start_server(
    args: argparse.Namespace, images: Path, texts: Path, log: Path, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """`cmhash serve` on a free port of 127.0.0.1 (with the CMHASH_* variables of `extra_env`
    only; the log is appended to), once /readyz answers 200."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "service.cli",
        "serve",
        "--model",
        str(args.model),
        "--image-gallery",
        str(images),
        "--text-gallery",
        str(texts),
        "--host",
        HOST,
        "--port",
        str(port),
        "--device",
        args.device,
    ]
    if args.threads:
        cmd += ["--encoder-threads", str(args.threads)]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CMHASH_")} | (extra_env or {})
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://{HOST}:{port}"
    try:
        wait_ready(proc, base, log, READY_TIMEOUT_S)
    except RuntimeError as exc:
        proc.kill()
        raise SystemExit(str(exc)) from None
    return proc, base


def sample_rss(pid: int, stop: threading.Event, samples: list[float]) -> None:
    """Append the process's VmRSS in MiB every second until `stop`."""
    while not stop.is_set():
        value = proc_field(f"/proc/{pid}/status", "VmRSS")  # "123456 kB"
        if value is not None:
            samples.append(int(value.split()[0]) / 1024)
        stop.wait(1.0)


def client(
    cid: int,
    base: str,
    args: argparse.Namespace,
    images: list[bytes],
    texts: list[str],
    deadline: float,
    rec: Record,
    stop: threading.Event | None = None,
    prefix: str = "load",
) -> None:
    """Send requests from the mix until the deadline, --max-requests or `stop` (ids
    `<prefix>-c<cid>-<n>`); a write without an answer is recorded as unsure."""
    rng = random.Random(args.seed * 1000 + cid)
    kinds, weights = list(args.mix), list(args.mix.values())
    live: dict[str, list[str]] = {g: [] for g in KINDS}  # this client's acknowledged, not yet deleted adds
    with httpx.Client(base_url=base, timeout=60) as http:
        for n in range(args.max_requests):
            if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                return
            kind = rng.choices(kinds, weights)[0]
            op, _, gallery = kind.partition("-")  # of a write: "add" or "delete", and the gallery kind
            if op == "delete" and not live[gallery]:
                op, kind = "add", f"add-{gallery}"
            item_id = f"{prefix}-c{cid:02d}-{n:05d}"
            started = time.perf_counter()
            try:
                if kind == "text-to-image":
                    r = http.post("/search/text-to-image", json={"text": rng.choice(texts), "k": 10})
                elif kind == "image-to-text":
                    r = http.post(
                        "/search/image-to-text",
                        files={"file": ("q.jpg", rng.choice(images), "image/jpeg")},
                        data={"k": "10"},
                    )
                elif kind == "add-text":
                    rec.sent[item_id] = f"{rng.choice(texts)} {n}"
                    r = http.post("/gallery/texts", json={"items": [{"id": item_id, "text": rec.sent[item_id]}]})
                elif kind == "add-image":
                    rec.sent[item_id] = index = rng.randrange(len(images))
                    r = http.post(
                        "/gallery/images",
                        files={"files": ("q.jpg", images[index], "image/jpeg")},
                        data={"ids": item_id},
                    )
                else:
                    item_id = live[gallery].pop(rng.randrange(len(live[gallery])))
                    r = http.delete(f"/gallery/{gallery}s/{item_id}")
            except httpx.TransportError as exc:
                if op in ("add", "delete"):
                    rec.unsure[gallery].add(item_id)
                rec.errors.append(f"{kind} {item_id}: {type(exc).__name__}: {exc}")
                rec.status[kind]["error"] += 1
                continue
            rec.latency[kind].append(time.perf_counter() - started)
            rec.status[kind][f"{r.status_code // 100}xx"] += 1
            expected = 201 if op == "add" else 200
            if r.status_code != expected:
                rec.errors.append(f"{kind} {item_id}: {r.status_code} {r.text[:200]}")
            elif op == "add":
                rec.added[gallery].add(item_id)
                live[gallery].append(item_id)
            elif op == "delete":
                rec.deleted[gallery].add(item_id)
            elif len(r.json()["results"]) != 10:
                rec.errors.append(f"{kind}: {len(r.json()['results'])} results, not 10")


def all_ids(http: httpx.Client, kind: str, query: str = "x") -> list[str]:
    """Every id of the `kind` gallery, from a text query's radius search as wide as the code
    (text queries reach both galleries), page by page; `query` must hold a word the model knows."""
    bits = int(http.get(f"/gallery/{kind}s").json()["bits"])
    ids: list[str] = []
    while True:
        r = http.post(f"/search/text-to-{kind}", json={"text": query, "k": 1000, "radius": bits, "offset": len(ids)})
        r.raise_for_status()
        page = [h["id"] for h in r.json()["results"]]
        ids += page
        if not page or len(ids) >= r.json()["total"]:
            return ids


def live_adds(recs: list[Record], kind: str) -> tuple[set[str], set[str]]:
    """The ids of `kind` whose add, and those whose delete, some client saw acknowledged."""
    return set().union(*(r.added[kind] for r in recs)), set().union(*(r.deleted[kind] for r in recs))


def check_gallery(http: httpx.Client, kind: str, initial: list[str], recs: list[Record], query: str = "x") -> list[str]:
    """Problems of the final `kind` gallery against the clients' records (empty: none)."""
    added, deleted = live_adds(recs, kind)
    expected = (set(initial) | added) - deleted
    final = all_ids(http, kind, query)
    problems = []
    if len(final) != len(set(final)):
        problems.append(f"{len(final) - len(set(final))} duplicated ids in the gallery")
    if missing := expected - set(final):
        problems.append(f"{len(missing)} acknowledged items missing, e.g. {sorted(missing)[:5]}")
    if extra := set(final) - expected:
        problems.append(f"{len(extra)} unexpected items, e.g. {sorted(extra)[:5]}")
    count = http.get(f"/gallery/{kind}s").json()["count"]
    if count != len(expected):
        problems.append(
            f"gallery count {count}, expected {len(expected)} (initial {len(initial)} + "
            f"{len(added)} added - {len(deleted)} deleted)"
        )
    for item_id in sorted(added - deleted)[:200]:
        if http.get(f"/gallery/{kind}s/{item_id}").status_code != 200:
            problems.append(f"acknowledged add {item_id} not readable")
    for item_id in sorted(deleted)[:200]:
        if http.get(f"/gallery/{kind}s/{item_id}").status_code != 404:
            problems.append(f"acknowledged delete {item_id} still readable")
    return [f"{kind} gallery: {p}" for p in problems]


def check_uploads(http: httpx.Client, folder: Path, recs: list[Record]) -> tuple[list[str], int]:
    """Problems of the upload `folder` against the clients' live image adds (empty: none), and
    its number of files: exactly one file per live uploaded image (its metadata "path"), no
    file of a deleted or failed upload left behind (nor a *.tmp), and each file served."""
    added, deleted = live_adds(recs, "image")
    live = sorted(added - deleted)
    expected: dict[str, str] = {}  # file name -> id
    problems = []
    for item_id in live:
        r = http.get(f"/gallery/images/{item_id}")
        if r.status_code != 200:
            problems.append(f"live image {item_id}: GET answered {r.status_code}, its file not checked")
            continue
        path = Path(str(r.json()["metadata"].get("path", "")))  # the API shows an upload's stored file name
        if path.name in ("", ".") or (path.parent != Path(".") and path.parent.resolve() != folder.resolve()):
            problems.append(f"live image {item_id}: path {str(path)!r} is not in the upload folder")
        else:
            expected[path.name] = item_id
    files = {p.name for p in folder.iterdir() if p.is_file()} if folder.is_dir() else set()
    if missing := set(expected) - files:
        problems.append(
            f"{len(missing)} files of live images missing from the upload folder, e.g. "
            f"{[(expected[name], name) for name in sorted(missing)[:5]]}"
        )
    if orphans := files - set(expected):
        problems.append(f"{len(orphans)} orphan files in the upload folder, e.g. {sorted(orphans)[:5]}")
    for item_id in live[:200]:
        if (status := http.get(f"/gallery/images/{item_id}/file").status_code) != 200:
            problems.append(f"live image {item_id}: GET .../file answered {status}")
    return [f"uploads: {p}" for p in problems], len(files)


def load_queries(path: Path, limit: int = 32) -> tuple[list[bytes], list[str]]:
    """Up to `limit` query image files (bytes) and every query text of the JSONL at `path`."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [r["text"] for r in rows if r.get("text")]
    images = [Path(r["image"]).read_bytes() for r in rows if r.get("image") and Path(r["image"]).is_file()][:limit]
    if not images or not texts:
        raise SystemExit(f"{path} names no readable images or no texts (pass --queries)")
    return images, texts


def summarize(recs: list[Record], wall: float) -> dict[str, dict[str, Any]]:
    """Per route: statuses, requests/s, p50 and p95 latency in ms."""
    routes: dict[str, dict[str, Any]] = {}
    for kind in ROUTES:
        lat = [x for r in recs for x in r.latency.get(kind, [])]
        status: dict[str, int] = defaultdict(int)
        for r in recs:
            for code, n in r.status.get(kind, {}).items():
                status[code] += n
        if lat or status:
            routes[kind] = {
                "requests": sum(status.values()),
                "status": dict(status),
                "per_s": sum(status.values()) / wall,
                "p50_ms": float(np.percentile(lat, 50)) * 1000 if lat else None,
                "p95_ms": float(np.percentile(lat, 95)) * 1000 if lat else None,
            }
    return routes


def main() -> None:
    args = parse_args()
    images, texts = load_queries(args.queries)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cmhash-load-") as tmp:
        image_gallery, text_gallery = Path(tmp) / "images", Path(tmp) / "texts"
        shutil.copytree(args.image_gallery, image_gallery)
        shutil.copytree(args.text_gallery, text_gallery)
        proc, base = start_server(args, image_gallery, text_gallery, Path(tmp) / "server.log")
        rss: list[float] = []
        stop = threading.Event()
        sampler = threading.Thread(target=sample_rss, args=(proc.pid, stop, rss), daemon=True)
        try:
            with httpx.Client(base_url=base, timeout=60) as http:
                initial = {kind: all_ids(http, kind, texts[0]) for kind in KINDS}
                sampler.start()
                recs = [Record() for _ in range(args.clients)]
                started = time.monotonic()
                threads = [
                    threading.Thread(target=client, args=(i, base, args, images, texts, started + args.duration, rec))
                    for i, rec in enumerate(recs)
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                wall = time.monotonic() - started
                stop.set()
                sampler.join()
                problems = [p for kind in KINDS for p in check_gallery(http, kind, initial[kind], recs, texts[0])]
                upload_problems, upload_files = check_uploads(http, image_gallery / "uploads", recs)
                problems += upload_problems
        finally:
            stop.set()
            proc.send_signal(signal.SIGINT)
            try:
                exit_code = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                exit_code = proc.wait()
        if exit_code != 0:
            problems.append(f"the server exited with {exit_code} on SIGINT")

    routes = summarize(recs, wall)
    errors = [e for r in recs for e in r.errors]
    n5xx = sum(r["status"].get("5xx", 0) for r in routes.values())
    if n5xx or errors:
        problems.append(f"{n5xx} responses 5xx, {len(errors)} failed requests, e.g. {errors[:3]}")
    gallery: dict[str, Any] = {
        kind: {
            "initial": len(initial[kind]),
            "added": sum(len(r.added[kind]) for r in recs),
            "deleted": sum(len(r.deleted[kind]) for r in recs),
        }
        for kind in KINDS
    }
    gallery["upload_files"] = upload_files
    result = {
        "machine": {"cpu": proc_field("/proc/cpuinfo", "model name"), "cores": os.cpu_count()},
        "model": str(args.model),
        "duration_s": args.duration,
        "wall_s": wall,
        "clients": args.clients,
        "mix": args.mix,
        "routes": routes,
        "responses_5xx": n5xx,
        "errors": errors[:50],
        "gallery": gallery,
        "rss_mib": {
            "first": rss[0],
            "last": rss[-1],
            "max": max(rss),
            "second_half_growth": rss[-1] - rss[len(rss) // 2],
            "samples": rss,
        }
        if rss
        else None,
        "problems": problems,
    }
    print(f"{args.clients} clients, {wall:.1f} s, {result['machine']['cpu']} ({result['machine']['cores']} cores)")
    print(
        f"{'route':<15}{'requests':>9}{'req/s':>8}{'2xx':>7}{'4xx':>6}{'5xx':>6}{'error':>6}{'p50 ms':>9}{'p95 ms':>9}"
    )
    for kind, r in routes.items():
        s = r["status"]
        print(
            f"{kind:<15}{r['requests']:>9}{r['per_s']:>8.1f}{s.get('2xx', 0):>7}{s.get('4xx', 0):>6}{s.get('5xx', 0):>6}"
            f"{s.get('error', 0):>6}{r['p50_ms'] or 0:>9.1f}{r['p95_ms'] or 0:>9.1f}"
        )
    kinds = "; ".join(
        f"{kind} gallery: {gallery[kind]['initial']} initial + {gallery[kind]['added']} added - "
        f"{gallery[kind]['deleted']} deleted"
        for kind in KINDS
    )
    print(
        f"{kinds}; upload files: {upload_files}, checked against the clients' records: "
        f"{'ok' if not problems else 'FAILED'}"
    )
    if rss:
        print(
            f"server RSS MiB: first {rss[0]:.0f}, last {rss[-1]:.0f}, max {max(rss):.0f}, growth over the second "
            f"half {rss[-1] - rss[len(rss) // 2]:+.0f} ({len(rss)} samples, one per second)"
        )
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print(f"written to {write_result('load', result, None if args.out == DEFAULT_OUT else args.out)}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()

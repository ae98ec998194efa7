"""Service latency benchmark: a real `cmhash serve` (uvicorn, in a subprocess) over a random FAISS image
gallery, queried by POST /search/text-to-image from 1 sequential client and then from concurrent clients,
against the bare text encoder and the bare FAISS search timed in this process on the same queries.

    .venv/bin/python bench/service_latency.py --size 100000 --requests 50     # development run, ~1 min
    .venv/bin/python bench/service_latency.py                                 # 1M codes, 1 and 16 clients

The gallery (--size random codes of the model's length, ids r0000000..., bound to the model's checksum)
is built in a temporary folder and removed at the end. Steps: time the bare encoder
(`Encoder.load(model).encode_texts([q])`) and the bare search (`Gallery.open(g).store.search(code, k)`)
per query while no server runs; start the server and wait for /readyz; send --warmup untimed requests;
time GET /healthz from 1 client (the HTTP floor); then for each --clients count, every client (a thread with its own httpx.Client) sends --requests
requests (or stops at --duration-limit seconds); stop the server and time the bare steps again (the
lower p50 of the two passes is used: on a shared machine other load inflates one pass). Reported per client count: client-measured p50 / p95 /
p99 latency, QPS, the median of the server's `took_ms`, and from the server's /metrics the mean
micro-batch size and the encoder and FAISS time per batch. Two ratios, with their goals: overhead =
service p50 at 1 client / (encoder p50 + search p50), goal <= 2; and scaling = QPS at the most clients /
QPS at 1 client, goal >= 2 (micro-batching). Every flag can also be set by the environment variable
CMHASH_BENCH_<FLAG>. Writes OUT/service_latency.json; never part of the test suite.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from flags import command_line, env, free_port, ints, machine_base, positive, wait_ready, write_result

from index.faiss_store import gpu_available
from index.gallery import Gallery, GalleryInfo
from model.runtime.encoder import Encoder
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "out"
ROUTE = "/search/text-to-image"
OVERHEAD_GOAL = 2.0  # service p50 (1 client) / (encoder p50 + search p50) at most
SCALING_GOAL = 2.0  # QPS at the most clients / QPS at 1 client at least
BUILD_CHUNK = 100_000  # codes per store.add call while building the gallery
READY_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 120.0  # shutdown folds the journal into a snapshot
WORDS = (
    "dog",
    "cat",
    "beach",
    "sunset",
    "sky",
    "clouds",
    "water",
    "lake",
    "river",
    "sea",
    "mountain",
    "snow",
    "tree",
    "forest",
    "flower",
    "garden",
    "city",
    "street",
    "night",
    "lights",
    "bridge",
    "building",
    "church",
    "car",
    "train",
    "boat",
    "bird",
    "horse",
    "cow",
    "child",
    "girl",
    "boy",
    "woman",
    "man",
    "portrait",
    "family",
    "friends",
    "party",
    "wedding",
    "food",
    "red",
    "blue",
    "green",
    "yellow",
    "white",
    "black",
    "bw",
    "macro",
    "nature",
    "landscape",
    "travel",
    "summer",
    "winter",
    "autumn",
    "spring",
    "park",
    "sand",
    "rock",
    "road",
    "window",
)


# ---------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags, each defaulting to its CMHASH_BENCH_<FLAG> environment variable when set."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Every flag can be set by the environment variable CMHASH_BENCH_<FLAG> "
        "(upper case, '-' as '_'), e.g. CMHASH_BENCH_SIZE=100000.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--model",
        type=Path,
        default=env("model", str(ROOT / "runs/demo/model")),
        help="exported model directory (`cmhash export`; `make demo` writes runs/demo/model)",
    )
    p.add_argument("--size", type=positive, default=env("size", "1000000"), help="gallery size N (random codes)")
    p.add_argument(
        "--requests", type=positive, default=env("requests", "200"), help="timed requests per client and client count"
    )
    p.add_argument(
        "--clients",
        type=ints,
        default=env("clients", "1,16"),
        help="comma list of concurrent client counts (1 is always run: the ratios need it)",
    )
    p.add_argument(
        "--duration-limit",
        type=float,
        default=env("duration-limit", "120"),
        help="seconds after which a client count's clients stop sending",
    )
    p.add_argument("--port", type=int, default=env("port", "0"), help="server port on 127.0.0.1 (0: a free one)")
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default=env("device", "auto"),
        help="encoder and FAISS device, of the server and of the bare timings alike",
    )
    p.add_argument("--queries", type=positive, default=env("queries", "200"), help="distinct query texts")
    p.add_argument("--k", type=positive, default=env("k", "10"), help="results per search")
    p.add_argument(
        "--warmup",
        type=int,
        default=env("warmup", "20"),
        help="untimed calls before the bare timings and untimed requests before the load",
    )
    p.add_argument("--seed", type=int, default=env("seed", "0"), help="seed of the codes and query texts")
    p.add_argument(
        "--out", type=Path, default=env("out", str(DEFAULT_OUT)), help="output folder of service_latency.json"
    )
    args = p.parse_args(argv)
    args.clients = sorted({1, *args.clients})
    if args.warmup < 0 or args.duration_limit <= 0 or not 0 <= args.port <= 65535:
        p.error("--warmup must be >= 0, --duration-limit > 0 and --port in 0..65535")
    if args.k > args.size:
        p.error(f"--k must be <= --size {args.size}")
    return args


# ---------------------------------------------------------------------------------------------
# Inputs


def machine_info() -> dict:
    """CPU, core counts, memory and the load average at start."""
    return {**machine_base(), "loadavg_start": os.getloadavg()}


def make_queries(n: int, seed: int) -> list[str]:
    """`n` distinct tag-like phrases of 1 to 4 words from WORDS."""
    rng = np.random.default_rng(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        words = rng.choice(len(WORDS), size=int(rng.integers(1, 5)), replace=False)
        out[" ".join(WORDS[w] for w in words)] = None
    return list(out)


def build_gallery(path: Path, encoder: Encoder, size: int, seed: int) -> float:
    """Write a FAISS image gallery of `size` random codes for `encoder`'s model at `path`; seconds taken."""
    start = time.perf_counter()
    info = GalleryInfo(
        kind="image", bits=encoder.bits, model_checksum=encoder.checksum, model_method=encoder.info.method
    )
    gallery = Gallery.create(path, info)
    rng = np.random.default_rng(seed)
    for lo in range(0, size, BUILD_CHUNK):
        hi = min(size, lo + BUILD_CHUNK)
        codes = rng.integers(0, 256, size=(hi - lo, encoder.code_bytes), dtype=np.uint8)
        gallery.store.add([f"r{i:07d}" for i in range(lo, hi)], codes)  # metadata None: stored as {}
    gallery.save()
    return time.perf_counter() - start


def time_each(fn: Callable[[Any], object], items: list, warmup: int) -> np.ndarray:
    """Seconds of `fn(item)` for each item, after `warmup` untimed calls."""
    for j in range(warmup):
        fn(items[j % len(items)])
    times = np.empty(len(items))
    for j, item in enumerate(items):
        start = time.perf_counter()
        fn(item)
        times[j] = time.perf_counter() - start
    return times


def bare_pass(encoder: Encoder, gallery_path: Path, queries: list[str], args: argparse.Namespace) -> dict:
    """Per-query seconds of the bare encoder and of the bare store search (one query per call)."""
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and gpu_available()) else "cpu"
    store = Gallery.open(gallery_path, model_checksum=encoder.checksum, device=device).store
    codes = encoder.encode_texts(queries)
    encode = time_each(lambda q: encoder.encode_texts([q]), queries, args.warmup)
    search = time_each(lambda c: store.search(c[None], args.k), list(codes), args.warmup)
    return {
        "store_device": device,
        "encode_s": encode.tolist(),
        "search_s": search.tolist(),
        "encode_p50_ms": 1e3 * float(np.median(encode)),
        "search_p50_ms": 1e3 * float(np.median(search)),
    }


def bare_summary(encoder: Encoder, passes: list[dict]) -> dict:
    """The passes and the lower p50 of each step over them (the pass least disturbed by other load)."""
    return {
        "providers": encoder.providers,
        "store_device": passes[0]["store_device"],
        "passes": passes,
        **{key: min(p[key] for p in passes) for key in ("encode_p50_ms", "search_p50_ms")},
    }


# ---------------------------------------------------------------------------------------------
# Server


@contextmanager
def running_server(args: argparse.Namespace, gallery: Path, port: int, log: Path) -> Iterator[tuple[str, int]]:
    """`cmhash serve` in a subprocess until the block ends (stopped also on error); yields its base URL
    and process id once /readyz answers 200."""
    command = [
        sys.executable,
        "-m",
        "service.cli",
        "serve",
        "--model",
        str(args.model),
        "--image-gallery",
        str(gallery),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        args.device,
    ]
    base = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(proc, base, log, READY_TIMEOUT_S)
        yield base, proc.pid
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by process `pid` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_snapshot(base: str, pid: int) -> dict[str, float]:
    """Sums and counts of the server's text batch-size, text encode and image search histograms, and the
    CPU seconds used so far by the server and by this (the client) process."""
    text = httpx.get(f"{base}/metrics", timeout=30).text
    out = {"server_cpu_s": process_cpu_s(pid), "client_cpu_s": time.process_time()}
    for name, label in (
        ("batch_queries", 'modality="text"'),
        ("encode_seconds", 'modality="text"'),
        ("search_seconds", 'gallery="image"'),
    ):
        for part in ("sum", "count"):
            match = re.search(rf"^cmhash_{name}_{part}{{{label}}} (\S+)$", text, re.MULTILINE)
            out[f"{name}_{part}"] = float(match.group(1)) if match else 0.0
    return out


# ---------------------------------------------------------------------------------------------
# Load


def run_clients(base: str, queries: list[str], clients: int, requests: int, k: int, limit_s: float) -> dict:
    """`clients` threads, each with its own httpx.Client, send `requests` searches (client j starts at
    query j * requests) until done or `limit_s` passed; latencies, server took_ms, errors and wall time."""
    latency: list[list[float]] = [[] for _ in range(clients)]
    took: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def client(j: int) -> None:
        with httpx.Client(base_url=base, timeout=60) as http:
            barrier.wait()
            deadline = time.perf_counter() + limit_s
            for r in range(requests):
                if time.perf_counter() > deadline:
                    break
                text = queries[(j * requests + r) % len(queries)]
                start = time.perf_counter()
                try:
                    response = http.post(ROUTE, json={"text": text, "k": k})
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                elapsed = time.perf_counter() - start
                if response.status_code != 200:
                    errors.append(f"{response.status_code}: {response.text[:200]}")
                    continue
                latency[j].append(elapsed)
                took[j].append(response.json()["took_ms"])

    threads = [threading.Thread(target=client, args=(j,)) for j in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {
        "latency_s": [x for xs in latency for x in xs],
        "took_ms": [x for xs in took for x in xs],
        "errors": errors,
        "wall_s": wall,
    }


def http_floor(base: str, requests: int) -> float:
    """p50 milliseconds of GET /healthz from 1 client: the HTTP round trip with no work behind it."""
    with httpx.Client(base_url=base, timeout=60) as http:
        times = time_each(lambda _: http.get("/healthz").raise_for_status(), list(range(requests)), 5)
    return 1e3 * float(np.median(times))


def load_row(clients: int, run: dict, before: dict[str, float], after: dict[str, float]) -> dict:
    """One table/JSON row: client latency percentiles, QPS, server took_ms and batching from /metrics."""
    lat = 1e3 * np.asarray(run["latency_s"])
    ok = len(lat)
    delta = {key: after[key] - before[key] for key in after}
    batches = delta["batch_queries_count"]
    return {
        "clients": clients,
        "ok": ok,
        "errors": len(run["errors"]),
        "error_samples": run["errors"][:5],
        "wall_s": run["wall_s"],
        "qps": ok / run["wall_s"],
        **{f"p{q}_ms": float(np.percentile(lat, q)) if ok else float("nan") for q in (50, 95, 99)},
        "took_ms_p50": float(np.median(run["took_ms"])) if ok else float("nan"),
        "batches": int(batches),
        "mean_batch": delta["batch_queries_sum"] / batches if batches else float("nan"),
        "encode_ms_per_batch": 1e3 * delta["encode_seconds_sum"] / batches if batches else float("nan"),
        "search_ms_per_batch": 1e3 * delta["search_seconds_sum"] / batches if batches else float("nan"),
        "server_cpu_ms_per_request": 1e3 * delta["server_cpu_s"] / ok if ok else float("nan"),
        "client_cpu_ms_per_request": 1e3 * delta["client_cpu_s"] / ok if ok else float("nan"),
        "cpu_busy": (delta["server_cpu_s"] + delta["client_cpu_s"]) / run["wall_s"] / (os.cpu_count() or 1),
        "latency_ms": lat.tolist(),
    }


# ---------------------------------------------------------------------------------------------
# Report


def table(rows: list[dict]) -> str:
    """The load results as an aligned text table."""
    head = (
        "clients",
        "ok",
        "err",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "QPS",
        "took_ms p50",
        "batches",
        "mean batch",
        "enc ms/batch",
        "search ms/batch",
        "srv CPU ms/req",
        "cli CPU ms/req",
        "CPU busy",
    )
    body = [
        (
            str(r["clients"]),
            str(r["ok"]),
            str(r["errors"]),
            f"{r['p50_ms']:.2f}",
            f"{r['p95_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['qps']:.1f}",
            f"{r['took_ms_p50']:.2f}",
            str(r["batches"]),
            f"{r['mean_batch']:.2f}",
            f"{r['encode_ms_per_batch']:.2f}",
            f"{r['search_ms_per_batch']:.2f}",
            f"{r['server_cpu_ms_per_request']:.2f}",
            f"{r['client_cpu_ms_per_request']:.2f}",
            f"{100 * r['cpu_busy']:.0f}%",
        )
        for r in rows
    ]
    widths = [max(len(c) for c in col) for col in zip(head, *body)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in (head, *body)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def verdict(value: float, goal: float, at_most: bool) -> str:
    """PASS or MISS of `value` against `goal`."""
    return "PASS" if (value <= goal if at_most else value >= goal) else "MISS"


def report(meta: dict) -> str:
    """Machine, gallery, bare timings, the load table and the two ratios as printable text."""
    m, b, r = meta["machine"], meta["bare"], meta["ratios"]
    lines = [
        f"command: {meta['command']}",
        f"machine: {m['cpu_model']}, {m['nproc']} usable CPUs ({m['cpu_count']} in all), {m['memory_gib']} GiB RAM; "
        f"load average at start {', '.join(f'{x:.2f}' for x in m['loadavg_start'])}, "
        f"at end {', '.join(f'{x:.2f}' for x in meta['loadavg_end'])}",
        f"model: {meta['model']['path']} ({meta['model']['method']}, {meta['model']['bits']} bits, "
        f"providers {', '.join(b['providers'])}, store on {b['store_device']})",
        f"gallery: {meta['gallery']['size']:,} random codes, built in {meta['gallery']['build_s']:.1f} s; "
        f"{len(meta['queries'])} query texts, k={meta['settings']['k']}; server: CMHASH_BATCH_WINDOW_MS="
        f"{meta['server']['batch_window_ms']:g}, CMHASH_MAX_BATCH={meta['server']['max_batch']}, "
        f"CMHASH_ENCODER_THREADS={meta['server']['encoder_threads'] or 'default'}, CMHASH_SPINNING={meta['server']['spinning']}, "
        f"OMP_WAIT_POLICY={meta['server']['omp_wait_policy']}",
        f"bare, one query per call, lower p50 of the passes before and after the server ran: encoder "
        f"{b['encode_p50_ms']:.3f} ms, FAISS store search {b['search_p50_ms']:.3f} ms (sum "
        f"{b['encode_p50_ms'] + b['search_p50_ms']:.3f} ms); per pass: encoder "
        + " / ".join(f"{p['encode_p50_ms']:.3f}" for p in b["passes"])
        + " ms, search "
        + " / ".join(f"{p['search_p50_ms']:.3f}" for p in b["passes"])
        + " ms",
        f"HTTP floor: GET /healthz p50 {meta['healthz_p50_ms']:.2f} ms from 1 client",
        "",
        table(meta["results"]),
        "",
        f"overhead: service p50 at 1 client / (encoder p50 + search p50) = {r['overhead']:.2f} "
        f"(goal <= {OVERHEAD_GOAL:g}): {verdict(r['overhead'], OVERHEAD_GOAL, True)}",
        f"  (in-server reference: service p50 / (encode + search ms per batch at 1 client, from /metrics) = "
        f"{r['overhead_in_server']:.2f})",
        f"scaling: QPS at {r['scaling_clients']} clients / QPS at 1 client = {r['scaling']:.2f} "
        f"(goal >= {SCALING_GOAL:g}): {verdict(r['scaling'], SCALING_GOAL, False)}",
        "",
        "p50/p95/p99: client-measured request latency (HTTP round trip on 127.0.0.1); took_ms: the server's own "
        "time per request (encoding and search included); batches, mean batch, enc/search ms per batch: from "
        "the server's /metrics over that client count's requests; srv / cli CPU ms/req: CPU time of the server "
        "process and of this (client) process per request; CPU busy: both together over wall time and all CPUs "
        "(other load not included).",
    ]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    machine = machine_info()
    queries = make_queries(args.queries, args.seed)
    server = Settings(model_dir=args.model)  # the batching settings the server reads from the same CMHASH_* variables
    encoder = Encoder.load(args.model, device=args.device)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cmhash-service-latency-") as tmp:
        gallery = Path(tmp) / "gallery-images"
        print(f"building a {args.size:,}-code gallery in {gallery}...", file=sys.stderr, flush=True)
        build_s = build_gallery(gallery, encoder, args.size, args.seed)
        print("timing the bare encoder and search...", file=sys.stderr, flush=True)
        passes = [bare_pass(encoder, gallery, queries, args)]
        port = args.port or free_port()
        print(f"starting the server on port {port}...", file=sys.stderr, flush=True)
        with running_server(args, gallery, port, Path(tmp) / "server.log") as (base, pid):
            run_clients(base, queries, 1, args.warmup, args.k, args.duration_limit)
            healthz_p50_ms = http_floor(base, args.requests)
            for clients in args.clients:
                before = server_snapshot(base, pid)
                run = run_clients(base, queries, clients, args.requests, args.k, args.duration_limit)
                rows.append(load_row(clients, run, before, server_snapshot(base, pid)))
                print(
                    f"  {clients} clients: p50 {rows[-1]['p50_ms']:.2f} ms, {rows[-1]['qps']:.1f} QPS",
                    file=sys.stderr,
                    flush=True,
                )
        print("timing the bare encoder and search again...", file=sys.stderr, flush=True)
        passes.append(bare_pass(encoder, gallery, queries, args))
    bare = bare_summary(encoder, passes)
    ratios = {
        "overhead": rows[0]["p50_ms"] / (bare["encode_p50_ms"] + bare["search_p50_ms"]),
        "overhead_goal": OVERHEAD_GOAL,
        "overhead_in_server": rows[0]["p50_ms"] / (rows[0]["encode_ms_per_batch"] + rows[0]["search_ms_per_batch"]),
        "scaling_clients": rows[-1]["clients"],
        "scaling": rows[-1]["qps"] / rows[0]["qps"],
        "scaling_goal": SCALING_GOAL,
    }
    meta = {
        "command": command_line(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine,
        "loadavg_end": os.getloadavg(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "model": {
            "path": str(args.model),
            "method": encoder.info.method,
            "bits": encoder.bits,
            "checksum": encoder.checksum,
        },
        "gallery": {"size": args.size, "build_s": build_s},
        "healthz_p50_ms": healthz_p50_ms,
        "server": {
            "batch_window_ms": server.batch_window_ms,
            "max_batch": server.max_batch,
            "encoder_threads": server.encoder_threads,
            "spinning": server.spinning,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        },
        "queries": queries,
        "bare": bare,
        "results": rows,
        "ratios": ratios,
    }
    path = write_result("service_latency", meta, None if args.out == DEFAULT_OUT else args.out)
    print(report(meta))
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()

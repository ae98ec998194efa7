"""Flat binary search benchmark: exact k-NN Hamming search over random packed codes with raw FAISS
(IndexBinaryFlat), the project's FaissCodeStore and a numpy XOR + popcount scan, compared with
the machine's memory bandwidth.

    .venv/bin/python bench/search_scale.py --quick           # smoke run, seconds
    .venv/bin/python bench/search_scale.py                   # 10k ... 10M codes, 16 ... 128 bits, 1 and 2 threads
    .venv/bin/python bench/search_scale.py --sizes 1000000 --bits 16,32,64,128 --methods faiss,numpy

Each configuration (gallery size N, code length L, FAISS threads) is timed twice: one query per
call (--queries calls) and --batch queries per call (--batch-calls calls), after --warmup untimed
calls. Reported: median and p95 milliseconds per query, codes scanned per second (N * nq / s),
GB/s of code bytes scanned (N * nq * L/8 / s), and the fraction of the flat-scan limit reached
(the time to read the gallery once, N * L/8 bytes, at the read bandwidth measured in the same run
with as many threads, over the time per query). The numpy scan is single-threaded (numpy ufuncs
run in the calling thread), so it runs once per gallery, as 1 thread. Every flag can also be set
by the environment variable CMHASH_BENCH_<FLAG> (e.g. CMHASH_BENCH_SIZES=1000000). Writes
OUT/search_scale.json; never part of the test suite.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np
from flags import boolean, command_line, env, ints, machine_base, positive, write_result

from index.faiss_store import FaissCodeStore

METHODS = ("faiss", "store", "numpy")
DEFAULT_OUT = Path(__file__).resolve().parent / "out"
# --quick replaces these defaults (unless the flag's environment variable is set).
QUICK = {"sizes": "100000", "queries": "20", "batch_calls": "3", "bandwidth_mib": "256"}
NUMPY_CHUNK_BYTES = 1 << 20  # XOR buffer of one numpy scan step (fits in L2; fastest of 0.25-16 MiB here)
BANDWIDTH_REPEATS = 5


# ---------------------------------------------------------------------------------------------
# Command line


def _methods(text: str) -> list[str]:
    """An argparse type: a non-empty comma list of METHODS."""
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items or set(items) - set(METHODS):
        raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(METHODS)}; got {text!r}")
    return list(dict.fromkeys(items))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags, each defaulting to its CMHASH_BENCH_<FLAG> environment variable when set."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Every flag can be set by the environment variable CMHASH_BENCH_<FLAG> "
        "(upper case, '-' as '_'), e.g. CMHASH_BENCH_BATCH_CALLS=5. --quick sets "
        + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items())
        + " unless given on the command line or in the environment.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--sizes",
        type=ints,
        default=env("sizes", "10000,100000,1000000,10000000"),
        help="comma list of gallery sizes N",
    )
    p.add_argument(
        "--bits", type=ints, default=env("bits", "16,32,64,128"), help="comma list of code lengths L (multiples of 8)"
    )
    p.add_argument(
        "--threads", type=ints, default=env("threads", "1,2"), help="comma list of FAISS OpenMP thread counts"
    )
    p.add_argument(
        "--methods",
        type=_methods,
        default=env("methods", ",".join(METHODS)),
        help="comma list of methods: faiss (IndexBinaryFlat), store (FaissCodeStore), numpy",
    )
    p.add_argument(
        "--queries",
        type=positive,
        default=env("queries", "100"),
        help="timed single-query calls (nq=1) per configuration",
    )
    p.add_argument("--batch", type=positive, default=env("batch", "64"), help="queries per batched call")
    p.add_argument(
        "--batch-calls", type=positive, default=env("batch-calls", "10"), help="timed batched calls per configuration"
    )
    p.add_argument("--k", type=positive, default=env("k", "10"), help="neighbours per query")
    p.add_argument("--warmup", type=int, default=env("warmup", "3"), help="untimed calls before each timing")
    p.add_argument("--seed", type=int, default=env("seed", "0"), help="seed of the random codes")
    p.add_argument(
        "--bandwidth-mib",
        type=positive,
        default=env("bandwidth-mib", "1024"),
        help="array size of the memory bandwidth measurement (MiB; many times the LLC)",
    )
    p.add_argument("--out", type=Path, default=env("out", str(DEFAULT_OUT)), help="output folder of search_scale.json")
    p.add_argument(
        "--quick",
        action="store_true",
        default=boolean(env("quick", "") or ""),
        help="smoke run: small gallery, few repetitions",
    )
    quick = p.parse_known_args(argv)[0].quick
    if quick:
        p.set_defaults(**{k: v for k, v in QUICK.items() if env(k, None) is None})
    args = p.parse_args(argv)
    bad = [b for b in args.bits if b % 8]
    if bad:
        p.error(f"--bits must be multiples of 8; got {bad}")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    if args.k > min(args.sizes):
        p.error(f"--k must be <= the smallest gallery size {min(args.sizes)}")
    return args


# ---------------------------------------------------------------------------------------------
# Machine


def _cache_sizes() -> dict[str, str]:
    """CPU 0's caches, e.g. {"L1d": "32K", "L2": "1024K", "L3": "32768K"} (empty if unknown)."""
    out = {}
    for d in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size = ((d / f).read_text().strip() for f in ("level", "type", "size"))
        except OSError:
            continue
        out[f"L{level}" + {"Data": "d", "Instruction": "i"}.get(kind, "")] = size
    return out


def machine_info() -> dict:
    """CPU, caches, memory and library versions."""
    return {
        **machine_base(),
        "caches": _cache_sizes(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "faiss_compile_options": faiss.get_compile_options().strip(),
        "faiss_query_batch_size": faiss.IndexBinaryFlat(64).query_batch_size,
        "numpy_scan_threads": 1,  # numpy ufuncs and argpartition run in the calling thread
        "loadavg_start": os.getloadavg(),
    }


def read_bandwidth(mib: int, threads: int) -> float:
    """Best-of-BANDWIDTH_REPEATS read bandwidth (bytes/s): int64 sums over a `mib` MiB array split
    across `threads` Python threads (numpy releases the GIL in reductions)."""
    data = np.ones((mib << 20) // 8, dtype=np.int64)
    parts = np.array_split(data, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(BANDWIDTH_REPEATS + 1):  # the first pass is a warm-up
            start = time.perf_counter()
            list(pool.map(np.sum, parts))
            best = min(best, time.perf_counter() - start)
    return data.nbytes / best


# ---------------------------------------------------------------------------------------------
# Search methods: each maps a (nq x L/8) uint8 query batch to nq x k sorted distances


def word_view(codes: np.ndarray) -> np.ndarray:
    """Packed codes as rows of the widest unsigned words (64, 32, 16 or 8 bits) that divide L."""
    dtype = next(t for t in (np.uint64, np.uint32, np.uint16, np.uint8) if codes.shape[1] % np.dtype(t).itemsize == 0)
    return np.ascontiguousarray(codes).view(dtype)


class NumpyScan:
    """Exact top-k by chunked XOR + np.bitwise_count + argpartition (a running top-k per query)."""

    def __init__(self, gallery: np.ndarray) -> None:
        self.words = word_view(gallery)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, indices), nq x k, by (distance, index)."""
        q = word_view(queries)
        (nq, w), n = q.shape, len(self.words)
        chunk = min(n, max(k, NUMPY_CHUNK_BYTES // (nq * w * q.itemsize)))
        xor = np.empty((nq, chunk, w), dtype=q.dtype)
        count = np.empty((nq, chunk, w), dtype=np.uint8)
        best_d = np.empty((nq, 0), dtype=np.uint16)
        best_i = np.empty((nq, 0), dtype=np.int64)
        for start in range(0, n, chunk):
            c = min(chunk, n - start)
            np.bitwise_xor(q[:, None, :], self.words[None, start : start + c], out=xor[:, :c])
            np.bitwise_count(xor[:, :c], out=count[:, :c])
            d = count[:, :c, 0] if w == 1 else count[:, :c].sum(axis=2, dtype=np.uint16)
            top = np.argpartition(d, min(k, c) - 1, axis=1)[:, :k]
            best_d = np.concatenate([best_d, np.take_along_axis(d, top, 1)], axis=1)
            best_i = np.concatenate([best_i, top + start], axis=1)
            if best_d.shape[1] > k:
                keep = np.argpartition(best_d, k - 1, axis=1)[:, :k]
                best_d, best_i = np.take_along_axis(best_d, keep, 1), np.take_along_axis(best_i, keep, 1)
        order = np.lexsort((best_i, best_d), axis=1)
        return np.take_along_axis(best_d, order, 1).astype(np.int64), np.take_along_axis(best_i, order, 1)


def build_flat(gallery: np.ndarray, bits: int) -> faiss.IndexBinaryFlat:
    """A raw FAISS flat binary index over `gallery`."""
    flat = faiss.IndexBinaryFlat(bits)
    flat.add(gallery)
    return flat


def build_methods(gallery: np.ndarray, bits: int, methods: list[str]) -> tuple[dict[str, Callable], dict[str, float]]:
    """The search callables (queries, k) -> nq x k int64 distances, and their build seconds."""
    out: dict[str, Callable] = {}
    build: dict[str, float] = {}
    if "faiss" in methods:
        start = time.perf_counter()
        flat = build_flat(gallery, bits)
        build["faiss"] = time.perf_counter() - start
        out["faiss"] = lambda q, k: np.asarray(flat.search(q, k)[0], dtype=np.int64)
    if "store" in methods:
        start = time.perf_counter()
        store = FaissCodeStore(bits)
        store.add([str(i) for i in range(len(gallery))], gallery)
        build["store"] = time.perf_counter() - start
        out["store"] = lambda q, k: store.search(q, k)[1]
    if "numpy" in methods:
        scan = NumpyScan(gallery)
        out["numpy"] = lambda q, k: scan.search(q, k)[0]
    return out, build


def straddle_fraction(gallery: np.ndarray, queries: np.ndarray, bits: int, k: int) -> float:
    """Fraction of queries whose k-th and (k+1)-th distances tie: FaissCodeStore then runs a
    range search (a second scan) to order the tied items by insertion order."""
    d = build_flat(gallery, bits).search(queries, k + 1)[0]
    return float(np.mean(d[:, k - 1] == d[:, k]))


# ---------------------------------------------------------------------------------------------
# Timing


def time_calls(search: Callable, batches: list[np.ndarray], k: int, warmup: int) -> np.ndarray:
    """Seconds of each call of `search` over `batches`, after `warmup` untimed calls."""
    for j in range(warmup):
        search(batches[j % len(batches)], k)
    times = np.empty(len(batches))
    for j, q in enumerate(batches):
        start = time.perf_counter()
        search(q, k)
        times[j] = time.perf_counter() - start
    return times


def result_row(
    n: int, bits: int, threads: int, method: str, mode: str, nq: int, times: np.ndarray, bandwidth: float
) -> dict:
    """One table/JSON row: per-query latency, throughput and the fraction of the flat-scan limit."""
    med, p95 = float(np.median(times)), float(np.percentile(times, 95))
    gallery_bytes = n * bits // 8
    limit = gallery_bytes / bandwidth  # seconds to stream the gallery once, i.e. per query
    return {
        "n": n,
        "bits": bits,
        "threads": threads,
        "method": method,
        "mode": mode,
        "nq_per_call": nq,
        "calls": len(times),
        "ms_per_query_median": 1e3 * med / nq,
        "ms_per_query_p95": 1e3 * p95 / nq,
        "ms_per_call_median": 1e3 * med,
        "codes_per_s": n * nq / med,
        "gb_per_s": gallery_bytes * nq / med / 1e9,
        "limit_ms_per_query": 1e3 * limit,
        "limit_fraction": limit * nq / med,
        "times_s": times.tolist(),
    }


def run_gallery(args: argparse.Namespace, n: int, bits: int, bandwidth: dict[int, float]) -> tuple[dict, list[dict]]:
    """Build one random gallery and time every method, mode and thread count on it."""
    rng = np.random.default_rng([args.seed, n, bits])
    gallery = rng.integers(0, 256, size=(n, bits // 8), dtype=np.uint8)
    singles = rng.integers(0, 256, size=(args.queries, bits // 8), dtype=np.uint8)
    pool = rng.integers(0, 256, size=(args.batch * args.batch_calls, bits // 8), dtype=np.uint8)
    modes = {
        "single": [singles[j : j + 1] for j in range(args.queries)],
        "batch": [pool[j : j + args.batch] for j in range(0, len(pool), args.batch)],
    }
    methods, build = build_methods(gallery, bits, args.methods)
    info = {
        "n": n,
        "bits": bits,
        "gallery_mb": gallery.nbytes / 1e6,
        "build_s": build,
        "straddle_fraction": straddle_fraction(gallery, singles, bits, args.k),
    }
    # Every method must return the same distances (ties may pick different items).
    check = {name: search(modes["batch"][0], args.k) for name, search in methods.items()}
    for name, d in check.items():
        if not np.array_equal(d, next(iter(check.values()))):
            raise SystemExit(f"error: {name} distances differ from {next(iter(check))} at N={n}, {bits} bits")
    rows = []
    for name, search in methods.items():
        for threads in [1] if name == "numpy" else args.threads:
            faiss.omp_set_num_threads(threads)
            for mode, batches in modes.items():
                times = time_calls(search, batches, args.k, args.warmup)
                rows.append(result_row(n, bits, threads, name, mode, len(batches[0]), times, bandwidth[threads]))
                print(
                    f"  N={n:,} {bits} bits {name} {threads} thr {mode}: "
                    f"{rows[-1]['ms_per_query_median']:.3f} ms/query",
                    file=sys.stderr,
                    flush=True,
                )
    return info, rows


# ---------------------------------------------------------------------------------------------
# Report


def table(rows: list[dict]) -> str:
    """The results as an aligned text table."""
    head = (
        "N",
        "bits",
        "thr",
        "method",
        "mode",
        "nq/call",
        "ms/q med",
        "ms/q p95",
        "ms/call",
        "Mcodes/s",
        "GB/s",
        "limit ms/q",
        "% limit",
    )
    body = [
        (
            f"{r['n']:,}",
            str(r["bits"]),
            str(r["threads"]),
            r["method"],
            r["mode"],
            str(r["nq_per_call"]),
            f"{r['ms_per_query_median']:.3f}",
            f"{r['ms_per_query_p95']:.3f}",
            f"{r['ms_per_call_median']:.2f}",
            f"{r['codes_per_s'] / 1e6:,.0f}",
            f"{r['gb_per_s']:.2f}",
            f"{r['limit_ms_per_query']:.3f}",
            f"{100 * r['limit_fraction']:.0f}%",
        )
        for r in rows
    ]
    widths = [max(len(c) for c in col) for col in zip(head, *body)]
    lines = [
        "  ".join(c.rjust(w) if j not in (3, 4) else c.ljust(w) for j, (c, w) in enumerate(zip(line, widths)))
        for line in (head, *body)
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def pivot(rows: list[dict], method: str, mode: str, threads: int) -> str:
    """ms per query by gallery size (rows) and code length (columns) for one method, mode and
    thread count, each cell with its fraction of the flat-scan limit: the scale table."""
    picked = {(r["n"], r["bits"]): r for r in rows if (r["method"], r["mode"], r["threads"]) == (method, mode, threads)}
    if not picked:
        return ""
    sizes, bits = sorted({n for n, _ in picked}), sorted({b for _, b in picked})
    head = ("N", *(f"{b} bits" for b in bits))
    body = [
        (
            f"{n:,}",
            *(
                f"{picked[n, b]['ms_per_query_median']:.3f} ({100 * picked[n, b]['limit_fraction']:.0f}%)"
                if (n, b) in picked
                else "-"
                for b in bits
            ),
        )
        for n in sizes
    ]
    widths = [max(len(c) for c in col) for col in zip(head, *body)]
    lines = [
        f"{method}, {mode} ({picked[next(iter(picked))]['nq_per_call']} per call), {threads} thread"
        f"{'s' * (threads > 1)}: ms per query (% of the flat-scan limit)"
    ]
    lines += ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in (head, *body)]
    lines.insert(2, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot(rows: list[dict], bandwidth: dict[int, float], path: Path) -> None:
    """Search time per query against gallery size, one line per code length, for FAISS single
    queries on 1 thread and batched queries on the most threads, with the flat-scan limit dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    most = max(r["threads"] for r in rows)
    panels = [("single", 1), ("batch", most)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, (mode, threads) in zip(axes, panels):
        picked = [r for r in rows if (r["method"], r["mode"], r["threads"]) == ("faiss", mode, threads)]
        for color, bits in enumerate(sorted({r["bits"] for r in picked})):
            line = sorted((r["n"], r["ms_per_query_median"]) for r in picked if r["bits"] == bits)
            ns = [n for n, _ in line]
            ax.loglog(ns, [ms for _, ms in line], "o-", color=f"C{color}", label=f"{bits} bits")
            ax.loglog(ns, [1e3 * n * bits / 8 / bandwidth[threads] for n in ns], "--", color=f"C{color}", alpha=0.5)
        ax.set_title(f"IndexBinaryFlat, {mode} queries, {threads} thread{'s' * (threads > 1)}")
        ax.set_xlabel("gallery size N (codes)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ms per query (k-NN)")
    axes[0].legend(title="solid: measured\ndashed: read limit")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(meta: dict, galleries: list[dict], rows: list[dict]) -> str:
    """Machine, bandwidth, galleries and the results table as printable text."""
    m = meta["machine"]
    caches = ", ".join(f"{k} {v}" for k, v in m["caches"].items())
    lines = [
        f"command: {meta['command']}",
        f"machine: {m['cpu_model']}, {m['nproc']} usable CPUs ({m['cpu_count']} in all), {caches}, "
        f"{m['memory_gib']} GiB RAM; load average at start {', '.join(f'{x:.2f}' for x in m['loadavg_start'])}, "
        f"at end {', '.join(f'{x:.2f}' for x in meta['loadavg_end'])}",
        f"faiss {m['faiss']} ({m['faiss_compile_options']}; IndexBinaryFlat.query_batch_size "
        f"{m['faiss_query_batch_size']}), numpy {m['numpy']} (numpy scan single-threaded), python {m['python']}",
        "read bandwidth (int64 sum, best of {}, {} MiB): {}".format(
            BANDWIDTH_REPEATS,
            meta["settings"]["bandwidth_mib"],
            ", ".join(
                f"{bw / 1e9:.1f} GB/s at {t} thread{'s' * (t > 1)}" for t, bw in meta["bandwidth_bytes_per_s"].items()
            ),
        ),
    ]
    for g in galleries:
        build = ", ".join(f"{k} {v:.2f} s" for k, v in g["build_s"].items())
        lines.append(
            f"N={g['n']:,} x {g['bits']} bits: {g['gallery_mb']:.1f} MB of codes; build {build or '-'}; "
            f"{100 * g['straddle_fraction']:.0f}% of queries tie across the k-th distance"
        )
    lines += [
        "",
        table(rows),
        "",
        *(
            block + "\n"
            for block in (
                pivot(rows, method, mode, threads)
                for method in ("faiss", "store")
                for mode in ("single", "batch")
                for threads in sorted({r["threads"] for r in rows})
            )
            if block
        ),
        f"k={meta['settings']['k']}. ms/q: milliseconds per query (batch: call time / nq), median and p95 over calls. "
        "Mcodes/s = N * nq / median call time; GB/s = N * nq * L/8 bytes / median call time. limit ms/q: the "
        "flat-scan limit, the time to read the gallery once (N * L/8 bytes) at the read bandwidth of that many "
        "threads; % limit = limit / median ms/q = GB/s / bandwidth (over 100% is possible when the gallery stays in "
        "cache, or when a batch reads each block of the gallery once for several queries).",
    ]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    machine = machine_info()
    print(f"measuring read bandwidth ({args.bandwidth_mib} MiB)...", file=sys.stderr, flush=True)
    bandwidth = {t: read_bandwidth(args.bandwidth_mib, t) for t in sorted({1, *args.threads})}
    galleries, rows = [], []
    for bits in args.bits:
        for n in args.sizes:
            info, gallery_rows = run_gallery(args, n, bits, bandwidth)
            galleries.append(info)
            rows += gallery_rows
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    meta = {
        "command": command_line(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine,
        "loadavg_end": os.getloadavg(),
        "settings": settings,
        "bandwidth_bytes_per_s": bandwidth,
    }
    path = write_result(
        "search_scale", {**meta, "galleries": galleries, "results": rows}, None if args.out == DEFAULT_OUT else args.out
    )
    print(report(meta, galleries, rows))
    if any(r["method"] == "faiss" for r in rows):
        plot(rows, bandwidth, path.with_suffix(".png"))
        print(f"\nwritten to {path} and {path.with_suffix('.png')}")
    else:
        print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()

"""Multi-index hashing vs the flat scan: exact k-NN and radius search over 1M-10M codes of
32/64/128 bits, random codes (MIH's worst case) and trained-like codes (clustered around class
centres with per-bit noise), one query per call on one FAISS thread.

    .venv/bin/python bench/mih_scale.py --quick        # 200k codes, seconds
    .venv/bin/python bench/mih_scale.py                # 1M and 10M x 32/64/128 bits, random and clustered

Both columns time the same FaissCodeStore(index="mih") (ids in SQLite, results by (distance,
insertion order)): "flat" with its MultiIndexHash switched to mode "never" (every query takes
the flat scan), "mih" in mode "auto" (the tables, or the flat scan when the cost model says the
probe would cost more). Every query's results are checked to be identical in both. The first
MIH search (which builds the tables) is timed apart as build_s. Every flag can also be set by
CMHASH_BENCH_<FLAG>. Writes NAME.json and NAME.png (--name) with bench/flags.write_result, prints a markdown table;
never part of the test suite.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import faiss
import numpy as np
from flags import boolean, command_line, env, ints, machine_base, positive, write_result

from index.faiss_store import FaissCodeStore

DEFAULT_OUT = Path(__file__).resolve().parent / "out"
QUICK = {"sizes": "200000", "queries": "10", "bits": "64"}
CHUNK = 1 << 20


def _kinds(text: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items or set(items) - {"random", "clustered"}:
        raise argparse.ArgumentTypeError(f"expected a comma list of random, clustered; got {text!r}")
    return items


def _radii(text: str) -> list[int]:
    try:
        items = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        items = [-1]
    if not items or min(items) < 0:
        raise argparse.ArgumentTypeError(f"expected a comma list of radii >= 0; got {text!r}")
    return items


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--sizes", type=ints, default=env("sizes", "1000000,10000000"), help="gallery sizes N")
    p.add_argument("--bits", type=ints, default=env("bits", "32,64,128"), help="code lengths L (multiples of 8)")
    p.add_argument("--data", type=_kinds, default=env("data", "clustered,random"), help="random and/or clustered codes")
    p.add_argument("--ks", type=ints, default=env("ks", "1,10,100"), help="k of the k-NN queries")
    p.add_argument("--radii", type=_radii, default=env("radii", "0,2,4,6,8"), help="radii of the range queries")
    p.add_argument("--queries", type=positive, default=env("queries", "30"), help="timed queries per setting")
    p.add_argument("--centres", type=positive, default=env("centres", "24"), help="class centres of clustered codes")
    p.add_argument(
        "--flip",
        type=float,
        default=env("flip", "0.08"),
        help="per-bit flip probability of clustered codes around their centre",
    )
    p.add_argument("--seed", type=int, default=env("seed", "0"))
    p.add_argument("--out", type=Path, default=env("out", str(DEFAULT_OUT)), help="output folder")
    p.add_argument(
        "--raw",
        action="store_true",
        default=boolean(env("raw", "") or ""),
        help="time MIH against FAISS's bare flat index, without the store's id table (100M codes)",
    )
    p.add_argument(
        "--name",
        default=env("name", "mih_scale"),
        help="results file name (one per sweep: mih_scale, mih_scale_100m, ...)",
    )
    p.add_argument("--quick", action="store_true", default=boolean(env("quick", "") or ""), help="smoke run")
    if p.parse_known_args(argv)[0].quick:
        p.set_defaults(**{k: v for k, v in QUICK.items() if env(k, None) is None})
    args = p.parse_args(argv)
    if any(b % 8 for b in args.bits):
        p.error("--bits must be multiples of 8")
    return args


def make_codes(rng: np.random.Generator, n: int, bits: int, kind: str, centres: np.ndarray, flip: float) -> np.ndarray:
    """n packed codes: uniform random, or a random centre with each bit flipped with probability flip."""
    if kind == "random":
        return rng.integers(0, 256, size=(n, bits // 8), dtype=np.uint8)
    out = np.empty((n, bits // 8), dtype=np.uint8)
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        noise = rng.random((hi - lo, bits), dtype=np.float32) < flip
        out[lo:hi] = np.packbits(centres[rng.integers(0, len(centres), size=hi - lo)] ^ noise, axis=1)
    return out


def timed(store: FaissCodeStore, queries: np.ndarray, op: str, param: int) -> tuple[list[float], list]:
    """Milliseconds of each single-query call and its results."""
    times, results = [], []
    for j in range(len(queries)):
        q = queries[j : j + 1]
        start = time.perf_counter()
        res = store.search(q, param) if op == "knn" else store.range_search(q, param)
        times.append(1e3 * (time.perf_counter() - start))
        results.append(res)
    return times, results


class RawCodes:
    """The --raw gallery: FAISS's IndexBinaryFlat beside a MultiIndexHash over the same codes
    (internal id = row number), without the store's id table, which costs about 140 MiB per
    million ids and rules out 100M codes on a 24 GiB machine. The flat answers are FAISS's own
    scan; k-NN results compare as the distances of the k nearest (FAISS breaks ties at the k-th
    distance its own way), range results as the sorted row numbers within the radius."""

    def __init__(self, bits: int) -> None:
        from index.mih import MultiIndexHash

        self.flat = faiss.IndexBinaryFlat(bits)
        self.mih = MultiIndexHash(bits)
        self.n = 0

    def add(self, codes: np.ndarray) -> None:
        self.flat.add(codes)
        self.mih.add(codes, np.arange(self.n, self.n + len(codes), dtype=np.int64))
        self.n += len(codes)

    def search(self, q: np.ndarray, k: int) -> tuple[list[list[int]], None]:
        got = self.mih.knn(q[0], k) if self.mih.mode != "never" else None
        dist = got[0] if got is not None else self.flat.search(q, k)[0][0]
        return [np.asarray(dist, dtype=np.int64).tolist()], None

    def range_search(self, q: np.ndarray, radius: int) -> tuple[list[list[int]], None]:
        got = self.mih.range(q[0], radius) if self.mih.mode != "never" else None
        rows = got[1] if got is not None else self.flat.range_search(q, radius + 1)[2]  # FAISS's radius is strict
        return [np.sort(np.asarray(rows, dtype=np.int64)).tolist()], None


def run_gallery(args: argparse.Namespace, n: int, bits: int, kind: str) -> tuple[dict, list[dict]]:
    rng = np.random.default_rng([args.seed, n, bits, kind == "clustered"])
    centres = rng.integers(0, 2, size=(args.centres, bits), dtype=np.uint8).astype(bool)
    start = time.perf_counter()
    codes = make_codes(rng, n, bits, kind, centres, args.flip)
    store: FaissCodeStore | RawCodes = RawCodes(bits) if args.raw else FaissCodeStore(bits, index="mih")
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        if isinstance(store, RawCodes):
            store.add(codes[lo:hi])
        else:
            store.add([str(i) for i in range(lo, hi)], codes[lo:hi])
    add_s = time.perf_counter() - start
    del codes
    queries = make_codes(rng, args.queries, bits, kind, centres, args.flip)
    assert store.mih is not None
    start = time.perf_counter()
    store.mih.prepare()
    info = {
        "n": n,
        "bits": bits,
        "data": kind,
        "add_s": add_s,
        "build_s": time.perf_counter() - start,
        "substring_bits": store.mih._tables.lengths if store.mih._tables else None,
    }
    print(
        f"N={n:,} {bits} bits {kind}: added in {add_s:.1f} s, tables {info['substring_bits']} built in "
        f"{info['build_s']:.1f} s",
        file=sys.stderr,
        flush=True,
    )
    rows = []
    for op, params in (("knn", args.ks), ("range", args.radii)):
        for param in params:
            store.mih.mode = "never"
            timed(store, queries[:2], op, param)  # warm-up
            flat_ms, flat_res = timed(store, queries, op, param)
            store.mih.mode = "auto"
            store.mih._streak.clear()
            store.mih._asked.clear()
            before = dict(store.mih.stats)
            timed(store, queries[:2], op, param)
            mid = dict(store.mih.stats)
            mih_ms, mih_res = timed(store, queries, op, param)
            if repr(flat_res) != repr(mih_res):
                raise SystemExit(
                    f"error: MIH results differ from the flat scan at N={n}, {bits} bits, {kind}, {op} {param}"
                )
            answered = store.mih.stats["mih"] - mid["mih"]
            del before
            row = {
                "n": n,
                "bits": bits,
                "data": kind,
                "op": op,
                "param": param,
                "queries": len(queries),
                "flat_ms_median": float(np.median(flat_ms)),
                "mih_ms_median": float(np.median(mih_ms)),
                "flat_ms_mean": float(np.mean(flat_ms)),
                "mih_ms_mean": float(np.mean(mih_ms)),
                "mih_answered": answered / len(queries),
                "found_mean": float(np.mean([len(r[0][0]) for r in mih_res])),
                "flat_ms": flat_ms,
                "mih_ms": mih_ms,
            }
            row["speedup"] = row["flat_ms_median"] / row["mih_ms_median"]
            rows.append(row)
            print(
                f"  {op} {param}: flat {row['flat_ms_median']:.3f} ms, mih {row['mih_ms_median']:.3f} ms "
                f"(x{row['speedup']:.1f}, {100 * row['mih_answered']:.0f}% by MIH)",
                file=sys.stderr,
                flush=True,
            )
    return info, rows


def table(rows: list[dict]) -> str:
    head = "| N | bits | data | query | flat ms | mih ms | speed-up | by MIH | found |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        q = f"k={r['param']}" if r["op"] == "knn" else f"r<={r['param']}"
        lines.append(
            f"| {r['n']:,} | {r['bits']} | {r['data']} | {q} | {r['flat_ms_median']:.3f} | "
            f"{r['mih_ms_median']:.3f} | {r['speedup']:.2f}x | {100 * r['mih_answered']:.0f}% | "
            f"{r['found_mean']:.0f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({r["data"] for r in rows})
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4.2), sharey=True, squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        picked = [r for r in rows if r["data"] == kind]
        labels = list(dict.fromkeys((f"k={r['param']}" if r["op"] == "knn" else f"r<={r['param']}") for r in picked))
        for color, (n, bits) in enumerate(sorted({(r["n"], r["bits"]) for r in picked})):
            line = {
                (f"k={r['param']}" if r["op"] == "knn" else f"r<={r['param']}"): r["speedup"]
                for r in picked
                if (r["n"], r["bits"]) == (n, bits)
            }
            ax.semilogy(
                range(len(labels)),
                [line.get(lab, np.nan) for lab in labels],
                "o-",
                color=f"C{color}",
                label=f"{n / 1e6:g}M x {bits} bits",
            )
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(1 / 1.2, color="r", ls="--", lw=0.8, label="20% slower than flat")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_title(f"{kind} codes: flat ms / MIH ms per query (1 thread)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("speed-up of MIH over the flat scan")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    faiss.omp_set_num_threads(1)
    galleries, rows = [], []
    for kind in args.data:
        for bits in args.bits:
            for n in args.sizes:
                info, gallery_rows = run_gallery(args, n, bits, kind)
                galleries.append(info)
                rows += gallery_rows
    meta = {
        "command": command_line(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {
            **machine_base(),
            "faiss": faiss.__version__,
            "numpy": np.__version__,
            "loadavg_end": os.getloadavg(),
        },
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    path = write_result(
        args.name, {**meta, "galleries": galleries, "results": rows}, None if args.out == DEFAULT_OUT else args.out
    )
    plot(rows, path.with_suffix(".png"))
    print(f"command: {meta['command']}\n")
    print(table(rows))
    print(
        f"\nms: median per query over {args.queries} single-query calls, FAISS on 1 thread; clustered codes: "
        f"{args.centres} centres, flip probability {args.flip}. by MIH: queries the tables answered (the rest took "
        f"the flat scan). found: results per query. Written to {path} and {path.with_suffix('.png')}"
    )


if __name__ == "__main__":
    main()

"""Asymmetric re-ranking benchmark (issue 12): MAP over the whole ranking in both directions when
the query keeps its continuous representation h and the gallery stays binary, for plain Hamming
ranking, the Hamming top R re-ranked by h . b, and every item ranked by h . b, plus what each
costs per query through the one gallery search (index.search.search_pages on a FAISS store).

    .venv/bin/python bench/rerank.py                                  # 3 datasets x 2 methods x 4 lengths
    .venv/bin/python bench/rerank.py --datasets wikipedia-lda --bits 16 --epochs 2   # smoke test

Training uses the tuned settings of bench/settings.json (as bench/quality.py) at one seed; the
MIRFLICKR sample runs its k-fold protocol's folds given by --folds (fold 0 by default). A run
directory already under --out/runs is reused (its checkpoint), so a re-run only measures.
MAP is model.training.rerank (the trainer's conventions: relevant = a shared label, ties by
retrieval order); the cost is the wall time of search_pages for one query (a page of k=10),
averaged over --timing-queries queries, after the encoder (h is given). Writes rerank.json with
bench/flags.write_result and prints a markdown table. Flags also read CMHASH_BENCH_<FLAG>.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from flags import command_line, env, machine_base, usable_cpus, write_result
from quality import (
    DATASETS,
    METHODS,
    PreparedRuns,
    _choices,
    _ints,
    add_run_flags,
    load_settings,
    make_jobs,
    replicas,
)

from index.faiss_store import FaissCodeStore
from index.search import search_pages
from model.runtime.codes import pack_codes
from model.training.evaluate import split_codes
from model.training.metrics import map_variant_name, mean_average_precision
from model.training.rerank import query_representations, rerank_variant_name, reranked_map
from model.training.run import train_summary, write_run_dir
from model.training.train import load_checkpoint, train_model

DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "rerank"
DIRECTIONS = (
    ("i2t", "I->T", "query_image_h", "retrieval_text_codes"),
    ("t2i", "T->I", "query_text_h", "retrieval_image_codes"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--datasets", type=_choices(tuple(DATASETS)), default=env("datasets", ",".join(DATASETS)))
    p.add_argument("--methods", type=_choices(METHODS), default=env("methods", "bi_ncmh,dcmh"))
    p.add_argument("--bits", type=_ints, default=env("bits", "16,32,64,128"))
    p.add_argument("--seed", type=int, default=int(env("seed", "0") or 0), help="seed of the Wikipedia runs")
    p.add_argument("--folds", type=_ints, default=env("folds", "0"), help="MIRFLICKR-sample folds to run")
    p.add_argument(
        "--candidates", type=int, default=int(env("candidates", "100") or 100), help="R of the top-R re-ranking"
    )
    p.add_argument("--timing-queries", type=int, default=int(env("timing-queries", "200") or 200))
    add_run_flags(p, DEFAULT_OUT, "rerank")
    args = p.parse_args(argv)
    args.seeds = [args.seed]
    return args


def model_of(cfg, run):  # type: ignore[no-untyped-def]
    """The run's model: its checkpoint when OUT/runs already holds it, else trained (and saved)."""
    checkpoint = Path(cfg.out) / "checkpoint.pt"
    if checkpoint.exists():
        model, _, _ = load_checkpoint(checkpoint)
        return model, "reused"
    model, history = train_model(cfg, run, progress=False)
    codes = split_codes(model, run.inputs, run.eval_split.query, run.eval_split.retrieval)
    write_run_dir(cfg, run, model, history, codes, train_summary(cfg, run, history))
    return model, "trained"


def search_cost_ms(h: np.ndarray, retrieval: np.ndarray, rerank: int | str | None, n: int) -> float:
    """Mean wall milliseconds of one search_pages call (one query, a page of 10) over n queries."""
    bits = retrieval.shape[1]
    store = FaissCodeStore(bits)
    store.add([f"r{i}" for i in range(len(retrieval))], pack_codes(retrieval))
    codes = pack_codes(np.where(h >= 0, 1, -1))
    rows = range(min(n, len(h)))
    search_pages(store, codes[:1], [(0, 10)], query_h=h[:1] if rerank is not None else None, rerank=rerank)  # warm
    start = time.perf_counter()
    for i in rows:
        search_pages(
            store, codes[i : i + 1], [(0, 10)], query_h=h[i : i + 1] if rerank is not None else None, rerank=rerank
        )
    return (time.perf_counter() - start) * 1000.0 / max(1, len(rows))


def measure(codes: dict[str, np.ndarray], candidates: int, timing_queries: int) -> dict:
    out: dict = {}
    ql, rl = codes["query_labels"], codes["retrieval_labels"]
    for d, _, h_key, r_key in DIRECTIONS:
        h, r = codes[h_key], codes[r_key]
        q = np.where(h >= 0, 1, -1)
        out[d] = {
            "hamming": {"map": mean_average_precision(q, r, ql, rl), "ms": search_cost_ms(h, r, None, timing_queries)},
            f"top{candidates}": {
                "map": reranked_map(h, r, ql, rl, candidates),
                "ms": search_cost_ms(h, r, candidates, timing_queries),
            },
            "all": {"map": reranked_map(h, r, ql, rl, None), "ms": search_cost_ms(h, r, "all", timing_queries)},
        }
    return out


def table(records: list[dict], candidates: int) -> str:
    variants = ("hamming", f"top{candidates}", "all")
    head = (
        "| dataset | method | bits | "
        + " | ".join(f"{n} {v}" for n in ("I->T", "T->I") for v in variants)
        + " | ms/query "
        + " / ".join(variants)
        + " |"
    )
    lines = [head, "|" + "---|" * (4 + 2 * len(variants))]
    for rec in records:
        m = rec["map"]
        cells = [f"{m[d][v]['map']:.4f}" for d in ("i2t", "t2i") for v in variants]
        ms = " / ".join(f"{(m['i2t'][v]['ms'] + m['t2i'][v]['ms']) / 2:.2f}" for v in variants)
        fold = f" f{rec['fold']}" if rec["fold"] is not None else ""
        lines.append(
            f"| {rec['dataset']}{fold} | {rec['method']} | {rec['bits']} | " + " | ".join(cells) + f" | {ms} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = args.threads or usable_cpus()
    torch.set_num_threads(threads)
    settings = load_settings(args.settings)
    defaults = []  # (dataset, part, method) without tuned settings: TrainConfig's defaults
    for key in args.datasets:
        for part, fields in replicas(key, args):
            for method in args.methods:
                if method not in settings.setdefault(key, {}).setdefault(part, {}):
                    settings[key][part][method] = {"_validation": {}}
                    if fields.get("fold") is None or fields["fold"] in args.folds:
                        defaults.append(f"{key} {part} {method}".replace("  ", " "))
    if defaults:
        print("no tuned settings (TrainConfig defaults used): " + ", ".join(defaults), flush=True)
    jobs = [j for j in make_jobs(args, settings, threads) if j.cfg.fold is None or j.cfg.fold in args.folds]
    prepared = PreparedRuns()
    records = []
    for job in jobs:
        cfg = job.cfg
        start = time.perf_counter()
        run = prepared.get(cfg)
        model, how = model_of(cfg, run)
        split = run.eval_split
        codes = split_codes(model, run.inputs, split.query, split.retrieval)
        codes.update(query_representations(model, run.inputs, split.query))
        record = {
            "dataset": job.key,
            "method": cfg.method,
            "bits": cfg.bits,
            "seed": cfg.seed,
            "fold": cfg.fold,
            "model": how,
            "n_query": len(split.query),
            "n_retrieval": len(split.retrieval),
            "map": measure(codes, args.candidates, args.timing_queries),
            "wall_seconds": time.perf_counter() - start,
        }
        records.append(record)
        m = record["map"]
        print(
            f"{job.label()} ({how}): "
            + "  ".join(
                f"{name} {m[d]['hamming']['map']:.4f} -> top{args.candidates} {m[d][f'top{args.candidates}']['map']:.4f}"
                f" / all {m[d]['all']['map']:.4f}"
                for d, name, _, _ in DIRECTIONS
            ),
            flush=True,
        )
    md = table(records, args.candidates)
    path = write_result(
        args.name,
        {
            "command": command_line(),
            "variants": {
                "hamming": map_variant_name(None),
                f"top{args.candidates}": rerank_variant_name(None, args.candidates),
                "all": rerank_variant_name(None, None),
            },
            "cost": "ms per query of index.search.search_pages (one query, page k=10, FAISS flat store, h given)",
            "threads": threads,
            "untuned": defaults,
            "records": records,
            "table": md,
            "machine_threads": machine_base()["nproc"],
        },
    )
    print(md)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

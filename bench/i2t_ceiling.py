"""Where Wikipedia's I->T is held back (issue 13): the text side or the image side.

On the Wikipedia protocol the I->T gallery is the training rows' texts, whose codes the text head
was fitted to. So a better text input can only raise I->T by placing those codes better. This
measures how much room that leaves: for each published run (bench/quality.py's settings, seeds and
split), I->T MAP with the trained codes, then with every gallery text code replaced by its class
prototype (the majority bit of that class's gallery text codes: texts as well placed as one code
per class allows), then with every query image code replaced by its class prototype (images as
well placed). It also gives how often a code is nearest (Hamming) its own class's prototype:
gallery texts, query texts and query images (ties go to the lower class index).

    .venv/bin/python bench/i2t_ceiling.py                     # 4 text inputs x 3 seeds, Bi_NCMH, 64 bits
    .venv/bin/python bench/i2t_ceiling.py --datasets wikipedia-lda --seeds 0 --epochs 2   # smoke test

MAP is model.training.metrics' (whole ranking, relevant = same class, ties by retrieval order).
Nothing here is tuned or chosen: the settings are the committed ones. A run directory already under
--out/runs is reused (its checkpoint). Writes i2t_ceiling.json with bench/flags.write_result and
prints a markdown table. Flags also read CMHASH_BENCH_<FLAG>.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from flags import command_line, env, usable_cpus, write_result
from quality import DATASETS, METHODS, PreparedRuns, _choices, _ints, add_run_flags, load_settings, make_jobs
from rerank import model_of

from model.training.evaluate import split_codes
from model.training.metrics import map_variant_name, mean_average_precision

WIKIPEDIA = tuple(key for key in DATASETS if key.startswith("wikipedia-"))  # single-label, preset split
DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "i2t_ceiling"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--datasets", type=_choices(WIKIPEDIA), default=env("datasets", ",".join(WIKIPEDIA)))
    p.add_argument("--methods", type=_choices(METHODS), default=env("methods", "bi_ncmh"))
    p.add_argument("--bits", type=_ints, default=env("bits", "64"))
    p.add_argument("--seeds", type=_ints, default=env("seeds", "0,1,2"))
    add_run_flags(p, DEFAULT_OUT, "i2t_ceiling")
    return p.parse_args(argv)


def class_prototypes(codes: np.ndarray, classes: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, bits) +-1: per class, the majority bit of its rows of `codes` (+1 on a tie)."""
    return np.stack([np.where(codes[classes == c].sum(axis=0) >= 0, 1, -1) for c in range(n_classes)])


def nearest_share(codes: np.ndarray, classes: np.ndarray, prototypes: np.ndarray) -> float:
    """Share of rows whose nearest prototype (largest inner product = smallest Hamming
    distance; ties to the lower class) is their own class's."""
    return float(np.mean((codes.astype(np.int64) @ prototypes.T).argmax(axis=1) == classes))


def ceiling(codes: dict[str, np.ndarray]) -> dict[str, float]:
    """The MAPs and nearest-prototype shares of one run's codes (single-label data)."""
    q_labels, r_labels = codes["query_labels"], codes["retrieval_labels"]
    if (q_labels.sum(axis=1) != 1).any() or (r_labels.sum(axis=1) != 1).any():
        raise SystemExit("error: class prototypes need single-label data")
    q_class, r_class = q_labels.argmax(axis=1), r_labels.argmax(axis=1)
    protos = class_prototypes(codes["retrieval_text_codes"], r_class, r_labels.shape[1])
    q_img, r_txt = codes["query_image_codes"], codes["retrieval_text_codes"]

    def i2t(query: np.ndarray, gallery: np.ndarray) -> float:
        return mean_average_precision(query, gallery, q_labels, r_labels)

    return {
        "i2t": i2t(q_img, r_txt),
        "i2t_prototype_texts": i2t(q_img, protos[r_class]),
        "i2t_prototype_images": i2t(protos[q_class], r_txt),
        "t2i": mean_average_precision(codes["query_text_codes"], codes["retrieval_image_codes"], q_labels, r_labels),
        "gallery_texts_nearest_own": nearest_share(r_txt, r_class, protos),
        "query_texts_nearest_own": nearest_share(codes["query_text_codes"], q_class, protos),
        "query_images_nearest_own": nearest_share(q_img, q_class, protos),
    }


COLUMNS = (
    ("i2t", "I->T"),
    ("i2t_prototype_texts", "I->T, texts as prototypes"),
    ("i2t_prototype_images", "I->T, images as prototypes"),
    ("t2i", "T->I"),
    ("gallery_texts_nearest_own", "gallery texts nearest own"),
    ("query_texts_nearest_own", "query texts nearest own"),
    ("query_images_nearest_own", "query images nearest own"),
)


def table(records: list[dict]) -> str:
    """Mean ± sd over seeds per (dataset, method, bits)."""
    lines = [
        "| dataset | method | bits | " + " | ".join(name for _, name in COLUMNS) + " |",
        "|---|---|---|" + "---|" * len(COLUMNS),
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["method"], r["bits"]), []).append(r["values"])
    for (key, method, bits), values in groups.items():
        cells = []
        for col, _ in COLUMNS:
            v = np.array([x[col] for x in values])
            cells.append(f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v[0]:.3f}")
        lines.append(f"| {key} | {method} | {bits} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = args.threads or usable_cpus()
    torch.set_num_threads(threads)
    jobs = make_jobs(args, load_settings(args.settings), threads)
    prepared = PreparedRuns()
    records = []
    for job in jobs:
        start = time.perf_counter()
        run = prepared.get(job.cfg)
        model, how = model_of(job.cfg, run)
        values = ceiling(split_codes(model, run.inputs, run.eval_split.query, run.eval_split.retrieval))
        records.append(
            {
                "dataset": job.key,
                "method": job.cfg.method,
                "bits": job.cfg.bits,
                "seed": job.cfg.seed,
                "model": how,
                "values": values,
                "wall_seconds": time.perf_counter() - start,
            }
        )
        print(f"{job.label()} ({how}): " + "  ".join(f"{k} {v:.4f}" for k, v in values.items()), flush=True)
    md = table(records)
    path = write_result(
        args.name,
        {
            "command": command_line(),
            "protocol": "the official Wikipedia split: 693 test queries, 2,173 training rows as the gallery",
            "variant": map_variant_name(None),
            "prototype": "per class, the majority bit of that class's gallery text codes (+1 on a tie)",
            "threads": threads,
            "records": records,
            "table": md,
        },
    )
    print(md)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

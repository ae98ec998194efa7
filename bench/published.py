"""Our MAP beside the papers' published numbers, with the protocol of each, as markdown tables.

    .venv/bin/python bench/published.py              # reads docs/results/quality_<dataset>.json
    .venv/bin/python bench/published.py bench/out/quality/quality_mirflickr.json

Reads the results files bench/quality.py writes (quality_<dataset>.json) and prints, per
dataset, each published row next to our mean over seeds or folds for the same method, metric
and code lengths. The published
numbers are transcribed from the papers in ../shared/papers (table named in each row); they
were measured on other splits, features and training sets, so a row pair shows where cmhash
stands, not a like-for-like comparison. Never part of the test suite.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BITS = (16, 32, 64, 128)


@dataclass(frozen=True)
class Published:
    """One published row: MAP of a method at 16-128 bits (None where the paper has no column)."""

    dataset: str  # our dataset key whose protocol is closest
    method: str  # our method key
    metric: str  # "MAP" (whole ranking) or "MAP@50"
    source: str  # paper and table
    protocol: str  # split, features and training set of the published run
    i2t: tuple[float | None, ...]  # image -> text at BITS
    t2i: tuple[float | None, ...]  # text -> image at BITS


BI_NCMH_MIR = (
    "MIRFLICKR-25K, 20,015 pairs with >= 20 tags, 2,000 queries against the other 18,015, "
    "10,000 training; CNN-F fine-tuned end to end; 1,386-tag BoW"
)
DCMH_MIR = "MIRFLICKR-25K, 2,000 queries, 10,000 training; CNN-F (ImageNet-initialised) trained end to end; tag BoW"
DJSRH_MIR = (
    "MIRFLICKR, 2,000 queries against the rest, 5,000 training; AlexNet fc7 features, fc layers trained; tag occurrence"
)
DJSRH_WIKI = (
    "Wiki official split, 693 queries against 2,173 (also the training set); AlexNet fc7 "
    "image features (not the 128-d SIFT we use); 10-d LDA text"
)

PUBLISHED = (
    Published(
        "mirflickr",
        "bi_ncmh",
        "MAP",
        "Bi_NCMH paper, Table 1",
        BI_NCMH_MIR,
        (0.770, 0.781, 0.796, 0.780),
        (0.760, 0.776, 0.780, 0.781),
    ),
    Published(
        "mirflickr",
        "dcmh",
        "MAP",
        "Bi_NCMH paper, Table 1 (DCMH row)",
        BI_NCMH_MIR,
        (0.730, 0.741, 0.748, 0.726),
        (0.759, 0.767, 0.775, 0.749),
    ),
    Published(
        "mirflickr",
        "dcmh",
        "MAP",
        "DCMH paper (poster table)",
        DCMH_MIR,
        (0.741, 0.747, 0.749, None),
        (0.783, 0.790, 0.793, None),
    ),
    Published(
        "mirflickr",
        "cca_itq",
        "MAP",
        "Bi_NCMH paper, Table 1 (CCA row, CNN-F features)",
        BI_NCMH_MIR,
        (0.553, 0.545, 0.548, 0.547),
        (0.554, 0.583, 0.549, 0.548),
    ),
    Published(
        "mirflickr",
        "djsrh",
        "MAP@50",
        "DJSRH paper, Table 1",
        DJSRH_MIR,
        (0.810, 0.843, 0.862, 0.876),
        (0.786, 0.822, 0.835, 0.847),
    ),
    Published(
        "wikipedia-lda",
        "djsrh",
        "MAP@50",
        "DJSRH paper, Table 1",
        DJSRH_WIKI,
        (0.388, 0.403, 0.412, 0.421),
        (0.611, 0.635, 0.646, 0.658),
    ),
)

OUR_PROTOCOL = {
    "mirflickr": "730-pair sample, 5-fold (every item a query once; each fold 146 queries against the other 584, "
    "also its training set); frozen EfficientNet-Lite0; 1,386-tag BoW; mean over the 5 folds",
    "wikipedia-lda": "official split, 693 queries against 2,173 (also the training set); 128-d SIFT; 10-d LDA; "
    "mean of 3 seeds",
}
RESULTS = ROOT / "docs" / "results"
METRICS = {"MAP": "map", "MAP@50": "map@50"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags, each defaulting to its CMHASH_BENCH_<FLAG> environment variable when set."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "results",
        type=Path,
        nargs="*",
        default=[RESULTS / f"quality_{key}.json" for key in OUR_PROTOCOL],
        help="quality_<dataset>.json files written by bench/quality.py",
    )
    return p.parse_args(argv)


def read_ours(paths: list[Path]) -> dict[tuple[str, str, str, int], tuple[float, float]]:
    """(dataset, method, metric, bits) -> (I->T, T->I): the mean over a dataset's seeds or folds
    of every run in bench/quality.py's quality_<dataset>.json files."""
    runs: dict[tuple[str, str, str, int], list[tuple[float, float]]] = {}
    for path in paths:
        data = json.loads(path.read_text())
        for run in data["runs"]:
            m = run["metrics"]
            for metric, key in METRICS.items():
                runs.setdefault((data["dataset"], run["method"], metric, run["bits"]), []).append(
                    (m["i2t"][key], m["t2i"][key])
                )
    return {k: (float(np.mean([v[0] for v in vs])), float(np.mean([v[1] for v in vs]))) for k, vs in runs.items()}


def cells(values: tuple[float | None, ...]) -> list[str]:
    return [f"{v:.3f}" if v is not None else "–" for v in values]


def table(dataset: str, ours: dict[tuple[str, str, str, int], tuple[float, float]]) -> list[str]:
    """Markdown lines: each published row of `dataset`, then ours for the same method and metric."""
    head = [f"{d} {b}" for d in ("I->T", "T->I") for b in BITS]
    lines = [
        f"**{dataset}** (ours: {OUR_PROTOCOL[dataset]})",
        "",
        "| Method | Metric | Source | " + " | ".join(head) + " |",
        "|---|---|---|" + "---:|" * len(head),
    ]
    shown: set[tuple[str, str]] = set()
    for pub in (p for p in PUBLISHED if p.dataset == dataset):
        lines.append(
            f"| {pub.method} | {pub.metric} | {pub.source} | " + " | ".join(cells(pub.i2t) + cells(pub.t2i)) + " |"
        )
        key = (pub.method, pub.metric)
        if key in shown or not all((dataset, *key, b) in ours for b in BITS):
            continue
        shown.add(key)
        mine = [ours[(dataset, *key, b)] for b in BITS]
        lines.append(
            f"| {pub.method} | {pub.metric} | **cmhash** | "
            + " | ".join(cells(tuple(m[0] for m in mine)) + cells(tuple(m[1] for m in mine)))
            + " |"
        )
    return lines


def main() -> None:
    args = parse_args()
    missing = [str(path) for path in args.results if not path.exists()]
    if missing:
        raise SystemExit(f"error: no results file {', '.join(missing)}: run bench/quality.py first")
    ours = read_ours(args.results)
    for dataset in dict.fromkeys(p.dataset for p in PUBLISHED):
        print("\n".join(table(dataset, ours)) + "\n")
    print("Published protocols:")
    for protocol in dict.fromkeys((p.source.split(",")[0], p.protocol) for p in PUBLISHED):
        print(f"- {protocol[0]}: {protocol[1]}")


if __name__ == "__main__":
    main()

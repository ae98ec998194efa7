"""Choose each method's training settings on a validation split carved from the training data
(never the query set), with the same grid size for every method, and write bench/settings.json.

Each candidate trains on 80% of the training rows and is scored by the mean of I->T and T->I
MAP (whole ranking) with the held-out 20% as queries against the 80% as retrieval set.

    python bench/tune.py [--datasets wikipedia-lda,mirflickr] [--methods bi_ncmh,dcmh] [--bits 64]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import torch

from model.training.config import TrainConfig
from model.training.evaluate import evaluate_codes, split_codes
from model.training.train import prepare_run, train_model

SETTINGS = Path(__file__).resolve().parent / "settings.json"
DATASETS = {
    "wikipedia-lda": {"dataset": "wikipedia", "text_features": "lda"},
    "wikipedia-tfidf": {"dataset": "wikipedia", "text_features": "tfidf"},
    "mirflickr": {"dataset": "mirflickr"},
}
# Shared by every deep method: the same budget (epochs, batch) and the same optimiser grid.
COMMON = {"epochs": 60, "batch_size": 128, "optimizer": "adam"}
COMMON_GRID = {"lr": [1e-3, 3e-4], "hidden": [[512], [2048]]}
# Two values of each method's most influential hyper-parameter (paper default included).
METHOD_GRID: dict[str, list[dict]] = {
    "bi_ncmh": [{"beta": 1.0, "gamma": 0.1}, {"beta": 0.1, "gamma": 0.1}],
    "dcmh": [{"gamma": 1.0, "eta": 1.0}, {"gamma": 0.1, "eta": 0.01}],
    "djsrh": [{"mu": 1.5}, {"mu": 1.2}],
}
# DJSRH's per-dataset paper values (sec. 4.3): Wiki beta 0.3, lambda 0.3; MIRFlickr beta 0.9, lambda 0.1.
DJSRH_DATASET = {"wikipedia": {"beta": 0.3, "lambda1": 0.3, "lambda2": 0.3}, "mirflickr": {"beta": 0.9}}
CCA_GRID = [{"reg": r} for r in (1e-4, 1e-3, 1e-2, 1e-1)]
# Second stage for every deep method: weight decay tried on top of its best grid point.
REFINE_GRID = [{"weight_decay": w} for w in (1e-4, 1e-3)]


def candidates(method: str, dataset: str) -> list[dict]:
    """The grid of TrainConfig fields tried for one method on one dataset."""
    if method == "cca_itq":
        return [{"hp": hp} for hp in CCA_GRID]
    out = []
    for lr, hidden, hp in itertools.product(COMMON_GRID["lr"], COMMON_GRID["hidden"], METHOD_GRID[method]):
        extra = DJSRH_DATASET.get(dataset, {}) if method == "djsrh" else {}
        out.append({**COMMON, "lr": lr, "hidden": hidden, "hp": {**extra, **hp}})
    return out


def score(cfg: TrainConfig, run) -> tuple[float, dict]:
    """Validation MAP (mean of both directions) of one candidate."""
    model, _ = train_model(cfg, run, progress=False)
    inp = run.inputs
    m = evaluate_codes(split_codes(model, inp, run.eval_split.query, run.eval_split.retrieval))
    return (m["i2t"]["map"] + m["t2i"]["map"]) / 2, {"i2t": m["i2t"]["map"], "t2i": m["t2i"]["map"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default=os.environ.get("CMHASH_TUNE_DATASETS", ",".join(DATASETS)))
    p.add_argument("--methods", default=os.environ.get("CMHASH_TUNE_METHODS", "bi_ncmh,dcmh,djsrh,cca_itq"))
    p.add_argument("--bits", type=int, default=int(os.environ.get("CMHASH_TUNE_BITS", 64)))
    p.add_argument("--seed", type=int, default=int(os.environ.get("CMHASH_TUNE_SEED", 0)))
    p.add_argument("--threads", type=int, default=int(os.environ.get("CMHASH_TUNE_THREADS", 1)))
    p.add_argument("--refine-only", action="store_true",
                   default=os.environ.get("CMHASH_TUNE_REFINE_ONLY", "") not in ("", "0"),
                   help="skip the grid: refine the settings already in --settings")
    p.add_argument("--settings", type=Path, default=Path(os.environ.get("CMHASH_TUNE_SETTINGS", SETTINGS)))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    settings = json.loads(args.settings.read_text()) if args.settings.exists() else {}
    for key in args.datasets.split(","):
        base = {**DATASETS[key], "out": "/tmp/cmhash-tune", "bits": args.bits, "seed": args.seed,
                "validation_fraction": 0.2, "device": "cpu", "threads": args.threads}
        run = prepare_run(TrainConfig(**base), progress=False)
        log = settings.setdefault(key, {})
        for method in args.methods.split(","):
            trials = []
            if args.refine_only:
                grid = [{k: v for k, v in log[method].items() if not k.startswith("_")}]
            else:
                grid = candidates(method, DATASETS[key]["dataset"])
            for cand in grid:
                trials.append(_trial(key, method, cand, base, run))
            if method != "cca_itq":
                best = max(trials, key=lambda t: t[0])[1]
                trials += [_trial(key, method, {**best, **r}, base, run) for r in REFINE_GRID]
            best = max(trials, key=lambda t: t[0])
            previous = log.get(method, {}).get("_validation", {}).get("candidates", 0) if args.refine_only else 0
            log[method] = {**best[1], "_validation": {"map_i2t": best[2]["i2t"], "map_t2i": best[2]["t2i"],
                                                    "candidates": previous + len(trials) - (1 if args.refine_only else 0),
                                                    "bits": args.bits, "seed": args.seed}}
            print(f"==> {key} {method}: {json.dumps(best[1])}", flush=True)
            args.settings.write_text(json.dumps(settings, indent=2) + "\n")


def _trial(key: str, method: str, cand: dict, base: dict, run) -> tuple[float, dict, dict]:
    """Train and score one candidate, printing its validation MAPs."""
    start = time.perf_counter()
    value, detail = score(TrainConfig(**{**base, **cand, "method": method}), run)
    print(f"{key} {method} {json.dumps(cand)}: val MAP I->T {detail['i2t']:.4f} T->I {detail['t2i']:.4f} "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    return value, cand, detail


if __name__ == "__main__":
    main()

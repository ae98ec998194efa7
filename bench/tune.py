"""Choose each method's training settings by nested validation and write bench/settings.json.

Tuning never sees a query row of the split it is reported on: for every evaluation split (the
official Wikipedia split; each fold of the k-fold MIRFLICKR-sample protocol) the candidates
train on 80% of THAT split's training rows and are scored on the other 20% of them
(`carve_validation`), by the mean of I->T and T->I MAP (whole ranking), held-out rows as
queries against the 80% as retrieval set. A k-fold dataset is therefore tuned once per fold,
and bench/quality.py evaluates fold i with the settings tuned inside fold i's training rows
(it refuses settings whose recorded tuning rows meet a reported query row).

Every method gets the same budget: 10 configurations. Deep methods: 8 in stage 1 (learning
rate {1e-3, 3e-4} x 4 points of the method's own hyper-parameters; Bi_NCMH's points move alpha,
beta and gamma), then 2 in stage 2 (weight decay {1e-4, 1e-3} on the best of stage 1);
CCA-ITQ: 10 ridge values.

    python bench/tune.py --datasets wikipedia-lda --methods bi_ncmh,dcmh     # the official split
    python bench/tune.py --datasets mirflickr                                # every fold (5)
    python bench/tune.py --datasets mirflickr --fold 2 --methods dcmh       # one fold, one method
    python bench/tune.py --defaults --datasets mirflickr,wikipedia-lda      # pick the method defaults

--defaults scores only the stage-1 points at the `cmhash train` defaults (lr 1e-3, hidden 2048,
no weight decay, 60 epochs) and prints the hyper-parameter point with the best mean
validation MAP over the datasets asked for: that is how the methods' defaults were chosen.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from model.training.config import TrainConfig
from model.training.data import CrossModalDataset, carve_validation
from model.training.evaluate import evaluate_codes, split_codes
from model.training.train import evaluation_split, prepare_run, train_model

SETTINGS = Path(__file__).resolve().parent / "settings.json"
MANIFESTS = Path(__file__).resolve().parent / "out" / "manifests"  # manifests the benchmarks write
# Benchmark dataset keys: the TrainConfig fields that select the data and its text input.
# bench/quality.py and bench/rerank.py read the same table. wikipedia-minilm reads the article
# sections themselves through MiniLM, mean-pooled over 200-word chunks (the `minilm` extra).
DATASETS: dict[str, dict] = {
    "wikipedia-lda": {"dataset": "wikipedia", "text_features": "lda"},
    "wikipedia-tfidf": {"dataset": "wikipedia", "text_features": "tfidf"},
    "wikipedia-minilm": {"dataset": "wikipedia", "text_features": "raw", "text_encoder": "minilm"},
    # the articles as a tf-idf bag of the training articles' 5,000 most frequent words, leaving out
    # words in over half of them (the setting picked on the validation rows: docs/results.md)
    "wikipedia-bow": {
        "dataset": "wikipedia",
        "text_features": "raw",
        "text_encoder": "bow",
        "text_weighting": "tfidf",
        "min_word_count": 2,
        "max_word_share": 0.5,
    },
    "mirflickr": {"dataset": "mirflickr"},
    # the tags through MiniLM, with mirflickr's tuned settings (the lever bench/levers.py measured
    # on the folds' validation rows; settings.json: "_same_as": "mirflickr")
    "mirflickr-minilm": {"dataset": "mirflickr", "text_encoder": "minilm"},
    # a user's manifest: the MIRFLICKR sample as `cmhash sources` writes it (images, raw tags, label
    # names, in dataset order), read by the manifest loader with a bag of the training rows' tags.
    # Same 730 rows in the same order, so the same k folds: settings.json "_same_as": "mirflickr".
    "mirflickr-manifest": {"dataset": "manifest", "data": str(MANIFESTS / "mirflickr" / "images.jsonl")},
}
# The evaluation protocol of each benchmark dataset: the published split, or k folds of the
# 730-item MIRFLICKR sample (every item a query once). bench/quality.py reads the same table.
PROTOCOLS: dict[str, dict] = {
    **{key: {"kind": "preset"} for key in DATASETS if key.startswith("wikipedia-")},
    **{key: {"kind": "folds", "folds": 5, "seed": 0} for key in DATASETS if key.startswith("mirflickr")},
}
VALIDATION_FRACTION = 0.2
# Shared by every deep method: the same budget (epochs, batch, hidden) and the same optimiser grid.
COMMON = {"epochs": 60, "batch_size": 128, "optimizer": "adam", "hidden": [2048]}
LR_GRID = [1e-3, 3e-4]
# Four points of each method's own hyper-parameters (paper values included where the paper has them).
METHOD_GRID: dict[str, list[dict]] = {
    # beta here is eq. 7's own weight (the loss matches eq. 11's gradient; see methods/bi_ncmh.py)
    "bi_ncmh": [
        {"alpha": 1.0, "beta": 0.05, "gamma": 0.1},
        {"alpha": 1.0, "beta": 0.5, "gamma": 0.1},
        {"alpha": 1.0, "beta": 0.05, "gamma": 1.0},
        {"alpha": 0.3, "beta": 0.05, "gamma": 0.1},
    ],
    "dcmh": [
        {"gamma": 1.0, "eta": 1.0},
        {"gamma": 0.1, "eta": 0.1},
        {"gamma": 0.1, "eta": 0.01},
        {"gamma": 0.01, "eta": 0.001},
    ],
    "djsrh": [{"mu": 1.5}, {"mu": 1.2}, {"mu": 1.8}, {"mu": 1.5, "eta": 0.1}],
}
# DJSRH's per-dataset paper values (sec. 4.3): Wiki beta 0.3, lambda 0.3; MIRFlickr beta 0.9, lambda 0.1.
DJSRH_DATASET = {"wikipedia": {"beta": 0.3, "lambda1": 0.3, "lambda2": 0.3}, "mirflickr": {"beta": 0.9}}
CCA_GRID = [{"reg": r} for r in (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)]
# Stage 2 for every deep method: weight decay tried on top of its best stage-1 point.
REFINE_GRID = [{"weight_decay": w} for w in (1e-4, 1e-3)]
BUDGET = len(LR_GRID) * 4 + len(REFINE_GRID)
assert all(len(g) == 4 for g in METHOD_GRID.values()) and len(CCA_GRID) == BUDGET, "same budget per method"


def ensure_data(key: str) -> None:
    """Write a manifest dataset key's manifest from its source dataset when it is missing."""
    fields = DATASETS[key]
    if fields["dataset"] != "manifest" or Path(fields["data"]).exists():
        return
    from model.training.data import load_dataset
    from model.training.data.sources import write_dataset_sources

    source = Path(fields["data"]).parent.name  # MANIFESTS/<dataset>/images.jsonl
    write_dataset_sources(
        load_dataset(source, TrainConfig(dataset=source, out=MANIFESTS).data_path()), MANIFESTS / source
    )


def candidates(method: str, dataset: str, defaults_only: bool = False) -> list[dict]:
    """Stage 1: the TrainConfig fields tried for one method on one dataset (with
    `defaults_only`, only those at the `cmhash train` optimiser defaults)."""
    if method == "cca_itq":
        return [{"hp": hp} for hp in CCA_GRID]
    out = []
    for lr, hp in itertools.product(LR_GRID[:1] if defaults_only else LR_GRID, METHOD_GRID[method]):
        # the method defaults are one set for every dataset: no per-dataset paper values there
        extra = DJSRH_DATASET.get(dataset, {}) if method == "djsrh" and not defaults_only else {}
        out.append({**COMMON, "lr": lr, "hp": {**extra, **hp}})
    return out


def split_record(key: str, fold: int | None) -> dict:
    """What `_validation.split` records: the evaluation split whose training rows were tuned on."""
    protocol = PROTOCOLS[key]
    if protocol["kind"] == "folds":
        assert fold is not None
        return {"kind": "folds", "folds": protocol["folds"], "fold": fold, "seed": protocol["seed"]}
    return {"kind": "preset"}


def tuning_config(key: str, bits: int, split: dict, threads: int, **extra) -> TrainConfig:
    """The config whose `prepare_run` gives the validation split of `split`'s training rows."""
    ensure_data(key)
    fields: dict = {
        **DATASETS[key],
        "out": "/tmp/cmhash-tune",
        "bits": bits,
        "device": "cpu",
        "threads": threads,
        "validation_fraction": VALIDATION_FRACTION,
        **extra,
    }
    if split["kind"] == "folds":
        fields.update(folds=split["folds"], fold=split["fold"], seed=split["seed"])
    elif split["kind"] == "seeded":  # a seeded random split (query_size / train_size), as older runs used
        fields.update(query_size=split["query_size"], train_size=split.get("train_size"), seed=split["seed"])
    else:
        fields.setdefault("seed", 0)
    return TrainConfig(**fields)


def tuning_rows(ds: CrossModalDataset, key: str, validation: dict) -> np.ndarray:
    """Every row a settings entry's tuning looked at (its fit and validation rows), rebuilt
    from the entry's `_validation` record."""
    split = validation["split"]
    cfg = tuning_config(
        key,
        validation.get("bits", 64),
        split,
        1,
        **({"seed": validation.get("seed", 0)} if split["kind"] == "preset" else {}),
    )
    train = evaluation_split(ds, cfg).train
    fit, val = carve_validation(train, validation.get("validation_fraction", VALIDATION_FRACTION), cfg.seed)
    return np.union1d(fit, val)


def score(cfg: TrainConfig, run) -> tuple[float, dict]:
    """Validation MAP (mean of both directions) of one candidate."""
    model, _ = train_model(cfg, run, progress=False)
    inp = run.inputs
    m = evaluate_codes(split_codes(model, inp, run.eval_split.query, run.eval_split.retrieval))
    return (m["i2t"]["map"] + m["t2i"]["map"]) / 2, {
        "i2t": m["i2t"]["map"],
        "t2i": m["t2i"]["map"],
        "chance": m["chance_map"],
    }


def _trial(label: str, method: str, cand: dict, base: TrainConfig, run) -> tuple[float, dict, dict]:
    """Train and score one candidate, printing its validation MAPs."""
    start = time.perf_counter()
    cfg = TrainConfig(**{**base.model_dump(), **cand, "method": method})
    value, detail = score(cfg, run)
    print(
        f"{label} {method} {json.dumps(cand)}: val MAP I->T {detail['i2t']:.4f} T->I {detail['t2i']:.4f} "
        f"(chance {detail['chance']:.4f}; {time.perf_counter() - start:.0f} s)",
        flush=True,
    )
    return value, cand, detail


def tune_split(key: str, split: dict, methods: list[str], bits: int, threads: int) -> dict[str, dict]:
    """Tune every method on the validation part of one evaluation split's training rows."""
    base = tuning_config(key, bits, split, threads)
    run = prepare_run(base, progress=False)
    label = key + (f" fold {split['fold']}" if split["kind"] == "folds" else "")
    out = {}
    for method in methods:
        trials = [_trial(label, method, c, base, run) for c in candidates(method, DATASETS[key]["dataset"])]
        if method != "cca_itq":
            best = max(trials, key=lambda t: t[0])[1]
            trials += [_trial(label, method, {**best, **r}, base, run) for r in REFINE_GRID]
        assert len(trials) == BUDGET
        _, fields, detail = max(trials, key=lambda t: t[0])
        out[method] = {
            **fields,
            "_validation": {
                "map_i2t": detail["i2t"],
                "map_t2i": detail["t2i"],
                "chance_map": detail["chance"],
                "candidates": len(trials),
                "bits": bits,
                "seed": base.seed,
                "validation_fraction": VALIDATION_FRACTION,
                "split": split,
                "n_fit": len(run.eval_split.train),
                "n_validation": len(run.eval_split.query),
                # every candidate's validation MAPs, so a claim about any of them (the papers' own
                # values included) can be read from this committed file
                "trials": [{"fields": c, "i2t": d["i2t"], "t2i": d["t2i"]} for _, c, d in trials],
            },
        }
        print(f"==> {label} {method}: {json.dumps(fields)}", flush=True)
    return out


def choose_defaults(keys: list[str], methods: list[str], bits: int, threads: int) -> dict[str, dict]:
    """Score the stage-1 points at the CLI optimiser defaults on each dataset's first tuning split
    and return, per method, the hp point with the best mean validation MAP over the datasets."""
    scores: dict[str, dict[str, list[float]]] = {}
    for key in keys:
        split = split_record(key, 0 if PROTOCOLS[key]["kind"] == "folds" else None)
        base = tuning_config(key, bits, split, threads)
        run = prepare_run(base, progress=False)
        for method in methods:
            dataset = DATASETS[key]["dataset"]
            for cand in candidates(method, dataset, defaults_only=True):
                value, _, _ = _trial(key, method, cand, base, run)
                scores.setdefault(method, {}).setdefault(json.dumps(cand["hp"], sort_keys=True), []).append(value)
    best = {}
    for method, by_hp in scores.items():
        hp, values = max(by_hp.items(), key=lambda kv: np.mean(kv[1]))
        best[method] = {"hp": json.loads(hp), "mean_validation_map": float(np.mean(values))}
        print(f"==> default {method}: {hp} (mean validation MAP {np.mean(values):.4f} over {keys})", flush=True)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default=os.environ.get("CMHASH_TUNE_DATASETS", ",".join(DATASETS)))
    p.add_argument("--methods", default=os.environ.get("CMHASH_TUNE_METHODS", "bi_ncmh,dcmh,djsrh,cca_itq"))
    p.add_argument("--bits", type=int, default=int(os.environ.get("CMHASH_TUNE_BITS", 64)))
    p.add_argument("--fold", type=int, default=None, help="k-fold datasets: tune only this fold (default: every fold)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("CMHASH_TUNE_THREADS", 1)))
    p.add_argument("--defaults", action="store_true", help="only score the method defaults' candidates; write nothing")
    p.add_argument("--settings", type=Path, default=Path(os.environ.get("CMHASH_TUNE_SETTINGS", SETTINGS)))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    keys, methods = args.datasets.split(","), args.methods.split(",")
    if args.defaults:
        choose_defaults(keys, methods, args.bits, args.threads)
        return
    settings = json.loads(args.settings.read_text()) if args.settings.exists() else {}
    for key in keys:
        protocol = PROTOCOLS[key]
        log = settings.setdefault(key, {})
        log["_protocol"] = protocol
        folds: list[int | None] = [None]
        if protocol["kind"] == "folds":
            folds = list(range(protocol["folds"])) if args.fold is None else [args.fold]
        for fold in folds:
            for method in methods:  # written after each method, so an interrupted run keeps what it finished
                tuned = tune_split(key, split_record(key, fold), [method], args.bits, args.threads)
                (log if fold is None else log.setdefault(f"fold-{fold}", {})).update(tuned)
                args.settings.write_text(json.dumps(settings, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Levers past the tuned settings on the MIRFLICKR sample (issue 13), measured on validation only.

For every fold of the k-fold protocol (bench/tune.py PROTOCOLS), each lever trains one method
(Bi_NCMH by default) on 80% of THAT fold's training rows, with the fold's tuned settings from
bench/settings.json and one thing changed, and scores it on the other 20% of those rows
(`carve_validation`, the rows bench/tune.py tuned on): a fold's query rows are never looked at.
The table gives, per lever, the mean validation MAP over folds (whole ranking, ties by retrieval
order) in both directions and its difference to the baseline, with the per-fold values in the
results file.

Levers (--levers, comma list):
  baseline      the fold's tuned settings, as bench/quality.py trains them
  rerank-all    the baseline's model, every validation item ranked by the query's h . b
  minilm-tags   text input: the tags through MiniLM (the `minilm` extra) instead of a bag of words
  lite2         image features from EfficientNet-Lite2 (1,408-d) instead of Lite0 (1,280-d)
  epochs-x2     twice the tuned epochs
  wider         hidden layer 4096 wide instead of 2048
  deeper        two hidden layers of 2048
  dropout       dropout 0.2 after the hidden layers
  tencrop       image augmentation: the image head trains on ten-crop views of each image (the
                four corner and the centre 224 crops of the 256-pixel resize, each also mirrored;
                Lite0 features cached in bench/out), one view drawn per row and step; the
                validation items are encoded from the centre crop, as serving does
  finetune      the image backbone (EfficientNet-Lite0) trained with the heads on the pixels
                (`--finetune-backbone`, backbone learning rate 1e-5; about 80 minutes a run on
                2 CPU cores)

    .venv/bin/python bench/levers.py                        # every lever, 5 folds, 64 bits
    .venv/bin/python bench/levers.py --levers baseline,rerank-all --folds 0
    .venv/bin/python bench/levers.py --levers baseline,finetune --folds 0 --publish-folds --threads 2 --name levers_finetune

Writes levers.json with bench/flags.write_result (docs/results/ from a clean tree) and prints a
markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flags import env, write_result
from quality import DEFAULT_SETTINGS, _public, load_settings
from tune import PROTOCOLS, split_record, tuning_config

from model.training.config import TrainConfig
from model.training.evaluate import evaluate_codes, split_codes
from model.training.metrics import map_variant_name
from model.training.rerank import evaluate_rerank, query_representations, rerank_variant_name
from model.training.train import PreparedRun, prepare_run, train_model

KEY = "mirflickr"
# lever -> (TrainConfig fields changed from the tuned entry, or a function of the entry)
LEVERS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "rerank-all": {},  # same model as baseline, re-ranked evaluation
    "minilm-tags": {"text_encoder": "minilm"},
    "lite2": {"image_backbone": "efficientnet-lite2"},
    "epochs-x2": {"epochs": "x2"},
    "wider": {"hidden": [4096]},
    "deeper": {"hidden": [2048, 2048]},
    "dropout": {"dropout": 0.2},
    "tencrop": {},  # trained by train_tencrop
    "finetune": {"finetune_backbone": True},
}
VIEWS_DIR = Path(__file__).resolve().parent / "out" / "tencrop"  # cached ten-crop view features
# the TrainConfig fields prepare_run reads: levers that change one need their own PreparedRun
DATA_FIELDS = ("text_encoder", "image_backbone")


def lever_config(base: TrainConfig, entry: dict, method: str, lever: str) -> TrainConfig:
    """The tuned entry on top of the fold's validation config, with `lever`'s change."""
    fields = {**base.model_dump(), **_public(entry), "method": method}
    for name, value in LEVERS[lever].items():
        fields[name] = fields[name] * 2 if value == "x2" else value
    return TrainConfig(**fields)


def tencrop_views(paths: list[Path], backbone_name: str) -> torch.Tensor:
    """10 x n x d backbone features of each image's ten crops (corners and centre of the resize,
    each also mirrored; view 8 is the centre crop the cached features hold), cached on disk."""
    from PIL import Image

    from model.runtime.image import load_image
    from model.training.backbones import build_backbone, preprocess_for

    key = hashlib.sha256(json.dumps([backbone_name, [str(p) for p in paths]]).encode()).hexdigest()[:16]
    cache = VIEWS_DIR / f"{backbone_name}-{key}.npy"
    if cache.exists():
        return torch.from_numpy(np.load(cache))
    pre = preprocess_for(backbone_name)
    assert pre.resize is not None  # resolved by ImagePreprocess
    backbone = build_backbone(backbone_name).eval().requires_grad_(False)
    out = []
    for path in paths:
        img = load_image(path)
        scale = pre.resize / min(img.size)
        img = img.resize(
            (max(pre.resize, round(img.size[0] * scale)), max(pre.resize, round(img.size[1] * scale))),
            Image.Resampling.BILINEAR,
        )
        crops = []
        for fx, fy in ((0, 0), (1, 0), (0, 1), (1, 1), (0.5, 0.5)):
            left, top = round((img.size[0] - pre.size) * fx), round((img.size[1] - pre.size) * fy)
            crop = img.crop((left, top, left + pre.size, top + pre.size))
            for view in (crop, crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)):
                crops.append(np.asarray(view, dtype=np.float32).transpose(2, 0, 1) / 255 * 2 - 1)
        with torch.inference_mode():
            out.append(backbone(torch.from_numpy(np.stack(crops))).numpy())
    views = np.ascontiguousarray(np.stack(out, axis=1))
    VIEWS_DIR.mkdir(parents=True, exist_ok=True)
    np.save(cache, views)
    return torch.from_numpy(views)


class RandomView:
    """Image rows for `train_model` (an `ImageRows`): each row indexed gets one of its views,
    drawn at random."""

    def __init__(self, views: torch.Tensor, generator: torch.Generator) -> None:
        self.views, self.generator = views, generator

    def __len__(self) -> int:
        return self.views.shape[1]

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        pick = torch.randint(len(self.views), (len(rows),), generator=self.generator)
        return self.views[pick, rows]


def train_tencrop(cfg: TrainConfig, run: PreparedRun) -> Any:
    """`train_model` with the image head reading a random ten-crop view of each row per step."""
    assert run.dataset.image_paths is not None and not cfg.finetune_backbone
    views = tencrop_views(list(run.dataset.image_paths), cfg.image_backbone)
    if not torch.allclose(views[8], run.inputs.image, atol=1e-4):
        raise SystemExit("error: the centre view does not reproduce the cached features")
    rows = torch.from_numpy(run.eval_split.train)
    # its own generator, so the batch order stays the baseline's
    sampler = RandomView(views[:, rows], torch.Generator().manual_seed(cfg.seed))
    return train_model(cfg, run, progress=False, image_rows=sampler)[0]


def score(cfg: TrainConfig, run: PreparedRun, rerank: bool, tencrop: bool = False) -> dict[str, Any]:
    """Validation MAPs of one trained model: {"plain": {i2t, t2i}, "chance": MAP} and, with
    `rerank`, also {"rerank-all": {i2t, t2i}} from the same model."""
    model = train_tencrop(cfg, run) if tencrop else train_model(cfg, run, progress=False)[0]
    split = run.eval_split
    codes = split_codes(model, run.inputs, split.query, split.retrieval)
    plain = evaluate_codes(codes)
    out: dict[str, Any] = {"plain": {d: plain[d]["map"] for d in ("i2t", "t2i")}, "chance": plain["chance_map"]}
    if rerank:
        reranked = evaluate_rerank({**codes, **query_representations(model, run.inputs, split.query)}, None)
        out["rerank-all"] = {d: reranked[d]["map"] for d in ("i2t", "t2i")}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levers", default=env("levers", ",".join(LEVERS)), help="comma list of levers")
    p.add_argument("--method", default=env("method", "bi_ncmh"))
    p.add_argument("--bits", type=int, default=int(env("bits", "64") or 64))
    p.add_argument("--folds", default=env("folds", None), help="comma list of folds (default: every fold)")
    p.add_argument("--threads", type=int, default=int(env("threads", "1") or 1))
    p.add_argument("--settings", type=Path, default=Path(env("settings", str(DEFAULT_SETTINGS)) or DEFAULT_SETTINGS))
    p.add_argument("--name", default=env("name", "levers"), help="results file name (a later lever set: its own name)")
    p.add_argument(
        "--publish-folds",
        action="store_true",
        help="publish (docs/results/, from a clean tree) a run of only the --folds given, e.g. a lever "
        "too slow for every fold; the file lists the folds",
    )
    args = p.parse_args()
    levers = [lever.strip() for lever in args.levers.split(",") if lever.strip()]
    unknown = set(levers) - set(LEVERS)
    if unknown:
        p.error(f"unknown levers {sorted(unknown)}; expected some of {list(LEVERS)}")
    torch.set_num_threads(args.threads)
    settings = load_settings(args.settings)[KEY]
    protocol = PROTOCOLS[KEY]
    folds = [int(f) for f in args.folds.split(",")] if args.folds else list(range(protocol["folds"]))
    per_fold: dict[str, list[dict[str, float]]] = {lever: [] for lever in levers}
    for fold in folds:
        entry = settings[f"fold-{fold}"][args.method]
        base = tuning_config(KEY, args.bits, split_record(KEY, fold), args.threads)
        prepared: dict[tuple, PreparedRun] = {}
        for lever in levers:
            if lever == "rerank-all":
                continue  # scored with the baseline's model
            cfg = lever_config(base, entry, args.method, lever)
            data_key = tuple(getattr(cfg, f) for f in DATA_FIELDS)
            if data_key not in prepared:
                prepared[data_key] = prepare_run(cfg, progress=False)
            start = time.perf_counter()
            result = score(
                cfg,
                prepared[data_key],
                rerank=lever == "baseline" and "rerank-all" in levers,
                tencrop=lever == "tencrop",
            )
            per_fold[lever].append({"fold": fold, **result["plain"], "chance": result["chance"]})
            if "rerank-all" in result:
                per_fold["rerank-all"].append({"fold": fold, **result["rerank-all"]})
            print(
                f"fold {fold} {lever}: val MAP I->T {result['plain']['i2t']:.4f} T->I {result['plain']['t2i']:.4f}"
                + (
                    f" (re-ranked: {result['rerank-all']['i2t']:.4f} / {result['rerank-all']['t2i']:.4f})"
                    if "rerank-all" in result
                    else ""
                )
                + f"  {time.perf_counter() - start:.0f} s",
                flush=True,
            )
    rows = []
    for lever in levers:
        mean = {d: float(np.mean([r[d] for r in per_fold[lever]])) for d in ("i2t", "t2i")}
        rows.append({"lever": lever, "mean": mean, "per_fold": per_fold[lever]})
    base_mean = next((r["mean"] for r in rows if r["lever"] == "baseline"), None)
    print(f"\nvalidation MAP (mean over folds {folds}), {args.method}, {args.bits} bits\n")
    print("| lever | I->T | T->I | vs baseline I->T / T->I |\n|---|---|---|---|")
    for r in rows:
        diff = (
            f"{r['mean']['i2t'] - base_mean['i2t']:+.4f} / {r['mean']['t2i'] - base_mean['t2i']:+.4f}"
            if base_mean
            else ""
        )
        print(f"| {r['lever']} | {r['mean']['i2t']:.4f} | {r['mean']['t2i']:.4f} | {diff} |")
    path = write_result(
        args.name,
        {
            "dataset": KEY,
            "protocol": protocol,
            "evaluated_on": "validation: 20% of each fold's training rows (the rows bench/tune.py tuned on)",
            "method": args.method,
            "bits": args.bits,
            "folds": folds,
            "variants": {"map": map_variant_name(None), "rerank-all": rerank_variant_name(None, None)},
            "levers": {lever: LEVERS[lever] for lever in levers},
            "rows": rows,
        },
        # published (docs/results/ from a clean tree) when every fold ran, or the folds given were
        # asked to be, with the baseline beside the levers
        out_dir=None
        if (args.folds is None or args.publish_folds) and "baseline" in levers
        else Path(__file__).parent / "out",
    )
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()

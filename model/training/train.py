"""The shared training loop: every deep method trains through `fit_hasher`, CCA-ITQ through its
closed form; `train_run` does a whole run (data, split, training, evaluation, files)."""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from model.runtime.errors import UserError
from model.runtime.text import BagOfWords
from model.training.config import TrainConfig
from model.training.data import (
    CrossModalDataset,
    Split,
    carve_validation,
    load_dataset,
    resolve_split,
)
from model.training.data.base import make_folds
from model.training.encoders import CrossModalHasher, build_hasher
from model.training.inputs import ImageRows, PreparedInputs, prepare_inputs
from model.training.methods import build_method
from model.training.methods.base import Batch, HashMethod, TrainState
from model.training.methods.cca_itq import CcaItqParams, fit_cca_itq


@dataclass
class TrainHistory:
    """Per-epoch loss terms, wall time and the process's peak memory."""

    epochs: list[dict[str, float]] = field(default_factory=list)  # loss terms averaged per epoch
    seconds_per_epoch: list[float] = field(default_factory=list)  # wall time of each epoch
    peak_rss_mib: float = 0.0  # peak resident memory of the process

    def to_json(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "seconds_per_epoch": self.seconds_per_epoch, "peak_rss_mib": self.peak_rss_mib}


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch and numpy and make CPU kernels deterministic: same seed, same codes."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when torch sees a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but torch sees no CUDA GPU")
    return torch.device(name)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@torch.no_grad()
def encode_rows(model: CrossModalHasher, x: ImageRows, modality: str) -> torch.Tensor:
    """Continuous representations of all rows of `x` in eval mode and in batches: image
    features, or pixels (a PixelImages source) when a backbone is attached."""
    model.eval()
    device = next(model.parameters()).device
    fn = model.encode_image if modality == "image" else model.encode_text
    batch_size = 64 if modality == "image" and model.image_backbone is not None else 4096
    n = len(x)
    return torch.cat([fn(x[torch.arange(i, min(i + batch_size, n))].to(device)).cpu() for i in range(0, n, batch_size)])


def fit_hasher(
    model: CrossModalHasher,
    method: HashMethod,
    image: ImageRows,
    image_features: torch.Tensor,
    text: torch.Tensor,
    labels: torch.Tensor,
    cfg: TrainConfig,
    generator: torch.Generator,
    progress: bool = True,
) -> TrainHistory:
    """Train the hasher on the training rows with `method`'s loss.

    `image` is what the image encoder reads (features, or pixels when the backbone is
    fine-tuned, with its batch-norm statistics kept frozen); `image_features` are the original
    features some targets are computed from (DJSRH's F_I). Each epoch visits the training
    items in a seeded random order; after each step the batch's fresh representations are
    written to the banks the methods pair batches with.
    """
    device = next(model.parameters()).device
    n = len(image_features)
    state = TrainState(
        labels=labels.to(device),
        image_bank=encode_rows(model, image, "image").to(device),
        text_bank=encode_rows(model, text, "text").to(device),
    )
    method.start(state)
    groups = [{"params": [*model.image_head.parameters(), *model.text_head.parameters()], "lr": cfg.lr}]
    if model.image_backbone is not None:
        groups.append({"params": list(model.image_backbone.parameters()), "lr": cfg.backbone_lr})
    optimizer: torch.optim.Optimizer
    if cfg.optimizer == "adam":
        optimizer = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    history = TrainHistory()
    bar = tqdm(range(1, cfg.epochs + 1), desc=f"{method.name} {cfg.bits} bits", unit="epoch", disable=not progress)
    for epoch in bar:
        state.epoch = epoch
        model.train()
        if model.image_backbone is not None:
            model.image_backbone.eval()
        start = time.perf_counter()
        sums: dict[str, float] = {}
        order = torch.randperm(n, generator=generator)
        batches = [order[i : i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]
        if len(batches) > 1 and len(batches[-1]) < 2:
            batches[-2] = torch.cat(batches[-2:])
            batches.pop()
        for idx in batches:
            x_txt, f_img = text[idx].to(device), image_features[idx].to(device)
            idx_dev = idx.to(device)
            h_img, h_txt = model.encode_image(image[idx].to(device)), model.encode_text(x_txt)
            state.update(idx_dev, h_img, h_txt)
            batch = Batch(index=idx_dev, labels=state.labels[idx_dev], image_features=f_img, text_features=x_txt)
            terms = method.loss(h_img, h_txt, batch, state)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()  # type: ignore[no-untyped-call]  # unannotated in torch
            optimizer.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(idx)
        method.end_epoch(state)
        history.seconds_per_epoch.append(time.perf_counter() - start)
        history.epochs.append({k: v / n for k, v in sums.items()})
        bar.set_postfix(loss=f"{history.epochs[-1]['loss']:.4f}")
    history.peak_rss_mib = _peak_rss_mib()
    return history


def fit_cca_itq_hasher(
    model: CrossModalHasher, image: torch.Tensor, text: torch.Tensor, cfg: TrainConfig
) -> TrainHistory:
    """Fit CCA-ITQ in closed form and load its affine maps into linear hash heads."""
    start = time.perf_counter()
    params = CcaItqParams(**cfg.hp)
    fitted = fit_cca_itq(image.double().numpy(), text.double().numpy(), cfg.bits, seed=cfg.seed, **params.model_dump())
    for head, weight, bias in (
        (model.image_head, fitted.image_weight, fitted.image_bias),
        (model.text_head, fitted.text_weight, fitted.text_bias),
    ):
        head.standardize.mean.zero_()
        head.standardize.std.fill_(1.0)
        linear = head.mlp[-1]
        assert isinstance(linear, torch.nn.Linear)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(weight.T.copy()).float())
            linear.bias.copy_(torch.from_numpy(bias.copy()).float())
    return TrainHistory(seconds_per_epoch=[time.perf_counter() - start], peak_rss_mib=_peak_rss_mib())


@dataclass
class PreparedRun:
    """A run's dataset, split (training rows and the evaluation query/retrieval rows) and inputs."""

    dataset: CrossModalDataset
    split: Split  # the saved query/retrieval/train split
    eval_split: Split  # what metrics are computed on: the split, or validation vs fit rows
    inputs: PreparedInputs


def check_hyper_parameters(cfg: TrainConfig) -> None:
    """Validate `cfg.hp` against the method's parameters before any slow work starts."""
    if cfg.method == "cca_itq":
        CcaItqParams(**cfg.hp)
    else:
        build_method(cfg.method, cfg.hp)


def evaluation_split(ds: CrossModalDataset, cfg: TrainConfig) -> Split:
    """The run's query/retrieval/train split: fold `cfg.fold` of `make_folds` when k-fold
    evaluation is asked for, else the dataset's preset split or a seeded random split."""
    if cfg.folds is None:
        return resolve_split(ds, cfg.query_size, cfg.train_size, cfg.seed)
    if ds.preset_split is not None:
        raise UserError(
            f"{ds.name} has its own query/retrieval split (the published protocol); "
            "--folds is for datasets without one (the MIRFLICKR sample, manifests without a split)"
        )
    if cfg.query_size is not None or cfg.train_size is not None:
        raise UserError("--folds sets the query and training sets itself: drop --query-size / --train-size")
    if cfg.fold is None:
        raise UserError("a k-fold config needs a fold index to prepare one run (run.train_run runs every fold)")
    return make_folds(len(ds), cfg.folds, cfg.seed)[cfg.fold]


def prepare_run(cfg: TrainConfig, progress: bool = True, bag_of_words: BagOfWords | None = None) -> PreparedRun:
    """Load the dataset, draw (or take) the split and compute the inputs (raw texts through
    `bag_of_words` when given: a trained run's own vocabulary, instead of fitting one anew)."""
    check_hyper_parameters(cfg)
    ds = load_dataset(cfg.dataset, cfg.data_path(), text_features=cfg.text_features)
    split = evaluation_split(ds, cfg)
    eval_split = split
    if cfg.validation_fraction > 0:
        fit_rows, val_rows = carve_validation(split.train, cfg.validation_fraction, cfg.seed)
        eval_split = Split(query=val_rows, retrieval=fit_rows, train=fit_rows, seed=cfg.seed)
    inputs = prepare_inputs(ds, eval_split.train, cfg, progress=progress, bag_of_words=bag_of_words)
    return PreparedRun(ds, split, eval_split, inputs)


def build_model(cfg: TrainConfig, inputs: PreparedInputs) -> CrossModalHasher:
    """The hasher for these inputs: MLP heads for deep methods, linear heads for CCA-ITQ."""
    hidden = [] if cfg.method == "cca_itq" else cfg.hidden
    return build_hasher(inputs.image.shape[1], inputs.text.shape[1], cfg.bits, hidden, cfg.dropout)


def train_model(
    cfg: TrainConfig, run: PreparedRun, progress: bool = True, image_rows: ImageRows | None = None
) -> tuple[CrossModalHasher, TrainHistory]:
    """Build and train the hasher on the run's training rows. `image_rows`, when given, is what
    the image head reads for those rows (in their order) instead of their features, e.g. a
    source of augmented views; the features still fit the standardisation and the targets."""
    generator = seed_everything(cfg.seed)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    rows = torch.from_numpy(run.eval_split.train)
    image, text, labels = run.inputs.image[rows], run.inputs.text[rows], run.inputs.labels[rows]
    model = build_model(cfg, run.inputs)
    if cfg.method == "cca_itq":
        return model, fit_cca_itq_hasher(model, image, text, cfg)
    model.image_head.standardize.fit(image)
    model.text_head.standardize.fit(text)
    image_input: ImageRows = image if image_rows is None else image_rows
    if cfg.finetune_backbone:
        if image_rows is not None:
            raise ValueError("image_rows replaces the features; a fine-tuned backbone reads the pixels")
        if run.inputs.pixels is None:
            raise UserError("--finetune-backbone needs image files; this dataset gives image feature vectors")
        from model.training.backbones import build_backbone

        model.image_backbone = build_backbone(cfg.image_backbone)
        image_input = run.inputs.pixels.subset(run.eval_split.train)
    model.to(resolve_device(cfg.device))
    method = build_method(cfg.method, cfg.hp)
    history = fit_hasher(model, method, image_input, image, text, labels, cfg, generator, progress)
    return model.cpu(), history


def save_checkpoint(path: Path, model: CrossModalHasher, cfg: TrainConfig, run: PreparedRun) -> None:
    """Everything needed to rebuild the encoders: weights, head shapes, config, vocabulary."""
    bow = run.inputs.bag_of_words
    torch.save(
        {
            "state_dict": model.state_dict(),
            "heads": model.head_configs(),
            "config": json.loads(cfg.model_dump_json()),
            "bag_of_words": None if bow is None else bow.to_json(),
            "image_from_pixels": run.inputs.pixels is not None,
            "image_backbone": cfg.image_backbone if model.image_backbone is not None else None,
        },
        path,
    )


def load_checkpoint(path: Path) -> tuple[CrossModalHasher, TrainConfig, dict[str, Any]]:
    """Rebuild the hasher and its config from `save_checkpoint`'s file."""
    from model.training.encoders import CrossModalHasher, HashHead, HeadConfig

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    heads = ckpt["heads"]
    model = CrossModalHasher(HashHead(HeadConfig(**heads["image"])), HashHead(HeadConfig(**heads["text"])))
    if ckpt.get("image_backbone"):
        from model.training.backbones import build_backbone

        model.image_backbone = build_backbone(ckpt["image_backbone"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, TrainConfig(**ckpt["config"]), ckpt


def checkpoint_bag_of_words(ckpt: dict[str, Any]) -> BagOfWords | None:
    """The vocabulary a run was trained with (None when its text input is not a bag of words):
    re-evaluating with it, rather than fitting one from the config, reads the texts as training
    did even when the vocabulary options' defaults have changed since."""
    saved = ckpt.get("bag_of_words")
    return None if saved is None else BagOfWords.from_json(saved)

"""Training configuration: one pydantic model, filled from CLI flags or CMHASH_* variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from model.runtime.choices import Device
from model.runtime.errors import DataError

REPO_ROOT = Path(__file__).resolve().parents[2]
DATASET_DIRS = {"wikipedia": "wikipedia", "mirflickr": "mirflickr25k"}

# The enumerated training choices, named once: the CLI lists them, the registries check them.
DatasetName = Literal["wikipedia", "mirflickr", "manifest"]
MethodName = Literal["bi_ncmh", "dcmh", "djsrh", "cca_itq"]
OptimizerName = Literal["adam", "sgd"]
TextFeatures = Literal["lda", "tfidf", "raw"]  # raw: the articles, read by --text-encoder
TextEncoderName = Literal["bow", "minilm"]
TextWeighting = Literal["binary", "tfidf"]
BackboneName = Literal["efficientnet-lite0", "efficientnet-lite2"]


def shared_data_root() -> Path:
    """Where real datasets live: $CMHASH_DATA_ROOT, else ../shared/data beside the repo."""
    return Path(os.environ.get("CMHASH_DATA_ROOT", REPO_ROOT.parent / "shared" / "data"))


def default_cache_dir() -> Path:
    """Feature cache: $CMHASH_CACHE_DIR, else ~/.cache/cmhash."""
    return Path(os.environ.get("CMHASH_CACHE_DIR", Path.home() / ".cache" / "cmhash"))


class TrainConfig(BaseModel):
    """Everything a training run depends on; saved beside the checkpoint."""

    model_config = ConfigDict(extra="forbid")

    dataset: DatasetName  # dataset loader
    data: Path | None = None  # dataset path; default: the dataset's folder under shared_data_root()
    out: Path  # run directory to write
    method: MethodName = "bi_ncmh"  # hashing method
    bits: int = Field(64, ge=8, le=512)  # code length L (multiple of 8)
    seed: int = 0  # seed of the split, initialisation and batch order
    epochs: int = Field(60, ge=1)  # training epochs (ignored by cca_itq)
    batch_size: int = Field(128, ge=2)  # mini-batch size
    optimizer: OptimizerName = "adam"  # optimiser of the hash heads
    lr: float = Field(1e-3, gt=0)  # learning rate of the hash heads
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD momentum
    weight_decay: float = Field(0.0, ge=0)  # L2 weight decay
    hidden: list[int] = Field(default_factory=lambda: [2048])  # hidden widths of both hash heads
    dropout: float = Field(0.0, ge=0, lt=1)  # dropout after hidden layers
    hp: dict[str, float] = Field(default_factory=dict)  # method hyper-parameter overrides (alpha=..)
    text_features: TextFeatures = "lda"  # Wikipedia text: LDA / tf-idf vectors, or raw articles (see text_encoder)
    text_encoder: TextEncoderName = "bow"  # bag of words, or MiniLM sentence embeddings
    min_word_count: int = Field(1, ge=1)  # vocabulary cut-off when a BoW is built from raw texts
    max_word_share: float = Field(1.0, gt=0, le=1)  # raw-text BoW: drop words in more than this share of texts
    max_words: int = Field(5000, ge=1)  # raw-text BoW: keep only this many most frequent words
    text_weighting: TextWeighting = "binary"  # raw-text BoW: word presence, or tf-idf (counts x idf, unit rows)
    image_backbone: BackboneName = "efficientnet-lite0"  # pixels only
    finetune_backbone: bool = False  # also train the image backbone (slow on CPU)
    backbone_lr: float = Field(1e-5, gt=0)  # learning rate of the backbone when fine-tuned
    query_size: int | None = None  # queries drawn by the seeded split; None: dataset default
    train_size: int | None = None  # training items drawn from retrieval; None: dataset default
    validation_fraction: float = Field(0.0, ge=0, lt=1)  # >0: evaluate on a validation part of train
    folds: int | None = Field(None, ge=2)  # k-fold evaluation: every item a query exactly once; None: one split
    fold: int | None = Field(None, ge=0)  # which fold this run is (set per fold by run.train_run); None: all / no folds
    cache_dir: Path = Field(default_factory=default_cache_dir)  # frozen-feature cache
    device: Device = "auto"  # torch device
    torch_threads: int | None = Field(
        None, ge=1, validation_alias=AliasChoices("torch_threads", "threads")
    )  # torch intra-op threads; None: torch's default (runs saved before 0.2 call it threads)

    @field_validator("bits")
    @classmethod
    def _bits_multiple_of_8(cls, v: int) -> int:
        if v % 8:
            raise ValueError("bits must be a multiple of 8 (codes are stored as packed bytes)")
        return v

    @field_validator("fold")
    @classmethod
    def _fold_within_folds(cls, v: int | None, info: ValidationInfo) -> int | None:
        folds = info.data.get("folds")
        if v is not None and (folds is None or v >= folds):
            raise ValueError(f"fold {v} needs folds > {v} (got folds={folds})")
        return v

    @model_validator(mode="after")
    def _minilm_reads_wikipedia_articles(self) -> TrainConfig:
        # MiniLM reads raw text; on Wikipedia that is "raw", never the LDA / tf-idf vectors
        if self.dataset == "wikipedia" and self.text_encoder == "minilm" and self.text_features != "raw":
            raise ValueError(
                f"--text-encoder minilm reads the Wikipedia articles: use --text-features raw "
                f"(got --text-features {self.text_features})"
            )
        return self

    def data_path(self) -> Path:
        """The dataset path, defaulting to the shared data folder."""
        if self.data is not None:
            return self.data
        if self.dataset == "manifest":
            raise DataError("--data is required for a manifest dataset")
        return shared_data_root() / DATASET_DIRS[self.dataset]

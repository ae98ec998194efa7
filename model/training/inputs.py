"""Turn a dataset into the tensors the hash heads see: image features (cached backbone
features or given vectors), text features (given vectors, a bag of words over the training
texts, or MiniLM embeddings) and labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from model.runtime.image import ImagePreprocess, load_for_model, to_array
from model.runtime.text import BagOfWords
from model.training.backbones import preprocess_for
from model.training.config import TrainConfig
from model.training.data import CrossModalDataset, DataError


def batch_tensor(images: Sequence[Image.Image], pre: ImagePreprocess) -> torch.Tensor:
    """B x 3 x size x size float32 batch of images through the runtime's `to_array`."""
    if not images:
        return torch.empty(0, 3, pre.size, pre.size)
    return torch.from_numpy(np.stack([to_array(img, pre) for img in images]))


class ImageRows(Protocol):
    """What the image head reads in training, indexed by row: feature vectors (a tensor), image
    files decoded on demand (`PixelImages`), or any other source of one input per row."""

    def __len__(self) -> int: ...

    def __getitem__(self, rows: torch.Tensor, /) -> torch.Tensor: ...


@dataclass
class PixelImages:
    """Image files decoded on demand into backbone inputs (for fine-tuning the backbone)."""

    paths: list[Path]  # image files, one per row
    preprocess: ImagePreprocess  # the backbone's decoding, resizing and scaling

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, rows: np.ndarray | torch.Tensor) -> PixelImages:
        """The images of `rows`, re-indexed from 0."""
        return PixelImages([self.paths[int(i)] for i in rows], self.preprocess)

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        if not len(rows):
            return torch.empty(0, 3, self.preprocess.size, self.preprocess.size)
        return torch.from_numpy(np.stack([load_for_model(self.paths[int(i)], self.preprocess) for i in rows]))


@dataclass
class PreparedInputs:
    """Model inputs for every item of a dataset (rows as in the dataset)."""

    image: torch.Tensor  # n x d_i float32 image features (backbone output or given vectors)
    text: torch.Tensor  # n x d_t float32 text features
    labels: torch.Tensor  # n x K float32 multi-hot
    bag_of_words: BagOfWords | None  # vocabulary that maps raw text to `text`, when there is one
    pixels: PixelImages | None = None  # the image files as backbone inputs, when there are any


def _vocabulary_settings(cfg: TrainConfig) -> list[str]:
    """The raw-text vocabulary options set away from their defaults, as command-line flags."""
    return [
        "--" + name.replace("_", "-")
        for name in ("min_word_count", "max_word_share", "max_words", "text_weighting")
        if getattr(cfg, name) != TrainConfig.model_fields[name].default
    ]


def prepare_inputs(
    ds: CrossModalDataset,
    train_rows: np.ndarray,
    cfg: TrainConfig,
    progress: bool = True,
    bag_of_words: BagOfWords | None = None,
) -> PreparedInputs:
    """Compute (or read from the cache) the inputs of every item; a BoW vocabulary is fitted on
    the training rows only, so query texts never shape it, unless `bag_of_words` (a trained
    run's) is given."""
    if ds.image_features is not None:
        image = np.asarray(ds.image_features, dtype=np.float32)
    else:
        from model.training.features import image_features

        assert ds.image_paths is not None  # CrossModalDataset holds image features or image paths
        image = image_features(ds.image_paths, cfg.image_backbone, cfg.cache_dir, progress=progress)
    bow: BagOfWords | None = None
    vocabulary_settings = _vocabulary_settings(cfg)
    if vocabulary_settings and not (cfg.text_encoder == "bow" and ds.text_features is None):
        raise DataError(
            f"{', '.join(vocabulary_settings)} shape a bag of words built from raw texts; "
            f"{ds.name} with --text-encoder {cfg.text_encoder} builds none"
            + (" (its text input is given vectors)" if ds.text_features is not None else "")
        )
    if cfg.text_encoder == "minilm":
        if ds.texts is None:
            raise DataError(f"{ds.name}: --text-encoder minilm needs raw texts, this dataset has only text features")
        from model.training.features import TEXT_CHUNK_WORDS, text_embeddings

        # Wikipedia's articles are mean-pooled over ~200-word chunks. Other texts keep MiniLM's own
        # 256-token cut, which is what the exported text graph does at serving time.
        chunks = TEXT_CHUNK_WORDS if ds.name == "wikipedia" else None
        text = text_embeddings(ds.texts, cfg.cache_dir, progress=progress, chunk_words=chunks)
    elif ds.text_features is not None:
        text = np.asarray(ds.text_features, dtype=np.float32)
        if ds.vocabulary is not None:
            bow = BagOfWords(vocabulary=list(ds.vocabulary), binary=True)
    else:
        assert ds.texts is not None
        bow = bag_of_words
        if bow is None:
            bow = BagOfWords.fit(
                [ds.texts[i] for i in train_rows],
                min_count=cfg.min_word_count,
                max_size=cfg.max_words,
                max_share=cfg.max_word_share,
                tfidf=cfg.text_weighting == "tfidf",
            )
        if len(bow) == 0:
            raise DataError(f"{ds.name}: the training texts produced an empty vocabulary")
        text = bow.transform(ds.texts)
    return PreparedInputs(
        image=torch.from_numpy(np.ascontiguousarray(image)),
        text=torch.from_numpy(np.ascontiguousarray(text, dtype=np.float32)),
        labels=torch.from_numpy(np.asarray(ds.labels, dtype=np.float32)),
        bag_of_words=bow,
        pixels=None
        if ds.image_paths is None
        else PixelImages(list(ds.image_paths), preprocess_for(cfg.image_backbone)),
    )

"""The enumerated choices every layer shares, defined once."""

from __future__ import annotations

from typing import Literal, get_args

Device = Literal["auto", "cpu", "cuda"]  # where the encoder (or training) runs; auto: CUDA when present
Modality = Literal["image", "text"]  # what a query or a gallery item is

DEVICES: tuple[str, ...] = get_args(Device)
MODALITIES: tuple[str, ...] = get_args(Modality)

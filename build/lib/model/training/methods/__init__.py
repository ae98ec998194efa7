"""Method registry: one small file per method, all trained by `model.training.train`."""

from __future__ import annotations

from typing import get_args

from model.training.config import MethodName
from model.training.methods.base import HashMethod, MethodParams
from model.training.methods.bi_ncmh import BiNcmh
from model.training.methods.dcmh import Dcmh
from model.training.methods.djsrh import Djsrh

DEEP_METHODS: dict[str, type[HashMethod]] = {m.name: m for m in (BiNcmh, Dcmh, Djsrh)}
METHOD_NAMES: tuple[str, ...] = (*DEEP_METHODS, "cca_itq")
assert set(METHOD_NAMES) == set(get_args(MethodName)), "the registry and MethodName must list the same methods"


def build_method(name: str, overrides: dict[str, float] | None = None) -> HashMethod:
    """Instantiate a deep method with its paper defaults, overridden by `overrides`."""
    if name not in DEEP_METHODS:
        raise ValueError(f"unknown deep method {name!r}; choose from {sorted(DEEP_METHODS)}")
    cls = DEEP_METHODS[name]
    return cls(cls.Params(**(overrides or {})))


__all__ = ["DEEP_METHODS", "METHOD_NAMES", "HashMethod", "MethodParams", "build_method"]

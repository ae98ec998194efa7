"""A runtime install that mixes the CPU and GPU builds is refused, and a CUDA provider that did
not load is refused for device "cuda" (ONNX Runtime itself only logs it and runs on the CPU)."""

from __future__ import annotations

import logging

import pytest

from model.runtime import installs
from model.runtime.encoder import CPU_PROVIDER, CUDA_PROVIDER, check_providers
from model.runtime.errors import UserError


@pytest.fixture(autouse=True)
def fresh_cache() -> None:
    installs.check_exclusive_installs.cache_clear()


def test_mixed_cpu_and_gpu_builds_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(installs, "installed", lambda dist: dist in {"onnxruntime", "onnxruntime-gpu"})
    with pytest.raises(UserError, match=r"both onnxruntime and onnxruntime-gpu.*cmhash\[cpu\] or cmhash\[gpu\]"):
        installs.check_exclusive_installs("onnxruntime")
    installs.check_exclusive_installs("faiss")  # only one faiss build here: fine


def test_one_build_is_fine() -> None:
    installs.check_exclusive_installs("onnxruntime")  # this venv has the CPU build alone
    assert installs.installed("onnxruntime") and not installs.installed("onnxruntime-gpu")


def test_a_cuda_provider_that_fell_back_is_refused_for_cuda_and_logged_for_auto(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fell_back = [[CPU_PROVIDER], [CPU_PROVIDER]]
    with pytest.raises(UserError, match="CUDA provider of onnxruntime could not be loaded"):
        check_providers("cuda", [CUDA_PROVIDER, CPU_PROVIDER], fell_back)
    with caplog.at_level(logging.WARNING, logger="cmhash.runtime"):
        check_providers("auto", [CUDA_PROVIDER, CPU_PROVIDER], fell_back)
    assert "running on the CPU" in caplog.text
    check_providers("cuda", [CUDA_PROVIDER, CPU_PROVIDER], [[CUDA_PROVIDER, CPU_PROVIDER]] * 2)  # loaded: fine
    check_providers("cpu", [CPU_PROVIDER], fell_back)

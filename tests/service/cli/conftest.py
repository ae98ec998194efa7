"""The CLI tests choose their own CMHASH_* variables (each test module clears the caller's and
sets what it tests), so the service tests' per-test clearing does not apply here."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def no_cmhash_env() -> None:
    """Overrides tests/service/conftest.py's fixture of the same name: CLI tests manage CMHASH_*."""

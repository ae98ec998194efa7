"""Errors of the code stores that are the caller's doing, not a bug."""

from __future__ import annotations

from model.runtime.errors import UserError


class DuplicateIdError(UserError, ValueError):
    """An add named an id twice, or one the store already holds; nothing was added. (Also a
    ValueError, which is what the stores raised for it before.)"""

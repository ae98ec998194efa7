"""The one base error for what a user did wrong, shared by every layer."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a data file, a flag, a model directory, an image, a gallery of
    another model. The CLI prints its message on one line and exits 2; the service answers it
    with a 4xx. Anything else is a bug and is left to raise with its traceback."""


class DataError(UserError):
    """An input file (a dataset, a manifest, a listing) that is missing, unreadable or
    inconsistent; the message names the file and, where it can, the line."""

"""`python -m service.cli` is `cmhash`."""

from service.cli import app

app()

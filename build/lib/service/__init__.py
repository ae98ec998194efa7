"""cmhash HTTP service: cross-modal search, encoding and gallery management over FastAPI."""

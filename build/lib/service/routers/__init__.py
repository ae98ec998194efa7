"""One router per resource: search, encode, gallery, health."""

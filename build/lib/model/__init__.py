"""cmhash model library: encoders, similarity targets, losses, methods, training and metrics."""

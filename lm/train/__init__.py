"""Training: optimizer, pure train step, checkpoints, metrics and the loop."""

"""Shared Transformer pieces used by every model family."""

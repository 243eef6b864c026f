"""Corpora, tokenizers and the grain input pipeline."""

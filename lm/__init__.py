"""lm: a JAX/Flax research codebase for language models."""

__version__ = "0.1.0"

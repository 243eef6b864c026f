"""Normalisation layers with logical axis names on their parameters.

LayerNorm (Ba et al. 2016) centres and scales; RMSNorm (Zhang & Sennrich 2019) only
rescales by the root mean square, which is cheaper and what LLaMA-style models use.
"""

import flax.linen as nn

from lm.layers import init

NORMS = ("layernorm", "rmsnorm")


def layer_norm(name: str | None = None, use_bias: bool = True) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-5, use_bias=use_bias, name=name,
                      scale_init=init.ones(("embed",)), bias_init=init.zeros(("embed",)))


def rms_norm(name: str | None = None) -> nn.RMSNorm:
  return nn.RMSNorm(epsilon=1e-6, name=name, scale_init=init.ones(("embed",)))


def make_norm(kind: str, name: str | None = None, use_bias: bool = True) -> nn.Module:
  if kind == "layernorm":
    return layer_norm(name, use_bias)
  if kind == "rmsnorm":
    return rms_norm(name)
  raise ValueError(f"norm {kind!r}; known: {NORMS}")

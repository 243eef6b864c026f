"""Normalisation layers with logical axis names on their parameters."""

import flax.linen as nn

from lm.layers import init


def layer_norm(name: str | None = None, use_bias: bool = True) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-5, use_bias=use_bias, name=name,
                      scale_init=init.ones(("embed",)), bias_init=init.zeros(("embed",)))

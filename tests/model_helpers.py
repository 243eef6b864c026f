"""Shared test helpers for model-level tests."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def random_params(model, seed, scale=0.3):
  """Random O(scale) parameters (LayerNorm scales around 1), so the model is far from uniform.

  Shapes come from `eval_shape(model.init)`: no compile, no dependence on the init values.
  """
  shapes = jax.eval_shape(lambda: nn.meta.unbox(model.init(
      jax.random.key(0), jnp.zeros((1, model.config.max_len), jnp.int32))["params"]))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    x = scale * rng.standard_normal(leaf.shape)
    if jax.tree_util.keystr(path).endswith("['scale']"):
      x = x + 1.0
    return jnp.asarray(x, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)

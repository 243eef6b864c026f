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


def traced_matmul_flops(jaxpr) -> int:
  """2 x output size x contracted size for every dot_general of a traced program, nested
  jaxprs included and scan bodies counted once per trip: an independent count of the
  matmul FLOPs a model really does."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      out = eqn.outvars[0].aval.shape
      total += 2 * int(np.prod(out)) * int(np.prod([lhs[d] for d in lhs_contract]))
    trips = eqn.params["length"] if eqn.primitive.name == "scan" else 1
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      total += trips * traced_matmul_flops(sub)
  return total

"""Polyak/EMA averaging of the parameters, as an optax transformation.

Chained last in the optimizer, it sees the final updates and the current params,
so it can track `ema = d * ema + (1 - d) * (params + updates)` inside the optimizer
state: checkpointed, sharded and restored like any other optimizer state, with no
branch in the train step. The decay warms up as min(d, (1 + t) / (10 + t)) so early
averages are not dominated by the random initialisation.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class ParamEmaState(NamedTuple):
  count: jax.Array
  ema: optax.Params


def param_ema(decay: float) -> optax.GradientTransformation:

  def init_fn(params):
    return ParamEmaState(count=jnp.zeros((), jnp.int32), ema=jax.tree.map(jnp.copy, params))

  def update_fn(updates, state, params):
    t = state.count.astype(jnp.float32)
    d = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
    new_params = optax.apply_updates(params, updates)
    ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state.ema, new_params)
    return updates, ParamEmaState(count=state.count + 1, ema=ema)

  return optax.GradientTransformation(init_fn, update_fn)


def find_ema(opt_state):
  """The averaged params inside an optimizer state, or None if there is no param_ema."""
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, ParamEmaState))
           if isinstance(s, ParamEmaState)]
  return found[0].ema if found else None

"""The pure train step, and a scanned version that runs several steps per call.

`train_step` knows nothing of models or objectives: it differentiates `loss_fn`
and applies the optimizer. Features enter by composing loss functions and optax
transformations, never as flags here.
"""

import functools

import jax
import optax

from lm.train.state import TrainState


def train_step(state: TrainState, batch, base_rng, *, loss_fn, tx: optax.GradientTransformation):
  rng = jax.random.fold_in(base_rng, state.step)
  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, grad_norm=optax.global_norm(grads))
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_multi_step(loss_fn, tx, state_shardings=None):
  """jit(scan(train_step)) over a stack of K batches; the state buffers are donated.

  Small models are dispatch-bound on CPU: K steps per call amortise the launch.
  Returns per-step metrics stacked along a leading K axis. `state_shardings` pins
  the new state to the layout of the old one (lm/train/layout.py).
  """
  step = functools.partial(train_step, loss_fn=loss_fn, tx=tx)

  def multi_step(state, batches_K, base_rng):
    return jax.lax.scan(lambda s, b: step(s, b, base_rng), state, batches_K)

  out_shardings = None if state_shardings is None else (state_shardings, None)
  return jax.jit(multi_step, donate_argnums=(0,), out_shardings=out_shardings)


def make_eval_step(loss_fn, weights: dict | None = None):
  """Per-metric (weighted sum, weight) on one batch; padding has weight 0.

  `weights` maps a metric to the count it is averaged over (default `num_tokens`);
  counts themselves are not reported.
  """
  weights = dict(weights or {})

  @jax.jit
  def eval_step(params, batch):
    _, metrics = loss_fn(params, batch, jax.random.key(0), deterministic=True)
    counts = set(weights.values()) | {"num_tokens"}
    out = {}
    for name, value in metrics.items():
      if name not in counts:
        weight = metrics[weights.get(name, "num_tokens")]
        out[name] = (value * weight, weight)
    return out

  return eval_step

"""The pure train step, and a scanned version that runs several steps per call.

`train_step` knows nothing of models or objectives: it differentiates `loss_fn`
and applies the optimizer. Features enter by composing loss functions and optax
transformations, never as flags here.
"""

import functools

import jax
import jax.numpy as jnp
import optax

from lm.train.state import TrainState


def accumulated_grads(loss_fn, params, batch, rng, microbatches: int):
  """Mean loss gradient over `microbatches` equal slices of the batch, one at a time.

  Peak activation memory is that of one slice; for a loss that is a mean over equally
  sized slices the result equals the full-batch gradient.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if microbatches == 1:
    (_, metrics), grads = grad_fn(params, batch, rng)
    return grads, metrics
  # Microbatch i takes rows i, i+k, i+2k, ...: with the batch split over devices in
  # contiguous blocks, every device keeps working on every microbatch.
  split = jax.tree.map(lambda x: x.reshape(x.shape[0] // microbatches, microbatches,
                                           *x.shape[1:]).swapaxes(0, 1), batch)

  def one(grads_sum, i_and_micro):
    i, micro = i_and_micro
    (_, metrics), grads = grad_fn(params, micro, jax.random.fold_in(rng, i))
    return jax.tree.map(jnp.add, grads_sum, grads), metrics

  zeros = jax.tree.map(jnp.zeros_like, params)
  grads, metrics = jax.lax.scan(one, zeros, (jnp.arange(microbatches), split))
  grads = jax.tree.map(lambda g: g / microbatches, grads)
  return grads, jax.tree.map(lambda m: m.mean(axis=0), metrics)


def apply_grads(state: TrainState, grads, metrics: dict, tx: optax.GradientTransformation):
  """One optimizer update; adds the gradient norm to the metrics."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, grad_norm=optax.global_norm(grads))
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def train_step(state: TrainState, batch, base_rng, *, loss_fn, tx: optax.GradientTransformation,
               microbatches: int = 1):
  rng = jax.random.fold_in(base_rng, state.step)
  grads, metrics = accumulated_grads(loss_fn, state.params, batch, rng, microbatches)
  return apply_grads(state, grads, metrics, tx)


def make_multi_step(loss_fn, tx, state_shardings=None, microbatches: int = 1):
  """jit(scan(train_step)) over a stack of K batches; the state buffers are donated.

  Small models are dispatch-bound on CPU: K steps per call amortise the launch.
  Returns per-step metrics stacked along a leading K axis. `state_shardings` pins
  the new state to the layout of the old one (lm/train/layout.py).
  """
  step = functools.partial(train_step, loss_fn=loss_fn, tx=tx, microbatches=microbatches)

  def multi_step(state, batches_K, base_rng):
    return jax.lax.scan(lambda s, b: step(s, b, base_rng), state, batches_K)

  out_shardings = None if state_shardings is None else (state_shardings, None)
  return jax.jit(multi_step, donate_argnums=(0,), out_shardings=out_shardings)


DEFAULT_COUNT = "num_tokens"  # what a loss's metrics are means over, unless a task says


def count_names(weights: dict) -> set[str]:
  """The metrics that are counts (summed, never averaged), given metric -> count name."""
  return set(weights.values()) | {DEFAULT_COUNT}


def make_eval_step(loss_fn, weights: dict | None = None):
  """Per-metric (weighted sum, weight) on one batch; padding has weight 0.

  `weights` maps a metric to the count it is averaged over (default `num_tokens`);
  counts themselves are not reported.
  """
  weights = dict(weights or {})

  @jax.jit
  def eval_step(params, batch):
    _, metrics = loss_fn(params, batch, jax.random.key(0), deterministic=True)
    counts = count_names(weights)
    out = {}
    for name, value in metrics.items():
      if name not in counts:
        weight = metrics[weights.get(name, DEFAULT_COUNT)]
        out[name] = (value * weight, weight)
    return out

  return eval_step

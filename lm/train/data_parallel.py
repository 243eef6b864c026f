"""Pure data parallelism as one shard_map: local gradients, then a single all-reduce.

When every leaf of the train state is replicated and only the batch is split (the `dp`
rules, or any rules that leave the params whole), each device can run the ordinary step
on its rows and the devices need to meet once per step, to sum the gradients. Written
this way, the gradients and metrics cross devices as one flat vector and the optimizer
update runs on each device's copy. XLA's SPMD partitioner gets the same result from the
plain step (lm/train/step.py), but on CPU host devices this explicit form is ~15% faster
(`python -m experiments.bench_train`), which is what lets the default recipe use both
cores of a small machine (`sharding.cpu_devices`).

Losses are means over a count (tokens by default): each device's gradient and metrics
are weighted by its own count, so the result is the full batch's mean even when padding
leaves the devices different numbers of tokens. Dropout keys differ per device.
"""


import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jax.sharding import PartitionSpec

from lm import sharding
from lm.train.step import DEFAULT_COUNT, accumulated_grads, apply_grads, count_names


def replicated_batch_axes(layout, state_shardings) -> tuple[str, ...] | None:
  """The mesh axes the batch is split over, when that is the only split; else None.

  None also when the batch is not split at all (one data-parallel device).
  """
  if sharding.data_parallel_size(layout.rules, layout.mesh) == 1:
    return None
  if not all(s.is_fully_replicated for s in jax.tree.leaves(state_shardings)):
    return None
  return tuple(layout.rules["batch"])


def _all_reduce(grads, metrics: dict, axes, weights: dict):
  """Count-weighted means of the gradients and metrics over the devices; counts are summed.

  Everything crosses devices as one flat f32 vector: one all-reduce (one rendezvous) per
  step. The weighting happens per array, before the flattening, and the division per
  array, after it, so XLA fuses each into the copy that flattening or unflattening
  makes anyway instead of spending a pass over the whole vector on each.
  """
  counts = count_names(weights)

  def weight_of(name):
    count = weights.get(name, DEFAULT_COUNT)
    return metrics[count].astype(jnp.float32) if count in metrics else jnp.float32(1.0)

  loss_weight = weight_of("loss")
  averaged = sorted(name for name in metrics if name not in counts)
  local = {"grads": jax.tree.map(lambda g: g * loss_weight.astype(g.dtype), grads),
           "loss_weight": loss_weight,
           "sums": {name: metrics[name] * weight_of(name) for name in averaged},
           "weights": {name: weight_of(name) for name in averaged},
           "counts": {name: metrics[name] for name in metrics if name in counts}}
  flat, unravel = ravel_pytree(local)
  total = unravel(jax.lax.psum(flat, axes))
  grads = jax.tree.map(lambda g: g / total["loss_weight"].astype(g.dtype), total["grads"])
  reduced = dict(total["counts"])
  for name in averaged:
    reduced[name] = (total["sums"][name] / total["weights"][name]).astype(metrics[name].dtype)
  return grads, reduced


def make_multi_step(loss_fn, tx, mesh, axes: tuple[str, ...], weights: dict | None = None,
                    microbatches: int = 1):
  """jit(shard_map(scan(step))) over a stack of K batches split along `axes`; the state
  (replicated on every device) is donated. Same interface as lm.train.step.make_multi_step.

  `weights` maps a metric to the count it is a mean over (default `num_tokens`; the
  task's `eval_weights`); a loss without a count is averaged with equal weights.
  """
  weights = dict(weights or {})

  def step(state, batch, base_rng):
    device = jax.lax.axis_index(axes)
    rng = jax.random.fold_in(jax.random.fold_in(base_rng, state.step), device)
    with nn.logical_axis_rules(()):  # inside, arrays are per-device: no layout constraints
      grads, metrics = accumulated_grads(loss_fn, state.params, batch, rng, microbatches)
    grads, metrics = _all_reduce(grads, metrics, axes, weights)
    return apply_grads(state, grads, metrics, tx)

  def multi_step(state, batches_K, base_rng):
    return jax.lax.scan(lambda s, b: step(s, b, base_rng), state, batches_K)

  batch_spec = PartitionSpec(None, axes[0] if len(axes) == 1 else axes)
  # check_vma=False: gradients stay per-device (no implicit psum for the replicated
  # params) until _all_reduce weighs and sums them.
  local = jax.shard_map(multi_step, mesh=mesh,
                        in_specs=(PartitionSpec(), batch_spec, PartitionSpec()),
                        out_specs=(PartitionSpec(), PartitionSpec()), check_vma=False)
  return jax.jit(local, donate_argnums=(0,))

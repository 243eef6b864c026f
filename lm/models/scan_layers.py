"""Scanned layer stacks: L identical decoder blocks as one `nn.scan` over stacked params.

Legend: B batch, T length, S cache length, D model dim, L layers.
An unrolled stack compiles L copies of the block; a scanned one compiles the block once
(compile time flat in depth) and loops over params with a leading `layers` axis (logical
name "layers", never split by the sharding rules). The KV cache gets the same leading
axis. `stack_layers` / `unstack_layers` convert between the two param layouts
(`block_0 ... block_{L-1}` and `blocks/block` with stacked leaves), so a checkpoint of
one layout can run in the other; `stack_caches` / `unstack_caches` do the same for caches.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.layers.block import BlockConfig, block_class

SCANNED = "blocks"  # the scanned stack's module name in the GPT's params
INNER = "block"  # the block inside the scan body


class _LayerStep(nn.Module):
  """One block in nn.scan's form: (x carry, this layer's cache, broadcasts) -> (x, cache)."""
  config: BlockConfig
  remat: str = "none"
  bias_fn: Any = None  # a pure function (ALiBi) or None; the same for every layer
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BTD, cache, mask_B1TS, positions_BT, cache_index):
    # remat inside the scan: each layer's activations are recomputed in its backward step.
    return block_class(self.remat)(self.config, name=INNER)(
        x_BTD, mask_B1TS, self.bias_fn, positions_BT=positions_BT, cache=cache,
        cache_index=cache_index, deterministic=self.deterministic)


def scanned_blocks(config: BlockConfig, num_layers: int, remat: str = "none", bias_fn=None,
                   deterministic: bool = True) -> nn.Module:
  """`num_layers` copies of one block, scanned; call it inside a compact method as
  `(x_BTD, caches, mask_B1TS, positions_BT, cache_index) -> (x_BTD, caches)`, caches
  stacked on axis 0 (or None)."""
  scan = nn.scan(
      _LayerStep,
      variable_axes={"params": 0},
      split_rngs={"params": True, "dropout": True},  # each layer its own init and dropout
      in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
      length=num_layers,
      metadata_params={nn.PARTITION_NAME: "layers"})
  return scan(config, remat, bias_fn, deterministic, name=SCANNED)


def stack_layers(params: dict, num_layers: int) -> dict:
  """Unrolled params (`block_i` subtrees) -> the scanned layout (`blocks/block`, stacked)."""
  params = dict(params)
  layers = [params.pop(f"block_{i}") for i in range(num_layers)]
  params[SCANNED] = {INNER: jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}
  return params


def unstack_layers(params: dict) -> dict:
  """The scanned layout -> unrolled `block_0 ... block_{L-1}` subtrees."""
  params = dict(params)
  stacked = params.pop(SCANNED)[INNER]
  num_layers = jax.tree.leaves(stacked)[0].shape[0]
  for i in range(num_layers):
    params[f"block_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return params


def stack_caches(caches: list):
  """A per-layer list of caches (KVCache or MLACache) -> one cache with a leading L axis."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *caches)


def unstack_caches(cache) -> list:
  num_layers = jax.tree.leaves(cache)[0].shape[0]
  return [jax.tree.map(lambda x, i=i: x[i], cache) for i in range(num_layers)]

"""Where the train state and the batches live: the trainer's bridge to lm/sharding.py.

`Layout` holds the mesh and the rules. From a model's logical axis names it derives
the sharding of every parameter and optimizer-state leaf (optax states mirror the
params, so the logical names carry over), initialises the state directly into that
layout, and places batches: each process contributes its rows of the global batch.
Activation constraints inside the model (`nn.with_logical_constraint`) see the same
rules through `layout.context()`, which wraps every traced call.
"""

import contextlib
import dataclasses

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lm import sharding


@dataclasses.dataclass(frozen=True)
class Layout:
  mesh: Mesh
  rules: dict

  @classmethod
  def from_config(cls, sharding_config, devices=None) -> "Layout":
    return cls(sharding.make_mesh(sharding_config.mesh, devices),
               sharding.make_rules(sharding_config.rules, sharding_config.overrides))

  @contextlib.contextmanager
  def context(self):
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(sharding.flax_rules(self.rules)):
      yield

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  # --- the train state ---------------------------------------------------------------

  def state_shardings(self, make_state):
    """(abstract state with shardings, sharding tree) without computing anything.

    `make_state()` builds the train state from `model.init`'s boxed params
    (nn.LogicallyPartitioned); their logical names decide the layout, and optimizer
    states inherit them. Unboxed leaves are replicated.
    """
    # No mesh context here: flax would constrain DenseGeneral's flattened kernel init.
    boxed = jax.eval_shape(make_state)
    logical = nn.get_partition_spec(boxed)
    abstract = nn.meta.unbox(boxed)
    shardings = sharding.tree_shardings(logical, abstract, self.rules, self.mesh)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, shardings)
    return abstract, shardings

  def init_state(self, make_state, shardings):
    """The initial train state, computed directly in its sharded layout."""
    return jax.jit(lambda: nn.meta.unbox(make_state()), out_shardings=shardings)()

  # --- batches -------------------------------------------------------------------------

  def check_batch(self, global_batch: int, what: str):
    ways = sharding.data_parallel_size(self.rules, self.mesh)
    if global_batch % ways:
      raise sharding.ShardingError(
          f"{what}={global_batch} is not divisible by the {ways} data-parallel devices "
          f"(mesh {dict(self.mesh.shape)}, batch over {'x'.join(self.rules.get('batch', ()))})")

  def put_batch(self, batch: dict, leading_dims: int = 0) -> dict:
    """Global numpy batch (every process builds the same one) -> sharded jax arrays.

    Each process hands over only the rows its devices hold, so the result is the same
    global array as a single-process run sees.
    """
    target = sharding.batch_sharding(self.rules, self.mesh, leading_dims)

    def put(x):
      x = np.asarray(x)
      if jax.process_count() == 1:
        return jax.device_put(x, target)
      rows = x.shape[leading_dims] // jax.process_count()
      start = jax.process_index() * rows
      local = np.take(x, np.arange(start, start + rows), axis=leading_dims)
      return jax.make_array_from_process_local_data(target, local, x.shape)

    return {k: put(v) for k, v in batch.items()}

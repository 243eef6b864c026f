"""Parameter initialisers with logical axis names attached.

Every parameter carries logical axis names (`embed`, `heads`, `mlp`, ...) so the
sharding rules can place it on a device mesh without the model knowing the mesh.
"""

import flax.linen as nn

# GPT-2 style: N(0, 0.02) for weights and embeddings.
DEFAULT_STDDEV = 0.02


def normal(stddev: float, names: tuple[str, ...]):
  return nn.with_logical_partitioning(nn.initializers.normal(stddev), names)


def zeros(names: tuple[str, ...]):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def ones(names: tuple[str, ...]):
  return nn.with_logical_partitioning(nn.initializers.ones_init(), names)

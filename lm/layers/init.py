"""Parameter initialisers with logical axis names attached.

Every parameter carries logical axis names (`embed`, `heads`, `mlp`, ...) so the
sharding rules (lm/sharding.py) can place it on a device mesh without the model
knowing the mesh. The box never constrains the value itself: placement is decided
once, by the trainer's `out_shardings` (lm/train/layout.py). (Flax's own box would
constrain on unbox, which breaks DenseGeneral: it unboxes a flattened kernel.)
"""

import flax.linen as nn

# GPT-2 style: N(0, 0.02) for weights and embeddings.
DEFAULT_STDDEV = 0.02


class Logical(nn.LogicallyPartitioned):
  """A parameter with logical axis names; unboxing returns the plain value."""

  def unbox(self, apply_constraint=True):
    del apply_constraint
    return self.value


def with_names(initializer, names: tuple[str | None, ...]):
  def init(*args, **kwargs):
    return Logical(initializer(*args, **kwargs), names)
  return init


def normal(stddev: float, names: tuple[str | None, ...]):
  return with_names(nn.initializers.normal(stddev), names)


def zeros(names: tuple[str | None, ...]):
  return with_names(nn.initializers.zeros_init(), names)


def ones(names: tuple[str | None, ...]):
  return with_names(nn.initializers.ones_init(), names)

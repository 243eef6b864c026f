"""The trainable-parameter mask: regexes over parameter paths -> an optimizer that only
updates (and only keeps state for) the matching parameters.

A path is the '/'-joined key path of a parameter, e.g. `block_0/attn/lora_query/a` or
`ln_final/bias`; a parameter trains when any pattern matches part of it (`re.search`).
No patterns: everything trains (full fine-tuning). Frozen parameters go through
`optax.set_to_zero`, which has no state, so LoRA on a frozen model keeps no Adam moments
for the base weights; gradient clipping and weight decay see the trainable part only.
"""

import re

import jax
import numpy as np
import optax

from lm.errors import UserError

TRAIN, FREEZE = "train", "freeze"


def path_str(key_path) -> str:
  """'block_0/attn/query/bias', the same for plain and for boxed (nn.Partitioned) trees."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                  for k in key_path
                  if not (isinstance(k, jax.tree_util.GetAttrKey) and k.name == "value"))


def param_paths(params) -> list[str]:
  return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def is_trainable(path: str, patterns: tuple[str, ...]) -> bool:
  return not patterns or any(re.search(p, path) for p in patterns)


def labels(params, patterns: tuple[str, ...]):
  """A tree like `params` of "train" / "freeze"."""
  return jax.tree_util.tree_map_with_path(
      lambda p, _: TRAIN if is_trainable(path_str(p), patterns) else FREEZE, params)


def check_patterns(params, patterns: tuple[str, ...]):
  """Every pattern must match some parameter, and something must train."""
  for pattern in patterns:
    try:
      re.compile(pattern)
    except re.error as e:
      raise UserError(f"trainable pattern {pattern!r} is not a regex: {e}") from None
  paths = param_paths(params)
  for pattern in patterns:
    if not any(re.search(pattern, path) for path in paths):
      raise UserError(f"trainable pattern {pattern!r} matches no parameter; paths look like "
                      f"{paths[:3]}")


def mask_optimizer(tx: optax.GradientTransformation,
                   patterns: tuple[str, ...]) -> optax.GradientTransformation:
  if not patterns:
    return tx
  return optax.multi_transform({TRAIN: tx, FREEZE: optax.set_to_zero()},
                               lambda params: labels(params, patterns))


def count(params, patterns: tuple[str, ...]) -> dict:
  """trainable_params, total_params and trainable_fraction of a param tree."""
  total = trainable = 0
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    n = int(np.prod(leaf.shape))
    total += n
    trainable += n if is_trainable(path_str(key_path), patterns) else 0
  return {"trainable_params": trainable, "total_params": total,
          "trainable_fraction": trainable / max(total, 1)}

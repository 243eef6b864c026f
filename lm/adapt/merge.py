"""Folding PEFT parameters into plain ones for inference.

`merge_lora`: every LoRA pair (a, b) next to a projection's kernel becomes
kernel + (alpha / r) a b, and the model config drops LoRA (lora_rank = 0): the merged
model has the base model's shape and cost and computes the same function.
`bake_prefix`: a reparameterised prefix (table -> MLP) is evaluated once and stored as
the direct `kv` parameter (prefix_hidden = 0), as Li & Liang do after training.
Both work on plain (unboxed) param trees of any family using lm/layers/peft.py.
"""

import dataclasses

import jax
import jax.numpy as jnp

from lm.layers.peft import lora_delta_kernel


def _merge_scope(scope: dict, alpha: float) -> dict:
  out = {}
  for name, value in scope.items():
    if name.startswith("lora_"):
      continue
    if isinstance(value, dict):
      lora = scope.get(f"lora_{name}")
      value = _merge_scope(value, alpha)
      if lora is not None:
        value = {**value, "kernel": value["kernel"] + lora_delta_kernel(lora["a"], lora["b"],
                                                                          alpha)}
    out[name] = value
  return out


def merge_lora(params: dict, model_config):
  """(merged params, model config without LoRA)."""
  merged = _merge_scope(jax.tree.map(jnp.asarray, params), model_config.lora_alpha)
  return merged, dataclasses.replace(model_config, lora_rank=0)


def _replace_at(tree: dict, at: tuple[str, ...], fn):
  if not at:
    return fn(tree)
  return {**tree, at[0]: _replace_at(tree[at[0]], at[1:], fn)}


def bake_prefix(model, params: dict, at: tuple[str, ...] = ()):
  """(params with the prefix stored directly, model config with prefix_hidden = 0).

  `model` is the family module with the reparameterised prefix; `at` is where its params
  sit in `params` (e.g. ("backbone",)).
  """
  from lm.layers.peft import PrefixKV
  c = model.config
  prefix = PrefixKV(c.prefix_len, c.num_layers, getattr(c, "num_kv_heads", 0) or c.num_heads,
                    c.head_dim, c.prefix_hidden)

  def bake(inner: dict) -> dict:
    kv_list = prefix.apply({"params": inner["prefix"]})
    return {**inner, "prefix": {"kv": jnp.stack([jnp.stack(kv) for kv in kv_list])}}  # L2PKH

  return _replace_at(params, at, bake), dataclasses.replace(c, prefix_hidden=0)

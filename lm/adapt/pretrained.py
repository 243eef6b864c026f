"""Starting a run from a trained workdir (`config.init_from`), and saving / loading the
trained part of an adapted model on its own.

`with_pretrained(task, config, workdir)` wraps the task's parameter initialiser: the new model is
initialised as usual (so PEFT parameters and new heads get their own init), then every
parameter the pretrained checkpoint also has is replaced by its trained value. A new
parameter the checkpoint lacks must be trainable (else it would stay random forever);
pretrained parameters the new model does not use (e.g. BERT's MLM head under a
classifier) are left out and listed.

The base workdir and the step it was loaded at are recorded once, in the run's
`init_from.json`, so a resumed run (or a base that trained on meanwhile) keeps naming
the checkpoint the frozen parameters really came from.

After training, `save_adapter` writes only the trainable parameters
(`adapter.safetensors`, plus `adapter.json` naming the base workdir and step), and
`load_adapted` rebuilds the full parameters from the base checkpoint and that file.
"""

import dataclasses
import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lm import workdir as workdir_lib
from lm.adapt import trainable as trainable_lib
from lm.errors import UserError

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_INFO = "adapter.json"
INIT_FROM_INFO = "init_from.json"


def _is_box(x) -> bool:
  return isinstance(x, nn.meta.AxisMetadata)


def flatten(params) -> dict[str, np.ndarray]:
  """{'block_0/attn/query/kernel': array} of a plain or boxed param tree."""
  flat = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(params))[0]
  return {trainable_lib.path_str(path): leaf for path, leaf in flat}


def load_params(workdir: str, step: int | None = None) -> tuple[dict, dict, int]:
  """(config.json as a dict, params as numpy, step) of a trained workdir's checkpoint
  `step` (default: the latest)."""
  from lm.train.checkpoint import Checkpointer
  config_path = os.path.join(workdir, workdir_lib.CONFIG)
  if not os.path.exists(config_path):
    raise UserError(f"init_from={workdir} is not a trained workdir: {config_path} is missing")
  with open(config_path) as f:
    config = json.load(f)
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise UserError(f"init_from={workdir} has no checkpoints/: train it first")
  checkpointer = Checkpointer(workdir, create=False)
  try:
    params, step = checkpointer.restore_params(step)
  finally:
    checkpointer.close()
  return config, params, step


def merge(fresh, pretrained: dict[str, np.ndarray], patterns: tuple[str, ...],
          at: tuple[str, ...] = ()):
  """`fresh` (boxed, from model.init) with every parameter found in `pretrained` replaced.

  `at` is where the pretrained model sits inside `fresh` (e.g. ("backbone",) for a
  classifier wrapping it). Returns (merged, names of unused pretrained parameters).
  """
  prefix = "/".join(at)
  used = set()

  def replace(key_path, leaf):
    path = trainable_lib.path_str(key_path)
    inner = path[len(prefix) + 1:] if prefix and path.startswith(prefix + "/") else (
        None if prefix else path)
    value = leaf.unbox() if _is_box(leaf) else leaf
    if inner is None or inner not in pretrained:
      if not trainable_lib.is_trainable(path, patterns):
        raise UserError(f"parameter {path} is not in the init_from checkpoint and not "
                        f"trainable: add a pattern for it to config.trainable")
      return leaf
    saved = pretrained[inner]
    if tuple(saved.shape) != tuple(value.shape):
      raise UserError(f"init_from checkpoint has {inner} of shape {tuple(saved.shape)} but the "
                      f"model needs {tuple(value.shape)}: the model configs differ")
    used.add(inner)
    new = jnp.asarray(saved, value.dtype)
    return leaf.replace_boxed(new) if _is_box(leaf) else new

  merged = jax.tree_util.tree_map_with_path(replace, fresh, is_leaf=_is_box)
  return _soft_prompt_from_vocab(merged, pretrained, prefix), sorted(set(pretrained) - used)


def _soft_prompt_from_vocab(params, pretrained: dict, prefix: str, seed: int = 0):
  """Lester et al. initialise a soft prompt from vocabulary embeddings: those of the
  pretrained model (model.init drew it from the fresh, random table)."""
  table = pretrained.get("token_embed/embedding")
  if table is None:
    return params
  target = (prefix + "/" if prefix else "") + "soft_prompt"

  def init(key_path, leaf):
    if trainable_lib.path_str(key_path) != target:
      return leaf
    value = leaf.unbox() if _is_box(leaf) else leaf
    ids = np.random.default_rng(seed).integers(0, table.shape[0], value.shape[0])
    new = jnp.asarray(table[ids], value.dtype)
    return leaf.replace_boxed(new) if _is_box(leaf) else new

  return jax.tree_util.tree_map_with_path(init, params, is_leaf=_is_box)


@dataclasses.dataclass(frozen=True)
class Base:
  workdir: str
  step: int
  params: dict  # flat path -> numpy array


def load_base(workdir: str) -> Base:
  _, params, step = load_params(workdir)
  return Base(os.path.abspath(workdir), step, flatten(params))


def with_pretrained(task, config, workdir: str):
  """The task with its initialiser starting from `config.init_from` (no-op without one)."""
  if not config.init_from:
    return task
  base = load_base(config.init_from)
  print(f"initialising from {base.workdir} (step {base.step})")
  _record_base(workdir, base)
  init_params = task.init_params

  def init_from_base(model, seed):
    merged, unused = merge(init_params(model, seed), base.params, config.trainable,
                           task.pretrained_at)
    if unused:
      print(f"init_from: {len(unused)} pretrained parameters unused by this model, e.g. "
            f"{unused[0]}")
    return merged

  return dataclasses.replace(task, init_params=init_from_base)


def _record_base(workdir: str, base: Base):
  """Writes which base checkpoint initialised this run, on its first start only: a resumed
  run restores its own checkpoint, whose frozen parameters came from that first base."""
  path = os.path.join(workdir, INIT_FROM_INFO)
  if os.path.exists(path) or jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  with open(path, "w") as f:
    json.dump({"base_workdir": base.workdir, "base_step": base.step}, f, indent=2)


def recorded_base(workdir: str) -> dict:
  """{"base_workdir", "base_step"} that initialised the run in `workdir`."""
  path = os.path.join(workdir, INIT_FROM_INFO)
  if not os.path.exists(path):
    raise UserError(f"{workdir} has no {INIT_FROM_INFO}: it was not started with init_from")
  with open(path) as f:
    return json.load(f)


def copy_tokenizer(config, workdir: str):
  """A fine-tuning run reads text with the pretrained model's tokenizer: copied into the
  workdir (where the tasks reload a run's tokenizer from) unless it has one already."""
  if not config.init_from:
    return
  source = os.path.join(config.init_from, workdir_lib.TOKENIZER)
  target = os.path.join(workdir, workdir_lib.TOKENIZER)
  if os.path.exists(source) and not os.path.exists(target):
    os.makedirs(workdir, exist_ok=True)
    shutil.copyfile(source, target)


# --- the trained part on its own -------------------------------------------------------

def save_adapter(workdir: str, config, params, step: int):
  """Writes the trainable parameters and where the frozen rest comes from."""
  from safetensors.numpy import save_file
  flat = {k: np.ascontiguousarray(v) for k, v in flatten(jax.device_get(params)).items()
          if trainable_lib.is_trainable(k, config.trainable)}
  save_file(flat, os.path.join(workdir, ADAPTER_WEIGHTS))
  info = {**recorded_base(workdir),
          "trainable": list(config.trainable), "step": step,
          "num_params": int(sum(v.size for v in flat.values()))}
  with open(os.path.join(workdir, ADAPTER_INFO), "w") as f:
    json.dump(info, f, indent=2)


def load_adapted(workdir: str, at: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
  """Full flat parameters of an adapted run: its base checkpoint plus its adapter file."""
  from safetensors.numpy import load_file
  info_path = os.path.join(workdir, ADAPTER_INFO)
  if not os.path.exists(info_path):
    raise UserError(f"{workdir} has no {ADAPTER_INFO}: not an adapted (init_from) run")
  with open(info_path) as f:
    info = json.load(f)
  _, base_params, _ = load_params(info["base_workdir"], info["base_step"])
  prefix = "/".join(at) + "/" if at else ""
  full = {prefix + k: v for k, v in flatten(base_params).items()}
  full.update(load_file(os.path.join(workdir, ADAPTER_WEIGHTS)))
  return full

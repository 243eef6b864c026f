"""Orbax checkpoints holding the train state and the data iterator position together.

Layout: `WORKDIR/checkpoints/<step>/{state,data}`. Orbax writes each step to a
temporary directory and renames it when complete, so a crash mid-save never
damages an earlier checkpoint. Saves are synchronous: the train step donates its
input buffers, so nothing may still be reading them after `save` returns.
"""

import os

import jax
import orbax.checkpoint as ocp

from lm.errors import UserError


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _shapes(tree) -> dict[str, tuple]:
  """'params/block_0/attn/query/kernel' -> shape; the same names for a live state and
  for orbax's metadata of a saved one."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(_key_name(k) for k in path): tuple(leaf.shape) for path, leaf in flat}


class Checkpointer:

  def __init__(self, workdir: str, keep: int = 3, create: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self._manager = ocp.CheckpointManager(
        self.directory,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=create,
                                             enable_async_checkpointing=False))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, data_state: dict):
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)

  def restore(self, abstract_state, step: int | None = None):
    """Restores (state, data_state); a checkpoint of another model shape is a UserError."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise UserError(f"no checkpoint found in {self.directory}")
    self._check_compatible(step, abstract_state)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"]

  def _check_compatible(self, step: int, abstract_state):
    """Names the first parameter (or optimizer slot) whose shape or presence differs."""
    saved = _shapes(self._manager.item_metadata(step)["state"])
    expected = _shapes(abstract_state)
    # Parameters first: a model mismatch is the likelier mistake and the clearer message.
    for name in sorted(set(saved) | set(expected), key=lambda n: not n.startswith("params/")):
      if saved.get(name) != expected.get(name):
        what = "the model" if name.startswith("params/") else "the optimizer config"
        raise UserError(
            f"checkpoint {self.directory}/{step} does not match {what}: {name} is "
            f"{saved.get(name, 'absent')} in the checkpoint but {expected.get(name, 'absent')} "
            f"in the config")

  def close(self):
    self._manager.close()

"""Orbax checkpoints holding the train state and the data iterator position together,
checked before use, with a fall back to the previous good one.

Layout: `WORKDIR/checkpoints/<step>/{state,data,lm_manifest.json}`. Orbax writes each
step to a temporary directory and renames it when complete, so a kill mid-save
never damages an earlier checkpoint (the temporary directory is removed by the next
run). Saves are synchronous: the train step donates its input buffers, so nothing
may still be reading them after `save` returns.

Renaming protects against kills, not against a disk that fills up, a copy that
stops half-way or a flipped bit. So after orbax finalises a step, `save` writes
`lm_manifest.json` listing every file's size and SHA-256 (and the step's metrics).
`latest_step` returns the newest step whose files match their manifest; a newer
one that does not is reported on stderr with the reason and, when the checkpointer
may write, moved to `WORKDIR/checkpoints.corrupt/` (kept for inspection, out of
orbax's way). A step without a manifest (killed between orbax's rename and the
manifest write) is complete as far as orbax knows; it is used, and if restoring it
fails, `restore` falls back in the same way.

Retention: the `keep` newest steps, plus, with `best_metric`, the `keep_best` steps
with the best value of that metric among those saved with one.
"""

import hashlib
import json
import math
import os
import shutil
import sys

import jax
import orbax.checkpoint as ocp

from lm.errors import UserError

MANIFEST = "lm_manifest.json"
CORRUPT_DIR = "checkpoints.corrupt"


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


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _files(directory: str) -> dict[str, dict]:
  """relative path -> {bytes, sha256} of every file under `directory` but the manifest."""
  out = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, directory)
      if rel != MANIFEST:
        out[rel] = {"bytes": os.path.getsize(path), "sha256": _sha256(path)}
  return out


def _write_atomically(path: str, text: str):
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  directory = os.open(os.path.dirname(path), os.O_RDONLY)
  try:
    os.fsync(directory)
  finally:
    os.close(directory)


def _first_line(error: Exception) -> str:
  lines = str(error).strip().splitlines()
  return (lines[0] if lines else type(error).__name__)[:200]


def verify_step_dir(directory: str) -> str | None:
  """None if the step directory matches its manifest (or has none); else what is wrong."""
  if not os.path.isdir(directory):
    return "the directory is missing"
  manifest_path = os.path.join(directory, MANIFEST)
  if not os.path.exists(manifest_path):
    for needed in ("state", "data", os.path.join("state", "_METADATA")):
      if not os.path.exists(os.path.join(directory, needed)):
        return f"{needed} is missing and there is no {MANIFEST}"
    return None
  try:
    with open(manifest_path) as f:
      files = json.load(f)["files"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    return f"{MANIFEST} is unreadable ({type(e).__name__})"
  for rel, expected in sorted(files.items()):
    path = os.path.join(directory, rel)
    if not os.path.isfile(path):
      return f"{rel} is missing"
    size = os.path.getsize(path)
    if size != expected["bytes"]:
      return f"{rel} is {size} bytes, {expected['bytes']} were written (truncated?)"
    if _sha256(path) != expected["sha256"]:
      return f"{rel} does not match its SHA-256 checksum (corrupted)"
  return None


class Checkpointer:

  def __init__(self, workdir: str, keep: int = 3, create: bool = True,
               best_metric: str | None = None, best_mode: str = "min", keep_best: int = 1):
    if keep < 1 or keep_best < 0:
      raise UserError(f"keep must be >= 1 and keep_best >= 0, got {keep} and {keep_best}")
    if best_mode not in ("min", "max"):
      raise UserError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.corrupt_directory = os.path.abspath(os.path.join(workdir, CORRUPT_DIR))
    self.keep, self.keep_best = keep, keep_best
    self.best_metric, self.best_mode = best_metric, best_mode
    self._writable = create
    self._problems: dict[int, str | None] = {}  # step -> verification result, once per step
    self._reported: set[int] = set()
    self._metrics: dict[int, dict] = {}  # step -> the metrics saved with it
    self._manager = ocp.CheckpointManager(
        self.directory,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(
            max_to_keep=None, create=create, cleanup_tmp_directories=create,
            enable_async_checkpointing=False))

  # ------------------------------------------------------------------ finding steps

  def all_steps(self) -> list[int]:
    """Every step orbax sees, intact or not, oldest first."""
    return sorted(self._manager.all_steps())

  def verify(self, step: int) -> str | None:
    """None if checkpoint `step` is intact as far as its manifest can tell, else why not."""
    if step not in self._problems:
      self._problems[step] = verify_step_dir(os.path.join(self.directory, str(step)))
    return self._problems[step]

  def latest_step(self) -> int | None:
    """The newest intact step; newer broken ones are reported (and set aside if writable)."""
    for step in reversed(self.all_steps()):
      problem = self.verify(step)
      if problem is None:
        return step
      self._discard(step, problem)
    return None

  def _discard(self, step: int, problem: str):
    self._problems[step] = problem
    if step in self._reported:
      return
    self._reported.add(step)
    path = os.path.join(self.directory, str(step))
    where = "left in place (read-only)"
    if self._writable and jax.process_index() == 0 and os.path.exists(path):
      os.makedirs(self.corrupt_directory, exist_ok=True)
      target = os.path.join(self.corrupt_directory, str(step))
      suffix = 1
      while os.path.exists(target):
        target, suffix = os.path.join(self.corrupt_directory, f"{step}.{suffix}"), suffix + 1
      shutil.move(path, target)
      self._manager.reload()
      where = f"moved to {target}"
    print(f"warning: checkpoint {path} is unusable: {problem}; {where}; falling back to "
          f"the previous checkpoint", file=sys.stderr)

  # ------------------------------------------------------------------ save

  def save(self, step: int, state, data_state: dict, metrics: dict | None = None):
    """Saves, writes the manifest (with `metrics`), then prunes to keep + best."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)
    metrics = {k: float(v) for k, v in (metrics or {}).items()}
    if jax.process_index() == 0:
      step_dir = os.path.join(self.directory, str(step))
      manifest = {"step": step, "files": _files(step_dir), "metrics": metrics}
      _write_atomically(os.path.join(step_dir, MANIFEST), json.dumps(manifest, indent=1))
    self._problems[step] = None
    self._metrics[step] = metrics  # every process prunes alike without reading the manifest
    self._prune()

  def _metric(self, step: int) -> float | None:
    if step not in self._metrics:
      try:
        with open(os.path.join(self.directory, str(step), MANIFEST)) as f:
          self._metrics[step] = json.load(f)["metrics"]
      except (OSError, ValueError, KeyError, TypeError):
        self._metrics[step] = {}
    metrics = self._metrics[step]
    value = metrics.get(self.best_metric) if isinstance(metrics, dict) else None
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None

  def best_step(self) -> int | None:
    """The step with the best `best_metric` (None without a metric or a step that has it)."""
    ranked = self._ranked_by_metric()
    return ranked[0] if ranked else None

  def _ranked_by_metric(self) -> list[int]:
    if self.best_metric is None:
      return []
    scored = [(m, s) for s in self.all_steps() if (m := self._metric(s)) is not None]
    sign = 1 if self.best_mode == "min" else -1
    return [s for _, s in sorted(scored, key=lambda ms: (sign * ms[0], -ms[1]))]

  def _prune(self):
    steps = self.all_steps()
    keep = set(steps[-self.keep:]) | set(self._ranked_by_metric()[:self.keep_best])
    for step in steps:
      if step not in keep:
        self._manager.delete(step)
        self._problems.pop(step, None)
        self._metrics.pop(step, None)

  # ------------------------------------------------------------------ restore

  def restore(self, abstract_state, step: int | None = None):
    """Restores (state, data_state) of `step`, or of the newest step that restores.

    A checkpoint of another model shape is a UserError (a config mistake, not
    damage: no fall back). A damaged `step` given explicitly is a UserError too.
    """
    candidates = [step] if step is not None else list(reversed(self.all_steps()))
    failures = []
    for candidate in candidates:
      problem = self.verify(candidate)
      if problem is None:
        restored, problem = self._try_restore(candidate, abstract_state)
        if problem is None:
          return restored["state"], restored["data"]
      if step is not None:
        raise UserError(f"checkpoint {self.directory}/{step} is unusable: {problem}")
      failures.append(f"{candidate} ({problem})")
      self._discard(candidate, problem)
    if failures:
      raise UserError(f"no usable checkpoint in {self.directory}: {'; '.join(failures)}")
    raise UserError(f"no checkpoint found in {self.directory}")

  def restore_params(self, step: int | None = None):
    """(params, step) of `step` (default: the newest intact one) as numpy arrays, without
    knowing the model that wrote them: the saved metadata gives every shape (fine-tuning
    reads a pretrained workdir this way; the optimizer state's layout does not matter).
    `check_param_shapes` compares them with a model's."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise UserError(f"no checkpoint found in {self.directory}")
    problem = self.verify(step)
    if problem is not None:
      raise UserError(f"checkpoint {self.directory}/{step} is unusable: {problem}")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    metadata = self._manager.item_metadata(step)["state"]
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                            metadata)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))
    return jax.device_get(restored["state"]["params"]), step

  def _try_restore(self, step: int, abstract_state):
    """(restored, None), or (None, why) when the failure means the step is damaged.

    With a manifest the files are known good, so a failure is not damage: it raises.
    Without one (killed between orbax's rename and the manifest write), a failing
    read means damage and the caller falls back. A shape mismatch is a config
    mistake, never damage: a UserError.
    """
    verified = os.path.exists(os.path.join(self.directory, str(step), MANIFEST))
    try:
      saved = _shapes(self._manager.item_metadata(step)["state"])
    except Exception as e:  # noqa: BLE001 -- orbax/tensorstore raise many kinds
      if verified:
        raise
      return None, f"its metadata is unreadable: {_first_line(e)}"
    self._check_compatible(step, saved, abstract_state)
    try:
      return self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())), None
    except Exception as e:  # noqa: BLE001
      if verified:
        raise
      return None, f"restoring failed: {_first_line(e)}"

  def _check_compatible(self, step: int, saved: dict[str, tuple], abstract_state):
    """Names the first parameter (or optimizer slot) whose shape or presence differs."""
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


def check_param_shapes(expected, params, where: str):
  flat = lambda tree: {jax.tree_util.keystr(k): tuple(v.shape)  # noqa: E731
                       for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
  want, have = flat(expected), flat(params)
  for path in sorted(want.keys() | have.keys()):
    if want.get(path) != have.get(path):
      raise UserError(f"checkpoint {where} does not match the model of its config: params"
                      f"{path} is {have.get(path, 'absent')} in the checkpoint, "
                      f"{want.get(path, 'absent')} in the model")

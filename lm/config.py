"""Typed experiment configuration.

The runner translates an ml-collections config into these frozen dataclasses
once (`from_dict`); nothing under `lm/` reads ml-collections. Defaults live here,
checks live in `__post_init__`, and unknown keys are errors.
"""

import dataclasses
import json
import math
import typing
from typing import Any

from lm.errors import UserError
from lm.models.registry import model_config_class
from lm.tasks import task_config_class

TOKENIZERS = ("char", "word", "bpe")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  path: str
  tokenizer: str = "char"  # char | word | bpe
  vocab_size: int = 0  # word: 0 keeps every word; bpe: required
  val_fraction: float = 0.1  # the last fraction of the text is validation
  seq_len: int = 64  # tokens per training window (the "block size")
  batch_size: int = 12
  eval_batch_size: int = 128  # windows per eval batch
  seed: int = 0  # seeds the order of random training windows
  val_path: str = ""  # a separate validation file; "" = the last val_fraction of `path`
  per_line: bool = False  # n-gram models: every line is a sentence, <s> w_1 .. w_k </s>

  def __post_init__(self):
    if self.tokenizer not in TOKENIZERS:
      raise UserError(f"data.tokenizer={self.tokenizer!r}; choose one of {TOKENIZERS}")
    if not 0.0 < self.val_fraction < 1.0:
      raise UserError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
    for name in ("seq_len", "batch_size", "eval_batch_size"):
      if getattr(self, name) <= 0:
        raise UserError(f"data.{name} must be positive, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """AdamW with linear warmup then cosine decay from `lr` to `min_lr`."""
  lr: float = 1e-3
  min_lr: float = 1e-4
  warmup_steps: int = 100
  b1: float = 0.9
  b2: float = 0.99
  eps: float = 1e-8
  weight_decay: float = 0.1  # applied to matrices only, not to biases and norms
  grad_clip: float = 1.0  # global-norm clipping; 0 disables
  ema_decay: float = 0.0  # > 0: also keep an EMA of the params, evaluated as `val_loss_ema`
  nonfinite: str = "stop"  # stop | skip: on a NaN/inf step, stop, or skip the update and count
  max_nonfinite: int = 10  # skip: stop after this many non-finite steps in a row

  def __post_init__(self):
    if self.lr <= 0 or self.min_lr < 0:
      raise UserError(f"optim.lr must be > 0 and optim.min_lr >= 0, got {self.lr}, {self.min_lr}")
    if not 0.0 <= self.ema_decay < 1.0:
      raise UserError(f"optim.ema_decay must be in [0, 1), got {self.ema_decay}")
    if self.nonfinite not in ("stop", "skip"):
      raise UserError(f"optim.nonfinite must be 'stop' or 'skip', got {self.nonfinite!r}")
    if self.max_nonfinite < 1:
      raise UserError(f"optim.max_nonfinite must be >= 1, got {self.max_nonfinite}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  num_steps: int = 2000
  log_every: int = 10
  eval_every: int = 250
  checkpoint_every: int = 500
  keep_checkpoints: int = 3
  steps_per_call: int = 10  # optimizer steps per jitted call (lax.scan): hides dispatch cost
  grad_accum_steps: int = 1  # split each batch into this many sequential microbatches
  best_metric: str = ""  # e.g. "val_loss": also keep the best `keep_best` checkpoints by it
  best_mode: str = "min"  # min | max
  keep_best: int = 1
  seed: int = 0  # parameter init and dropout

  def __post_init__(self):
    for name in ("num_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
                 "steps_per_call", "grad_accum_steps"):
      if getattr(self, name) <= 0:
        raise UserError(f"train.{name} must be positive, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  """Defaults for the sample printed after training and for `--mode=sample`."""
  prompt: str = "\n"
  max_new_tokens: int = 200
  temperature: float = 0.8
  top_k: int = 0  # 0 = no top-k filtering
  top_p: float = 1.0  # 1 = no nucleus filtering
  seed: int = 0

  def __post_init__(self):
    check_sampling_args(self.temperature, self.top_k, self.top_p, self.max_new_tokens)


def check_sampling_args(temperature: float, top_k: int, top_p: float, max_new_tokens: int):
  if math.isnan(temperature) or temperature < 0:
    raise UserError(f"temperature must be >= 0 (0 = argmax, inf = uniform), got {temperature}")
  if top_k < 0:
    raise UserError(f"top_k must be >= 0 (0 = off), got {top_k}")
  if not 0.0 < top_p <= 1.0:
    raise UserError(f"top_p must be in (0, 1], got {top_p}")
  if max_new_tokens < 0:
    raise UserError(f"max_new_tokens must be >= 0, got {max_new_tokens}")


@dataclasses.dataclass(frozen=True)
class ShardingConfig:
  """Device mesh (sizes per axis, -1 = the remaining devices) and layout rules (lm/sharding.py)."""
  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  expert: int = 1
  rules: str = "dp"  # preset: dp | fsdp | fsdp_tp | fsdp_ep
  overrides: str = ""  # e.g. "embed=fsdp;mlp=tensor;vocab=" (empty right side: replicate)
  # > 0: the runner starts JAX with this many CPU devices (jax_num_cpu_devices), e.g. one
  # per core so a CPU run is data-parallel across cores; 0: as JAX starts by itself.
  cpu_devices: int = 0

  def __post_init__(self):
    from lm.sharding import make_rules
    make_rules(self.rules, self.overrides)  # raises on unknown presets, names and axes
    if self.cpu_devices < 0:
      raise ValueError(f"sharding.cpu_devices={self.cpu_devices} must be >= 0")

  @property
  def mesh(self):
    from lm.sharding import MeshShape
    return MeshShape(self.data, self.fsdp, self.tensor, self.expert)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  data: DataConfig
  model: Any  # the family's config dataclass, e.g. GPTConfig
  optim: OptimConfig = OptimConfig()
  train: TrainConfig = TrainConfig()
  sample: SampleConfig = SampleConfig()
  sharding: ShardingConfig = ShardingConfig()
  kind: str = "train_lm"  # which experiments/<kind>.py runs it
  family: str = "gpt"  # which lm/models family `model` configures
  task: str = "causal_lm"  # which lm/tasks objective and data (lm/tasks/__init__.py)
  task_config: Any = None  # the task's config dataclass (section `task_config`)
  # Adaptation (docs/adaptation.md): start from a trained workdir's parameters, and train
  # only the parameters whose path matches one of these regexes (empty: all of them).
  init_from: str = ""
  trainable: tuple[str, ...] = ()


def _build(cls, values: dict, where: str):
  """Builds dataclass `cls` from a dict, rejecting unknown keys and coercing types."""
  if not isinstance(values, dict):
    raise UserError(f"config section {where!r} must be a mapping, got {type(values).__name__}")
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise UserError(f"unknown config key {where}.{unknown[0]}; known keys: {sorted(fields)}")
  hints = typing.get_type_hints(cls)
  kwargs = {}
  for name, value in values.items():
    hint = hints[name]
    if hint is float and isinstance(value, int):
      value = float(value)
    elif hint is int and isinstance(value, float) and value.is_integer():
      value = int(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
      raise UserError(f"config {where}.{name} must be {hint.__name__}, got "
                      f"{type(value).__name__} {value!r}")
    kwargs[name] = value
  try:
    return cls(**kwargs)
  except TypeError as e:
    raise UserError(f"config section {where!r}: {e}") from None
  except ValueError as e:
    raise UserError(f"config section {where!r}: {e}") from None


def from_dict(d: dict) -> ExperimentConfig:
  """The single translation from a plain nested dict (ml-collections or JSON)."""
  d = dict(d)
  sections = {"data": DataConfig, "optim": OptimConfig, "train": TrainConfig,
              "sample": SampleConfig, "sharding": ShardingConfig}
  top_level = {"model", "kind", "family", "task", "task_config", "init_from", "trainable"}
  unknown = sorted(set(d) - set(sections) - top_level)
  if unknown:
    raise UserError(f"unknown config key {unknown[0]!r}; known: "
                    f"{sorted(set(sections) | top_level)}")
  if "data" not in d or "model" not in d:
    raise UserError("config needs a 'data' and a 'model' section")
  family = d.get("family", "gpt")
  kwargs = {name: _build(cls, d[name], name) for name, cls in sections.items() if name in d}
  kwargs["model"] = _build(model_config_class(family), dict(d["model"]), "model")
  task = d.get("task", "causal_lm")
  kwargs["task_config"] = _build(task_config_class(task), dict(d.get("task_config") or {}),
                                 "task_config")
  init_from = d.get("init_from", "")
  if not isinstance(init_from, str):
    raise UserError(f"config init_from must be a workdir path, got {init_from!r}")
  return ExperimentConfig(kind=d.get("kind", "train_lm"), family=family, task=task,
                          init_from=init_from, trainable=_patterns(d.get("trainable", ())),
                          **kwargs)


def _patterns(value) -> tuple[str, ...]:
  """`trainable` as a tuple of regexes: a list/tuple of strings, or one comma-separated string."""
  if isinstance(value, str):
    value = [v for v in value.split(",") if v.strip()]
  if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
    raise UserError(f"config trainable must be a list of regexes, got {value!r}")
  return tuple(v.strip() for v in value)


def to_dict(config: ExperimentConfig) -> dict:
  return dataclasses.asdict(config)


def save_json(config: ExperimentConfig, path: str):
  with open(path, "w") as f:
    json.dump(to_dict(config), f, indent=2, sort_keys=True)


def load_json(path: str) -> ExperimentConfig:
  with open(path) as f:
    return from_dict(json.load(f))

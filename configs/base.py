"""Pieces shared by the config files: the default corpus and `:arg` parsing.

Config args follow big_vision: `--config=configs/X.py:smoke,tokenizer=bpe` gives
`get_config("smoke,tokenizer=bpe")`; bare words are boolean flags.
"""

import os

import ml_collections

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_SHAKESPEARE = os.path.join(REPO_ROOT, "data", "tinyshakespeare.txt")


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """'smoke,tokenizer=bpe' -> {smoke: True, tokenizer: 'bpe'}; unknown keys are errors."""
  parsed = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config arg {key!r}; known: {sorted(defaults)}")
    default = defaults[key]
    if not value:
      parsed[key] = True
    elif isinstance(default, bool):
      parsed[key] = value.lower() in ("1", "true", "yes")
    else:
      parsed[key] = type(default)(value)
  return ml_collections.ConfigDict(parsed)


def make_smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks any LM config to a run of a few seconds that still exercises everything."""
  config.model.num_layers = min(config.model.num_layers, 2)
  config.model.num_heads = min(config.model.num_heads, 2)
  config.model.embed_dim = min(config.model.embed_dim, 64)
  config.model.mlp_dim = 4 * config.model.embed_dim
  config.data.seq_len = min(config.data.seq_len, 32)
  config.model.max_len = config.data.seq_len
  config.data.batch_size = min(config.data.batch_size, 8)
  config.optim.warmup_steps = 5
  config.train.num_steps = 40
  config.train.log_every = 10
  config.train.eval_every = 20
  config.train.checkpoint_every = 20
  config.train.steps_per_call = 10
  config.sample.max_new_tokens = 50
  return config


def sharding(rules: str = "dp", data: int = -1, fsdp: int = 1, tensor: int = 1,
             expert: int = 1, cpu_devices: int = 0) -> ml_collections.ConfigDict:
  """The `sharding` section (lm/sharding.py): mesh sizes (-1 = the rest) and rule preset.

  cpu_devices > 0 starts JAX with that many CPU devices (one per core: data parallel).
  """
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor, expert=expert,
                                        rules=rules, overrides="", cpu_devices=cpu_devices))


def optim(**overrides) -> ml_collections.ConfigDict:
  """The `optim` section (lm.config.OptimConfig): AdamW, warmup + cosine, clipping.

  Every key is spelled out so `--config.optim.x=...` overrides work; a config passes
  only what differs from the classic small CPU recipe.
  """
  section = ml_collections.ConfigDict(dict(
      lr=1e-3, min_lr=1e-4, warmup_steps=100, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.1,
      grad_clip=1.0,
      ema_decay=0.0,  # > 0 also evaluates an EMA of the params (val_loss_ema)
      nonfinite="stop",  # stop | skip (skip NaN/inf updates and count them)
      max_nonfinite=10))
  unknown = sorted(set(overrides) - set(section))
  if unknown:
    raise ValueError(f"unknown optim keys {unknown}")
  section.update(overrides)
  return section


def train(**overrides) -> ml_collections.ConfigDict:
  """The `train` section (lm.config.TrainConfig), every key with the dataclass's default, so
  `--config.train.x=...` overrides work; a config passes only what differs."""
  import dataclasses

  from lm.config import TrainConfig
  section = ml_collections.ConfigDict({f.name: f.default for f in dataclasses.fields(TrainConfig)})
  unknown = sorted(set(overrides) - set(section))
  if unknown:
    raise ValueError(f"unknown train keys {unknown}")
  section.update(overrides)
  return section


def adaptation(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds the adaptation keys (docs/adaptation.md), so any LM config takes
  `--config.init_from=DIR`, `--config.trainable="('lora_',)"` and the PEFT model options
  (`--config.model.lora_rank=2`, adapter_dim, prefix_len, prefix_hidden, prompt_len, ...)."""
  import dataclasses

  from lm.layers.peft import PEFTFields
  config.init_from = config.get("init_from", "")  # a trained workdir to start from
  config.trainable = tuple(config.get("trainable", ()))  # regexes; () = everything trains
  for field in dataclasses.fields(PEFTFields):
    if field.name not in config.model:
      config.model[field.name] = field.default
  return config

"""Loading a trained decoder (any causal task: causal_lm, sft, distill, dpo, a GRPO run) as a
policy, teacher or frozen reference, and the per-token log-probabilities they are scored by.

A post-training run that is not a supervised Task (GRPO) writes `policy.json` (the
model's ExperimentConfig) next to its own config.json; its checkpoints hold the same
TrainState layout as a supervised run's, so it can be loaded the same way.
"""

import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm import config as config_lib
from lm import workdir as workdir_lib
from lm.data.tokenizers import load_tokenizer
from lm.errors import UserError
from lm.models.registry import build_model
from lm.post_training.losses import token_logprobs

POLICY_CONFIG = "policy.json"
DECODER_TASKS = ("causal_lm", "sft", "distill", "dpo")


@dataclasses.dataclass
class Policy:
  config: config_lib.ExperimentConfig
  model: object
  params: object
  tokenizer: object
  step: int


def model_config_path(workdir: str) -> str:
  for name in (POLICY_CONFIG, workdir_lib.CONFIG):
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      return path
  raise UserError(f"{workdir} is not a trained workdir: {workdir_lib.CONFIG} is missing")


def init_boxed(model, max_len: int, seed: int):
  return model.init(jax.random.key(seed), jnp.zeros((1, max_len), jnp.int32))["params"]


def load_policy(workdir: str) -> Policy:
  """Config, model, tokenizer and the latest checkpoint's params (on one device).

  Only the parameters are read, by the checkpoint's own metadata: the run's optimizer
  state (whose layout depends on the optimizer options of the code that wrote it) is not
  needed to use the model, and the shapes are checked against the model instead."""
  config = config_lib.load_json(model_config_path(workdir))
  if config.family != "gpt" or config.task not in DECODER_TASKS:
    raise UserError(f"{workdir} holds a {config.family}/{config.task} run; post-training needs "
                    f"a gpt decoder trained with one of {DECODER_TASKS}")
  model = build_model(config.family, config.model)
  expected = nn.meta.unbox(jax.eval_shape(lambda: init_boxed(model, config.model.max_len, 0)))
  params, step = workdir_lib.restore_params(workdir, expected)
  tokenizer = load_tokenizer(os.path.join(workdir, workdir_lib.TOKENIZER))
  return Policy(config, model, params, tokenizer, step)


def boxed_like(model, max_len: int, params, seed: int = 0):
  """`params` boxed with the logical axis names `model.init` gives (for a Task's
  init_params, whose result the trainer shards)."""
  boxed = init_boxed(model, max_len, seed)
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731
  return jax.tree.map(lambda box, value: box.replace_boxed(jnp.asarray(value))
                      if is_box(box) else jnp.asarray(value), boxed, params, is_leaf=is_box)


def sequence_token_logprobs(model, params, tokens_BN):
  """log p(tokens[:, t+1] | tokens[:, :t+1]) for t = 0..N-2: (B, N-1)."""
  logits_BTV, _ = model.apply({"params": params}, tokens_BN[:, :-1])
  return token_logprobs(logits_BTV, tokens_BN[:, 1:])

"""Loading a trained decoder (any causal task: causal_lm, sft, distill, dpo, a GRPO run) as a
policy, teacher or frozen reference, and the per-token log-probabilities they are scored by.

A post-training run that is not a supervised Task (GRPO) writes `policy.json` (the
model's ExperimentConfig) next to its own config.json; its checkpoints hold the same
TrainState layout as a supervised run's, so it can be loaded the same way.
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm import workdir as workdir_lib
from lm.errors import UserError
from lm.post_training.losses import token_logprobs

POLICY_CONFIG = "policy.json"
DECODER_TASKS = ("causal_lm", "sft", "distill", "dpo")


Policy = workdir_lib.TrainedModel


def model_config_path(workdir: str) -> str:
  for name in (POLICY_CONFIG, workdir_lib.CONFIG):
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      return path
  raise UserError(f"{workdir} is not a trained workdir: {workdir_lib.CONFIG} is missing")


def init_boxed(model, max_len: int, seed: int):
  return model.init(jax.random.key(seed), jnp.zeros((1, max_len), jnp.int32))["params"]


def load_policy(workdir: str) -> Policy:
  """A gpt decoder (any of DECODER_TASKS, or a GRPO run's policy.json) as a policy,
  teacher or frozen reference."""
  return workdir_lib.load_trained(workdir, model_config_path(workdir), tasks=DECODER_TASKS,
                                  families=("gpt",))


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

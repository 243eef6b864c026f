"""What a run keeps in its workdir besides checkpoints, and loading a trained model back.

WORKDIR/config.json       the resolved ExperimentConfig (vocab size filled in)
WORKDIR/tokenizer.json    the tokenizer, so resumes and sampling use the same vocab
WORKDIR/token_prior.json  unigram log-probs of the training split (scores the first token)

`load_trained` serves code that needs a causal LM's model and params; `--mode=sample/score`
load every kind of workdir through lm/trained.py.
"""

import dataclasses
import json
import os
import tempfile

import flax.linen as nn
import jax
import numpy as np

from lm import config as config_lib
from lm.data.tokenizers import load_tokenizer
from lm.errors import UserError
from lm.models.registry import build_model

CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
TOKEN_PRIOR = "token_prior.json"


def ensure_writable(workdir: str):
  """Creates the workdir if needed; a one-line error if it cannot be created or written."""
  try:
    os.makedirs(workdir, exist_ok=True)
    # A private, self-deleting probe: the processes of a multi-process run check at once.
    with tempfile.TemporaryFile(dir=workdir) as f:
      f.write(b"ok")
  except OSError as e:
    raise UserError(f"workdir {workdir} is not writable: {e.strerror or e}") from None


def unigram_logprobs(ids: np.ndarray, vocab_size: int) -> np.ndarray:
  """Add-one smoothed unigram log-probabilities (every token gets non-zero mass)."""
  counts = np.bincount(ids, minlength=vocab_size).astype(np.float64) + 1.0
  return np.log(counts / counts.sum())


def save_token_prior(workdir: str, logprobs: np.ndarray):
  with open(os.path.join(workdir, TOKEN_PRIOR), "w") as f:
    json.dump(logprobs.tolist(), f)


@dataclasses.dataclass
class TrainedModel:
  config: config_lib.ExperimentConfig
  model: object
  params: object
  tokenizer: object
  token_prior: np.ndarray
  step: int


def restore_params(workdir: str, expected=None):
  """(params, step) of a workdir's newest intact checkpoint, onto one device whatever mesh
  trained it: the parameters alone, read by the checkpoint's own metadata (so any
  optimizer-state layout will do), checked against `expected` shapes when given."""
  from lm.train.checkpoint import Checkpointer  # local: lm.train.trainer imports this module
  checkpointer = Checkpointer(workdir, create=False)
  try:
    if checkpointer.latest_step() is None:
      raise UserError(f"no checkpoint in {workdir}/checkpoints: train first, e.g. "
                      f"python -m experiments.run --config=configs/shakespeare_char.py "
                      f"--workdir={workdir}")
    return checkpointer.restore_params(expected=expected)
  finally:
    checkpointer.close()


def load_trained(workdir: str) -> TrainedModel:
  """Config, tokenizer and the latest checkpoint's params of a causal LM run (finished or
  running)."""
  # Local imports: lm.tasks.causal_lm imports this module.
  from lm.tasks.causal_lm import init_params

  config_path = os.path.join(workdir, CONFIG)
  if not os.path.exists(config_path):
    raise UserError(f"{workdir} is not a trained workdir: {CONFIG} is missing")
  config = config_lib.load_json(config_path)
  if config.task not in ("causal_lm", "tbptt_lm"):
    raise UserError(f"{workdir} holds a {config.task!r} run; this needs a causal language "
                    f"model (causal_lm or tbptt_lm)")
  model = build_model(config.family, config.model)
  expected = nn.meta.unbox(jax.eval_shape(lambda: init_params(model, config.data.seq_len, 0)))
  params, step = restore_params(workdir, expected)
  tokenizer = load_tokenizer(os.path.join(workdir, TOKENIZER))
  with open(os.path.join(workdir, TOKEN_PRIOR)) as f:
    prior = np.asarray(json.load(f), np.float64)
  return TrainedModel(config, model, params, tokenizer, prior, step)

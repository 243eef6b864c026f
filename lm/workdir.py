"""What a run keeps in its workdir besides checkpoints, and loading a trained model back.

WORKDIR/config.json       the resolved ExperimentConfig (vocab size filled in)
WORKDIR/tokenizer.json    the tokenizer, so resumes and sampling use the same vocab
WORKDIR/token_prior.json  unigram log-probs of the training split (scores the first token)

`load_trained` gives a decoder run's model and params to everything that uses one
(sampling, scoring, post-training, teachers, in-context learning); `--mode=sample/score`
reach every kind of workdir through lm/trained.py.
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
  token_prior: np.ndarray  # log-probs that score a text's first token
  prior_name: str          # what token_prior is, for printing
  step: int


def restore_params(workdir: str):
  """(params, step) of a workdir's newest intact checkpoint, onto one device whatever mesh
  trained it: the parameters alone, read by the checkpoint's own metadata (so any
  optimizer-state layout will do)."""
  from lm.train.checkpoint import Checkpointer  # local: lm.train.trainer imports this module
  checkpointer = Checkpointer(workdir, create=False)
  try:
    if checkpointer.latest_step() is None:
      raise UserError(f"no checkpoint in {workdir}/checkpoints: train first, e.g. "
                      f"python -m experiments.run --config=configs/shakespeare_char.py "
                      f"--workdir={workdir}")
    return checkpointer.restore_params()
  finally:
    checkpointer.close()


CAUSAL_TASKS = ("causal_lm", "tbptt_lm")


def load_trained(workdir: str, config_path: str | None = None,
                 tasks: tuple[str, ...] | None = CAUSAL_TASKS,
                 families: tuple[str, ...] | None = None) -> TrainedModel:
  """Config, tokenizer and the latest checkpoint's params of a decoder run (finished or
  running), onto one device, checked against the shapes its config builds.

  Only the params are read, by the checkpoint's own metadata: the optimizer state (whose
  layout depends on the optimizer options of the code that wrote it) is never needed.
  `config_path` defaults to WORKDIR/config.json (GRPO keeps its policy's config apart);
  `tasks` and `families` limit which runs are accepted (None: any). Training-only heads
  (the MTP modules) are dropped: inference uses the main next-token head. Sampling and
  scoring, post-training starts, teachers and in-context learning all load through here."""
  # Local imports: lm.tasks.causal_lm imports this module.
  from lm.objectives_mtp import gpt_params
  from lm.tasks.causal_lm import init_params
  from lm.train.checkpoint import check_param_shapes

  config_path = config_path or os.path.join(workdir, CONFIG)
  if not os.path.exists(config_path):
    raise UserError(f"{workdir} is not a trained workdir: {os.path.basename(config_path)} "
                    f"is missing")
  config = config_lib.load_json(config_path)
  if tasks is not None and config.task not in tasks:
    raise UserError(f"{workdir} holds a {config.task!r} run; this needs a decoder trained "
                    f"with one of {tasks}")
  if families is not None and config.family not in families:
    raise UserError(f"{workdir} holds a {config.family!r} model; this needs one of {families}")
  model = build_model(config.family, config.model)
  params, step = restore_params(workdir)
  params = gpt_params(params)
  expected = nn.meta.unbox(jax.eval_shape(lambda: init_params(model, config.data.seq_len, 0)))
  check_param_shapes(expected, params, f"{workdir}/checkpoints/{step}")
  tokenizer = load_tokenizer(os.path.join(workdir, TOKENIZER))
  prior, prior_name = _first_token_prior(workdir, tokenizer.vocab_size)
  return TrainedModel(config, model, params, tokenizer, prior, prior_name, step)


def _first_token_prior(workdir: str, vocab_size: int) -> tuple[np.ndarray, str]:
  path = os.path.join(workdir, TOKEN_PRIOR)
  if not os.path.exists(path):  # e.g. a GRPO run: the first token gets 1 / V
    return np.full(vocab_size, -np.log(vocab_size)), "uniform prior"
  with open(path) as f:
    prior = np.asarray(json.load(f), np.float64)
  if np.allclose(prior, -np.log(vocab_size)):
    return prior, "uniform prior"
  return prior, "unigram prior of the training split"

"""Probing a pretrained workdir: frozen features of each line, a linear probe per pooling.

How much speaker identity is linearly decodable from what a model learned without
labels? Each pooling the family offers (gpt: last, mean; bert: cls, mean; see
lm/tasks/classify.py) gives a (lines, D) feature matrix from the frozen backbone; a
softmax-regression probe (lm/eval/probe.py) is fit on the training lines and scored on
held-out speeches.
"""

import os

import jax
import numpy as np

from lm import config as config_lib
from lm.adapt.pretrained import load_params
from lm.data.corpus import read_text
from lm.data.speakers import speaker_splits
from lm.eval.probe import fit_linear_probe
from lm.models.registry import build_model
from lm.tasks.classify import POOLINGS, encode_lines, pooled_features, tokenizer_for


def features(model, params, family: str, pooling: str, tokens, valid, batch_size: int = 256):
  """(N, D) pooled features of the frozen model, computed in batches."""
  @jax.jit
  def run(tokens_BT, valid_BT):
    return model.apply({"params": params}, tokens_BT, valid_BT,
                       method=lambda m, t, v: pooled_features(m, family, pooling, t, v))
  out = []
  for i in range(0, len(tokens), batch_size):
    t, v = tokens[i:i + batch_size], valid[i:i + batch_size]
    n = len(t)
    if n < batch_size:  # one compiled shape
      t = np.concatenate([t, np.repeat(t[:1], batch_size - n, 0)])
      v = np.concatenate([v, np.repeat(v[:1], batch_size - n, 0)])
    out.append(np.asarray(run(t, v))[:n])
  return np.concatenate(out)


def probe_workdir(workdir: str, num_speakers: int = 8, seq_len: int = 48, l2: float = 1e-3,
                  hidden: int = 0) -> dict:
  """{pooling: probe result} for every pooling of the workdir's family."""
  values, params, step = load_params(workdir)
  config = config_lib.from_dict(values)
  family = config.family
  model = build_model(family, config.model)
  params = jax.device_put(params)
  text = read_text(config.data.path)
  tokenizer = tokenizer_for(config, workdir, text)  # the workdir's own, as the model saw text
  splits = speaker_splits(text, num_speakers)
  seq_len = min(seq_len, config.model.max_len)
  encoded = {s: encode_lines(splits[s][0], tokenizer, family, seq_len) for s in splits}
  results = {"workdir": os.path.abspath(workdir), "step": step, "family": family,
             "num_classes": num_speakers, "train_lines": len(splits["train"][1]),
             "val_lines": len(splits["val"][1])}
  for pooling in POOLINGS[family]:
    feats = {s: features(model, params, family, pooling, *encoded[s]) for s in splits}
    fit = fit_linear_probe(feats["train"], splits["train"][1], feats["val"], splits["val"][1],
                           num_speakers, hidden=hidden, l2=l2)
    results[pooling] = {k: fit[k] for k in ("accuracy", "train_accuracy", "val_loss")}
    results[pooling]["feature_dim"] = int(feats["train"].shape[1])
  return results


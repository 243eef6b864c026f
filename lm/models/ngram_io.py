"""A fitted `NGramLM` saved for `--mode=sample/score` (`ngram_model.npz`, NumPy arrays only),
and the n-gram text conventions (lines as sentences, ids back to text).

The file holds what querying needs (`NGramLM.logprobs`, `next_logprobs`): the unigram
probabilities and counts and, per order n >= 2, the sorted n-gram keys with either
Kneser-Ney's u(w | h), gamma(h) and context totals or add-k's raw counts and totals.
Fitting-only arrays (suffix rows, adjusted counts) are left out: a reloaded model scores
and samples exactly as the fitted one but cannot rewrite model.arpa (the run wrote it).
Saved compressed (the default char 6-gram: ~2 MB) and read with allow_pickle=False.
"""

import dataclasses
import json

import numpy as np

from lm.errors import UserError
from lm.models.ngram import NGramConfig, NGramLM, _Order

FILE = "ngram_model.npz"
_FIELDS = {"kneser_ney": ("keys_G", "prob_G", "gamma_C", "total_C"),
           "add_k": ("keys_G", "counts_G", "total_C")}


def save_ngram(model: NGramLM, path: str):
  meta = {"config": dataclasses.asdict(model.config), "vocab_size": model.vocab_size,
          "bos": model.bos, "eos": model.eos, "discount_fallback": model.discount_fallback,
          "discounts": {str(n): list(d) for n, d in model.discounts().items()}}
  arrays = {"meta": np.array(json.dumps(meta)), "unigram_prob_V": model.unigram_prob_V,
            "unigram_counts_V": model.unigram_counts_V}
  for n, order in enumerate(model.orders, start=2):
    for field in _FIELDS[model.config.smoothing]:
      arrays[f"order_{n}.{field}"] = getattr(order, field)
  with open(path, "wb") as f:  # a file object: savez would append ".npz" to a path
    np.savez_compressed(f, **arrays)


def load_ngram(path: str) -> NGramLM:
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {name: data[name] for name in data.files}
  except (OSError, ValueError) as e:
    raise UserError(f"n-gram model file {path} is unreadable: {e}") from None
  meta = json.loads(str(arrays["meta"]))
  config = NGramConfig(**meta["config"])
  model = NGramLM(config, meta["vocab_size"], meta["bos"], meta["eos"])
  model.unigram_prob_V = arrays["unigram_prob_V"]
  model.unigram_counts_V = arrays["unigram_counts_V"]
  model.discount_fallback = meta["discount_fallback"]
  discounts = {int(n): tuple(d) for n, d in meta["discounts"].items()}
  model.unigram_discounts = discounts.get(1)
  for n in range(2, config.order + 1):
    fields = {f: arrays[f"order_{n}.{f}"] for f in _FIELDS[config.smoothing]}
    fields.setdefault("counts_G", None)
    model.orders.append(_Order(suffix_G=None, discounts=discounts.get(n, ()), **fields))
  return model


def sentence_lines(text: str) -> list[str]:
  """Lines as `lmplz` reads them: a final newline does not start an empty sentence."""
  lines = text.split("\n")
  return lines[:-1] if text.endswith("\n") else lines


def decode_ids(tokenizer, ids, bos: int | None, eos: int | None) -> str:
  """Tokenizer text of n-gram ids; in sentence mode </s> ends a line and <s> is dropped."""
  lines, current = [], []
  for i in np.asarray(ids).tolist():
    if i == eos:
      lines.append(tokenizer.decode(current))
      current = []
    elif i != bos:
      current.append(i)
  return "\n".join(lines + [tokenizer.decode(current)])

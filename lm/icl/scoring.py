"""Batched scorers for ICL prompts: greedy exact match and option log-likelihoods.

Legend: B batch, W padded width (tokens), P prompt length.

`greedy_continuations` decodes with the KV-cache loop of lm/sampling.py
(`generate_batch`, temperature 0); that loop needs one prompt length per batch, so
prompts are grouped by length and each batch is padded to one of two sizes (each size
compiles once: compiling dominates a small evaluation on CPU).
`continuation_logprobs` is the chain rule of lm/scoring.py, batched: log p(c | prompt) =
sum_i log p(c_i | prompt, c_<i), from one forward pass of right-padded rows (a causal
model never looks right, so the padding changes nothing).
"""

import functools
from collections.abc import Sequence

import jax
import numpy as np

from lm.errors import UserError
from lm.post_training.losses import token_logprobs
from lm.sampling import generate_batch

_WIDTH_STEP = 32  # option rows are padded to a multiple of this (one compile per width)


def greedy_continuations(model, params, prompts: Sequence[np.ndarray], max_new_tokens: int,
                         batch_size: int = 32, small_batch: int = 8) -> list[np.ndarray]:
  """The first `max_new_tokens` greedy tokens after each prompt (each <= model.max_len)."""
  max_len = model.config.max_len
  by_length: dict[int, list[int]] = {}
  for i, p in enumerate(prompts):
    if not 0 < len(p) <= max_len:
      raise UserError(f"prompt {i} has {len(p)} tokens; the model takes 1..{max_len}")
    by_length.setdefault(len(p), []).append(i)
  out: list[np.ndarray] = [np.zeros(0, np.int32)] * len(prompts)
  for _, rows in sorted(by_length.items()):
    for start in range(0, len(rows), batch_size):
      chunk = rows[start:start + batch_size]
      width = small_batch if len(chunk) <= small_batch else batch_size
      batch = np.stack([prompts[i] for i in chunk] + [prompts[chunk[0]]] * (width - len(chunk)))
      tokens = np.asarray(generate_batch(model, params, batch, max_new_tokens=max_new_tokens,
                                         temperature=0.0))
      for row, i in enumerate(chunk):
        out[i] = tokens[row]
  return out


@functools.partial(jax.jit, static_argnames=("model",))
def _target_logprobs(model, params, tokens_BW):
  """(B, W-1): log p(tokens[:, t+1] | tokens[:, :t+1])."""
  logits_BTV, _ = model.apply({"params": params}, tokens_BW[:, :-1])
  return token_logprobs(logits_BTV, tokens_BW[:, 1:])


def continuation_logprobs(model, params, prompts: Sequence[np.ndarray],
                          continuations: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
  """log p(continuation | prompt) for each pair; prompt + continuation <= model.max_len."""
  if len(prompts) != len(continuations):
    raise UserError(f"{len(prompts)} prompts but {len(continuations)} continuations")
  max_len = model.config.max_len
  lengths = []
  for i, (p, c) in enumerate(zip(prompts, continuations)):
    if len(p) == 0 or len(c) == 0 or len(p) + len(c) > max_len:
      raise UserError(f"pair {i}: prompt {len(p)} + continuation {len(c)} tokens must be "
                      f"non-empty and fit model.max_len={max_len}")
    lengths.append(len(p) + len(c))
  order = np.argsort(lengths, kind="stable")  # similar widths batch together
  out = np.zeros(len(prompts), np.float64)
  for start in range(0, len(order), batch_size):
    chunk = order[start:start + batch_size]
    width = min(max_len, -(-max(lengths[i] for i in chunk) // _WIDTH_STEP) * _WIDTH_STEP)
    tokens_BW = np.zeros((batch_size, width), np.int32)
    for row, i in enumerate(chunk):
      tokens_BW[row, :lengths[i]] = np.concatenate([prompts[i], continuations[i]])
    logp_BT = np.asarray(_target_logprobs(model, params, tokens_BW), np.float64)
    for row, i in enumerate(chunk):
      # Continuation token j sits at position P + j and is predicted by target row P + j - 1.
      first = len(prompts[i]) - 1
      out[i] = logp_BT[row, first:first + len(continuations[i])].sum()
  return out

"""Chain-rule scoring: log p(x_1..L) = log p(x_1) + sum_i log p(x_i | x_<i).

The model conditions on at most `max_len` tokens; longer texts are scored with
overlapping windows so every token after the first window sees >= max_len/2 context.
The first token has no context inside the model, so its probability comes from a
prior (the unigram distribution of the training split, saved in the workdir).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lm.errors import UserError


@functools.partial(jax.jit, static_argnames=("model",))
def _window_logprobs(model, params, window_BS):
  logits_BSV, _ = model.apply({"params": params}, window_BS)
  return jax.nn.log_softmax(logits_BSV, axis=-1)


def next_token_logprobs(model, params, ids) -> np.ndarray:
  """(L-1, V) array: row i is log p(. | x_0..x_i), the distribution of token i+1."""
  ids = np.asarray(ids, np.int32)
  max_len = model.config.max_len
  if max_len < 2:
    raise UserError(f"scoring needs model.max_len >= 2 (one token of context), got {max_len}")
  num = len(ids) - 1
  if num <= 0:
    return np.zeros((0, model.config.vocab_size), np.float32)
  out = np.zeros((num, model.config.vocab_size), np.float32)
  stride = max(1, max_len // 2)
  start, scored = 0, 0  # `scored`: rows of `out` already filled
  while scored < num:
    window = ids[start:start + max_len]
    padded = np.zeros((1, max_len), np.int32)
    padded[0, :len(window)] = window
    logp_SV = np.asarray(_window_logprobs(model, params, jnp.asarray(padded)))[0]
    # Row j of the window predicts ids[start + j + 1]; keep rows not yet scored.
    last = min(len(window) - 1, num - start)
    first = scored - start
    out[scored:start + last] = logp_SV[first:last]
    scored = start + last
    start += stride
  return out


def token_logprobs(model, params, ids, first_token_logprobs: np.ndarray | None = None):
  """Per-token log p(x_i | x_<i) for every token; entry 0 uses the prior if given."""
  ids = np.asarray(ids, np.int32)
  rows = next_token_logprobs(model, params, ids)
  per_token = rows[np.arange(len(ids) - 1), ids[1:]] if len(ids) > 1 else np.zeros(0)
  first = first_token_logprobs[ids[0]] if first_token_logprobs is not None else np.nan
  return np.concatenate([[first], per_token]).astype(np.float64)

"""Autoregressive sampling with a KV cache, inside one jitted loop.

Semantics of the knobs (the lecture's):
- `top_k`, `top_p` pick which tokens may be emitted, from the model's own
  distribution (top-k first, then the smallest nucleus of mass >= top_p).
- `temperature` reshapes the distribution over the allowed tokens:
  0 = argmax (deterministic), 1 = the model as is, inf = uniform.

Legend: B batch, V vocab, S cache length (= the model's max_len).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lm.errors import UserError

_TOP_P_SLACK = 1e-6


def allowed_tokens(logits_BV, top_k: int, top_p: float):
  """Boolean mask of tokens that survive top-k (0 = off) then top-p (1 = off)."""
  vocab = logits_BV.shape[-1]
  keep_BV = logits_BV > -jnp.inf  # probability-0 tokens are never allowed (even at T = inf)
  if 0 < top_k < vocab:
    _, idx_Bk = jax.lax.top_k(logits_BV, top_k)
    keep_BV &= jnp.zeros(logits_BV.shape, bool).at[jnp.arange(logits_BV.shape[0])[:, None],
                                                    idx_Bk].set(True)
  probs_BV = jax.nn.softmax(jnp.where(keep_BV, logits_BV, -jnp.inf), axis=-1)
  order_BV = jnp.argsort(-probs_BV, axis=-1)
  sorted_BV = jnp.take_along_axis(probs_BV, order_BV, axis=-1)
  mass_before_BV = jnp.cumsum(sorted_BV, axis=-1) - sorted_BV
  # Keep the smallest prefix with mass >= top_p. The slack absorbs float32 rounding at
  # the exact boundary (0.5 + 0.3 = 0.79999995); top_p = 1 means off, and the most
  # likely token is always kept.
  keep_sorted_BV = (mass_before_BV < top_p - _TOP_P_SLACK) | (top_p >= 1.0)
  keep_sorted_BV = keep_sorted_BV.at[:, 0].set(True)
  nucleus_BV = jnp.zeros_like(keep_BV).at[jnp.arange(logits_BV.shape[0])[:, None],
                                          order_BV].set(keep_sorted_BV)
  return keep_BV & nucleus_BV


def sample_logits(logits_BV, rng, temperature, top_k: int = 0, top_p: float = 1.0):
  """Draws one token per row. `temperature` may be traced; 0 and inf are exact."""
  logits_BV = logits_BV.astype(jnp.float32)
  keep_BV = allowed_tokens(logits_BV, top_k, top_p)
  temperature = jnp.asarray(temperature, jnp.float32)
  safe_t = jnp.where(temperature == 0, 1.0, temperature)  # no division by zero
  scaled_BV = jnp.where(keep_BV, logits_BV / safe_t, -jnp.inf)  # /inf -> 0: uniform
  sampled_B = jax.random.categorical(rng, scaled_BV, axis=-1)
  greedy_B = jnp.argmax(jnp.where(keep_BV, logits_BV, -jnp.inf), axis=-1)
  return jnp.where(temperature == 0, greedy_B, sampled_B).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "top_k"))
def _generate(model, params, context_BS, context_len, rng, temperature, top_p, *,
              max_new_tokens: int, top_k: int):
  """context_BS holds the last `context_len` prompt tokens, left-aligned, padded to S."""
  batch, max_len = context_BS.shape
  keep = max(1, max_len // 2)  # context kept when the cache overflows

  def prefill(window_BS, length):
    logits_BSV, caches = model.apply({"params": params}, window_BS,
                                     caches=model.init_cache(batch, max_len), cache_index=0)
    return jax.lax.dynamic_index_in_dim(logits_BSV, length - 1, axis=1, keepdims=False), caches

  logits_BV, caches = prefill(context_BS, context_len)
  history_BN = jnp.zeros((batch, max_len + max_new_tokens), jnp.int32)
  history_BN = jax.lax.dynamic_update_slice_in_dim(history_BN, context_BS, 0, axis=1)

  def step(i, carry):
    history_BN, caches, cache_len, logits_BV, rng = carry
    rng, sample_rng = jax.random.split(rng)
    token_B = sample_logits(logits_BV, sample_rng, temperature, top_k, top_p)
    pos = context_len + i
    history_BN = jax.lax.dynamic_update_slice_in_dim(history_BN, token_B[:, None], pos, axis=1)

    def decode_one(_):
      logits_B1V, new_caches = model.apply({"params": params}, token_B[:, None], caches=caches,
                                           cache_index=cache_len)
      return logits_B1V[:, 0], new_caches, cache_len + 1

    def refill(_):  # cache full: restart it from the most recent `keep` tokens
      window_BK = jax.lax.dynamic_slice_in_dim(history_BN, pos + 1 - keep, keep, axis=1)
      window_BS = jnp.zeros((batch, max_len), jnp.int32).at[:, :keep].set(window_BK)
      new_logits_BV, new_caches = prefill(window_BS, keep)
      return new_logits_BV, new_caches, jnp.int32(keep)

    logits_BV, caches, cache_len = jax.lax.cond(cache_len < max_len, decode_one, refill, None)
    return history_BN, caches, cache_len, logits_BV, rng

  carry = (history_BN, caches, jnp.int32(context_len), logits_BV, rng)
  history_BN = jax.lax.fori_loop(0, max_new_tokens, step, carry)[0]
  return jax.lax.dynamic_slice_in_dim(history_BN, context_len, max_new_tokens, axis=1)


def generate(model, params, prompt_ids, *, max_new_tokens: int, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0, num_samples: int = 1) -> np.ndarray:
  """Returns (num_samples, max_new_tokens) token ids continuing `prompt_ids`."""
  prompt_ids = np.asarray(prompt_ids, np.int32)
  if prompt_ids.size == 0:
    raise UserError("the prompt is empty: give at least one token of context")
  max_len = model.config.max_len
  context = prompt_ids[-max_len:]  # longer prompts: keep the most recent max_len tokens
  context_BS = np.zeros((num_samples, max_len), np.int32)
  context_BS[:, :len(context)] = context
  if max_new_tokens == 0:
    return np.zeros((num_samples, 0), np.int32)
  out = _generate(model, params, jnp.asarray(context_BS), jnp.int32(len(context)),
                  jax.random.key(seed), jnp.float32(temperature), jnp.float32(top_p),
                  max_new_tokens=max_new_tokens, top_k=int(top_k))
  return np.asarray(out)


def generate_batch(model, params, prompts_BP, *, max_new_tokens: int, temperature: float = 1.0,
                   top_k: int = 0, top_p: float = 1.0, rng=None) -> jax.Array:
  """(B, max_new_tokens) continuations of B different prompts of one length P <= max_len.

  The same jitted KV-cache loop as `generate`; `rng` is a key (None: key(0)). Returns a
  device array so callers inside a loop (rollouts) need not copy to the host.
  """
  prompts_BP = jnp.asarray(prompts_BP, jnp.int32)
  batch, length = prompts_BP.shape
  max_len = model.config.max_len
  if not 0 < length <= max_len:
    raise UserError(f"prompts of length {length} must be 1..{max_len} tokens (model.max_len)")
  context_BS = jnp.zeros((batch, max_len), jnp.int32).at[:, :length].set(prompts_BP)
  rng = jax.random.key(0) if rng is None else rng
  return _generate(model, params, context_BS, jnp.int32(length), rng, jnp.float32(temperature),
                   jnp.float32(top_p), max_new_tokens=max_new_tokens, top_k=int(top_k))

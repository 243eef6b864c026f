"""Greedy and beam-search decoding for encoder-decoder models, inside one jitted loop.

Legend: B batch, K beams, S source length, T generated length (`max_len`), V vocab,
C candidates (2K).

The source is encoded once; the decoder then runs one token per step with its
self-attention KV caches (`model.init_cache`), written at `cache_index = step`. The
first step also projects the encoder output to every layer's cross-attention
keys/values (sown in the `CROSS_KV` collection, lm/layers/attention.py); later steps
read those instead of the encoder output, so the projections run once per source
(`cache_cross_kv=False` recomputes them every step, kept for experiments/bench_decoding.py;
inside this one jitted loop XLA hoists the recomputation anyway, so the cache makes the
saving a property of the code, and it saves real work where steps are separate calls).
A hypothesis ends at its first `eos_id` (included in the output) or after `max_len`
tokens; positions after the end hold `pad_id`. Scores are the model's summed
log-probabilities, divided in beam search by GNMT's length penalty
lp(n) = ((5 + n) / 6) ** length_penalty (Wu et al. 2016), n counting the EOS;
`length_penalty = 0` ranks by log-probability alone.

Beam search keeps K live hypotheses and a pool of the K best finished ones. Each step
ranks the 2K best extensions of the live beams (at most K of them end in EOS, so K
always stay live). An extension ending in EOS enters the pool only if it ranks among
the top K (as in fairseq / Hugging Face), which makes beam 1 exactly greedy; at step
`max_len` every extension ends. The loop stops early once no live beam can beat the
pool's K-th score: future log-probabilities only fall and lp grows with length, so a
live beam's best possible score is its log-probability / lp(max_len).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lm.errors import UserError
from lm.layers.attention import CROSS_KV
from lm.models.encdec import cross_kv_of


def length_penalty_factor(length, alpha: float):
  """GNMT: ((5 + length) / 6) ** alpha; scores are log-probability / this."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _check(model, max_len: int):
  if max_len <= 0:
    raise UserError(f"max_len must be positive, got {max_len}")
  if max_len > model.config.max_target_len:
    raise UserError(f"max_len={max_len} exceeds the model's max_target_len="
                    f"{model.config.max_target_len}")


def _decode_step(model, params, tokens_B, memory, inputs_BS, caches, index):
  """One decoder token per row; `memory` is the encoder output or its cross K/V list."""
  logits_B1V, caches = model.apply({"params": params}, tokens_B[:, None], memory, inputs_BS,
                                   caches=caches, cache_index=index, method="decode")
  return logits_B1V[:, 0], caches


def _first_step(model, params, tokens_B, encoded_BSD, inputs_BS, caches, cache_cross_kv: bool):
  """Step 0: (logits_BV, caches, memory for the later steps)."""
  if not cache_cross_kv:
    logits_BV, caches = _decode_step(model, params, tokens_B, encoded_BSD, inputs_BS, caches, 0)
    return logits_BV, caches, encoded_BSD
  (logits_B1V, caches), sown = model.apply(
      {"params": params}, tokens_B[:, None], encoded_BSD, inputs_BS, caches=caches,
      cache_index=0, method="decode", mutable=[CROSS_KV])
  return logits_B1V[:, 0], caches, cross_kv_of(sown)


@functools.partial(jax.jit, static_argnames=("model", "max_len", "eos_id", "pad_id",
                                             "cache_cross_kv"))
def _greedy(model, params, inputs_BS, *, max_len: int, eos_id: int, pad_id: int,
            cache_cross_kv: bool):
  B = inputs_BS.shape[0]
  encoded_BSD = model.apply({"params": params}, inputs_BS, method="encode")

  def advance(i, logits_BV, tokens_BT, done_B):
    next_B = jnp.where(done_B, pad_id, jnp.argmax(logits_BV, axis=-1).astype(jnp.int32))
    tokens_BT = jax.lax.dynamic_update_slice_in_dim(tokens_BT, next_B[:, None], i, axis=1)
    return tokens_BT, done_B | (next_B == eos_id), next_B

  start_B = jnp.full((B,), model.config.decoder_start_id, jnp.int32)
  logits_BV, caches, memory = _first_step(model, params, start_B, encoded_BSD, inputs_BS,
                                          model.init_cache(B, max_len), cache_cross_kv)
  tokens_BT, done_B, last_B = advance(0, logits_BV, jnp.full((B, max_len), pad_id, jnp.int32),
                                      jnp.zeros((B,), bool))

  def cond(carry):
    i, _, _, done_B, _ = carry
    return (i < max_len) & ~jnp.all(done_B)

  def body(carry):
    i, tokens_BT, caches, done_B, last_B = carry
    logits_BV, caches = _decode_step(model, params, last_B, memory, inputs_BS, caches, i)
    tokens_BT, done_B, last_B = advance(i, logits_BV, tokens_BT, done_B)
    return i + 1, tokens_BT, caches, done_B, last_B

  carry = (jnp.int32(1), tokens_BT, caches, done_B, last_B)
  return jax.lax.while_loop(cond, body, carry)[1]


def greedy_decode(model, params, inputs_BS, *, max_len: int, eos_id: int, pad_id: int = 0,
                  cache_cross_kv: bool = True) -> np.ndarray:
  """(B, max_len) argmax tokens for each source row; pad after the first EOS."""
  _check(model, max_len)
  return np.asarray(_greedy(model, params, jnp.asarray(inputs_BS, jnp.int32), max_len=max_len,
                            eos_id=eos_id, pad_id=pad_id, cache_cross_kv=cache_cross_kv))


@functools.partial(jax.jit, static_argnames=("model", "beam_size", "max_len", "eos_id",
                                             "pad_id", "length_penalty", "cache_cross_kv"))
def _beam_search(model, params, inputs_BS, *, beam_size: int, max_len: int, eos_id: int,
                 pad_id: int, length_penalty: float, cache_cross_kv: bool):
  B, K, T = inputs_BS.shape[0], beam_size, max_len
  encoded_BSD = model.apply({"params": params}, inputs_BS, method="encode")
  # Every beam of a row decodes against that row's source: rows b*K .. b*K+K-1. A beam's
  # parent is always in its own row, so the source's cross K/V are never regathered.
  encoded_bSD = jnp.repeat(encoded_BSD, K, axis=0)
  inputs_bS = jnp.repeat(inputs_BS, K, axis=0)
  neg_inf = jnp.float32(-jnp.inf)
  bound_lp = length_penalty_factor(T, length_penalty)

  def select(i, logits_bV, alive_seq_BKT, alive_logp_BK, fin_score_BK, fin_seq_BKT):
    """Step i's extensions -> (alive_seq, alive_logp, last tokens, fin_score, fin_seq,
    each surviving beam's parent row)."""
    V = logits_bV.shape[-1]
    logp_BKV = jax.nn.log_softmax(logits_bV.astype(jnp.float32)).reshape(B, K, V)
    cand_BM = (alive_logp_BK[:, :, None] + logp_BKV).reshape(B, K * V)
    top_logp_BC, top_idx_BC = jax.lax.top_k(cand_BM, 2 * K)
    beam_BC, token_BC = top_idx_BC // V, (top_idx_BC % V).astype(jnp.int32)
    seq_BCT = jnp.take_along_axis(alive_seq_BKT, beam_BC[:, :, None], axis=1)
    seq_BCT = jnp.where(jnp.arange(T) == i, token_BC[:, :, None], seq_BCT)

    ends_BC = (token_BC == eos_id) | (i == T - 1)
    # Ending in EOS counts only within the top K (beam 1 = greedy); see the module doc.
    enters_pool_BC = ends_BC & (jnp.arange(2 * K) < K)[None, :]
    new_score_BC = jnp.where(enters_pool_BC, top_logp_BC / length_penalty_factor(
        i + 1, length_penalty), neg_inf)
    # Old pool first: on a tie, the earlier (shorter) hypothesis stays.
    pool_score_BN = jnp.concatenate([fin_score_BK, new_score_BC], axis=1)
    pool_seq_BNT = jnp.concatenate([fin_seq_BKT, seq_BCT], axis=1)
    fin_score_BK, pick_BK = jax.lax.top_k(pool_score_BN, K)
    fin_seq_BKT = jnp.take_along_axis(pool_seq_BNT, pick_BK[:, :, None], axis=1)

    alive_logp_BK, keep_BK = jax.lax.top_k(jnp.where(ends_BC, neg_inf, top_logp_BC), K)
    alive_seq_BKT = jnp.take_along_axis(seq_BCT, keep_BK[:, :, None], axis=1)
    last_BK = jnp.take_along_axis(token_BC, keep_BK, axis=1)
    parent_b = (jnp.arange(B)[:, None] * K + jnp.take_along_axis(beam_BC, keep_BK, axis=1))
    return alive_seq_BKT, alive_logp_BK, last_BK, fin_score_BK, fin_seq_BKT, parent_b.reshape(-1)

  def gather(caches, parent_b):
    return jax.tree.map(lambda x: x[parent_b], caches)

  start_b = jnp.full((B * K,), model.config.decoder_start_id, jnp.int32)
  logits_bV, caches, memory = _first_step(model, params, start_b, encoded_bSD, inputs_bS,
                                          model.init_cache(B * K, T), cache_cross_kv)
  alive_logp_BK = jnp.full((B, K), neg_inf).at[:, 0].set(0.0)  # one live beam to start
  *state, parent_b = select(0, logits_bV, jnp.full((B, K, T), pad_id, jnp.int32), alive_logp_BK,
                            jnp.full((B, K), neg_inf), jnp.full((B, K, T), pad_id, jnp.int32))

  def cond(carry):
    i, _, alive_logp_BK, _, fin_score_BK, _, _ = carry
    best_possible_B = alive_logp_BK[:, 0] / bound_lp
    done_B = fin_score_BK[:, K - 1] >= best_possible_B
    return (i < T) & ~jnp.all(done_B)

  def body(carry):
    i, alive_seq_BKT, alive_logp_BK, last_BK, fin_score_BK, fin_seq_BKT, caches = carry
    logits_bV, caches = _decode_step(model, params, last_BK.reshape(B * K), memory, inputs_bS,
                                     caches, i)
    *state, parent_b = select(i, logits_bV, alive_seq_BKT, alive_logp_BK, fin_score_BK,
                              fin_seq_BKT)
    return i + 1, *state, gather(caches, parent_b)

  carry = (jnp.int32(1), *state, gather(caches, parent_b))
  _, _, _, _, fin_score_BK, fin_seq_BKT, _ = jax.lax.while_loop(cond, body, carry)
  return fin_seq_BKT, fin_score_BK


def beam_search(model, params, inputs_BS, *, beam_size: int, max_len: int, eos_id: int,
                pad_id: int = 0, length_penalty: float = 0.0,
                cache_cross_kv: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """(B, K, max_len) hypotheses and (B, K) scores, best first, for each source row."""
  _check(model, max_len)
  if beam_size <= 0:
    raise UserError(f"beam_size must be positive, got {beam_size}")
  if length_penalty < 0:
    raise UserError(f"length_penalty must be >= 0 (0 = plain log-probability), got "
                    f"{length_penalty}")
  seqs, scores = _beam_search(model, params, jnp.asarray(inputs_BS, jnp.int32),
                              beam_size=beam_size, max_len=max_len, eos_id=eos_id, pad_id=pad_id,
                              length_penalty=float(length_penalty),
                              cache_cross_kv=cache_cross_kv)
  return np.asarray(seqs), np.asarray(scores)


def strip_after_eos(tokens, eos_id: int) -> list[int]:
  """The tokens before the first EOS (the whole row if none)."""
  tokens = [int(t) for t in tokens]
  return tokens[:tokens.index(eos_id)] if eos_id in tokens else tokens

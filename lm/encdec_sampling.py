"""Sampling and scoring targets of an encoder-decoder with the decoders' knobs.

`sample_targets` draws each target token with `lm.sampling.sample_logits` (the same
temperature / top-k / top-p semantics as every other family). Each step reruns the
teacher-forced forward pass over the target so far instead of using a KV cache:
targets are at most `max_target_len` tokens, and the model's `__call__` is the one
interface that every cache layout keeps. Greedy and beam search live in lm/decoding.py.

Legend: B samples, S source length, T target length, V vocab.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lm.models.encdec import shift_right
from lm.post_training.losses import token_logprobs
from lm.sampling import sample_logits


@functools.partial(jax.jit, static_argnames=("model", "max_len", "top_k", "eos_id"))
def _sample(model, params, inputs_BS, rng, temperature, top_p, *, max_len: int, top_k: int,
            eos_id: int):
  B, c = inputs_BS.shape[0], model.config
  positions_T = jnp.arange(max_len)

  def step(i, carry):
    decoder_inputs_BT, tokens_BT, done_B, rng = carry
    logits_BTV = model.apply({"params": params}, inputs_BS, decoder_inputs_BT)
    logits_BV = jax.lax.dynamic_index_in_dim(logits_BTV, i, axis=1, keepdims=False)
    rng, sample_rng = jax.random.split(rng)
    token_B = sample_logits(logits_BV, sample_rng, temperature, top_k, top_p)
    token_B = jnp.where(done_B, c.pad_id, token_B)
    tokens_BT = jnp.where(positions_T == i, token_B[:, None], tokens_BT)
    decoder_inputs_BT = jnp.where(positions_T == i + 1, token_B[:, None], decoder_inputs_BT)
    return decoder_inputs_BT, tokens_BT, done_B | (token_B == eos_id), rng

  start_BT = jnp.full((B, max_len), c.decoder_start_id, jnp.int32)
  carry = (start_BT, jnp.full((B, max_len), c.pad_id, jnp.int32), jnp.zeros((B,), bool), rng)
  return jax.lax.fori_loop(0, max_len, step, carry)[1]


def sample_targets(model, params, source_ids, *, max_len: int, eos_id: int, temperature: float,
                   top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                   num_samples: int = 1) -> np.ndarray:
  """(num_samples, max_len) targets for one source; pad after the first EOS (as greedy)."""
  inputs_BS = np.tile(np.asarray(source_ids, np.int32)[None], (num_samples, 1))
  return np.asarray(_sample(model, params, jnp.asarray(inputs_BS), jax.random.key(seed),
                            jnp.float32(temperature), jnp.float32(top_p), max_len=max_len,
                            top_k=int(top_k), eos_id=eos_id))


@functools.partial(jax.jit, static_argnames=("model",))
def _target_logprobs(model, params, inputs_1S, targets_1T):
  decoder_inputs_1T = shift_right(targets_1T, model.config.decoder_start_id)
  logits_1TV = model.apply({"params": params}, inputs_1S, decoder_inputs_1T)
  return token_logprobs(logits_1TV, targets_1T)[0]


def target_logprobs(model, params, source_ids, target_ids) -> np.ndarray:
  """log p(y_i | x, y_<i) for every target token (teacher forcing: the chain rule)."""
  inputs_1S = jnp.asarray(np.asarray(source_ids, np.int32)[None])
  targets_1T = jnp.asarray(np.asarray(target_ids, np.int32)[None])
  return np.asarray(_target_logprobs(model, params, inputs_1S, targets_1T), np.float64)

"""Attention kernel, causal masks and the GPT's causality, against naive references."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_helpers import random_params

from lm.layers.attention import dot_product_attention
from lm.layers.embed import TokenEmbedding
from lm.layers.masks import causal_mask
from lm.models.gpt import GPT, GPTConfig


def naive_attention(q, k, v, mask):
  """softmax(q.k / sqrt(H) over allowed keys) v with explicit Python loops, float64."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  mask = np.asarray(mask)
  B, T, N, H = q.shape
  S = k.shape[1]
  out = np.zeros((B, T, N, H))
  for b in range(B):
    for n in range(N):
      for t in range(T):
        scores = []
        for s in range(S):
          if mask[b, 0, t, s]:
            scores.append((s, sum(q[b, t, n, h] * k[b, s, n, h] for h in range(H)) / np.sqrt(H)))
        m = max(sc for _, sc in scores)
        weights = [(s, np.exp(sc - m)) for s, sc in scores]
        total = sum(w for _, w in weights)
        for s, w in weights:
          out[b, t, n] += (w / total) * v[b, s, n]
  return out


def lower_triangular_mask(T, S, offset):
  """mask[t, s] = (s <= t + offset), written with loops."""
  return np.array([[s <= t + offset for s in range(S)] for t in range(T)])


@pytest.mark.parametrize("T,S,offset", [(5, 5, 0), (3, 7, 2), (1, 6, 4)])
def test_dot_product_attention_matches_naive(T, S, offset):
  B, N, H = 2, 2, 4
  rng = np.random.default_rng(T * 100 + S)
  q = (2.0 * rng.standard_normal((B, T, N, H))).astype(np.float32)
  k = (2.0 * rng.standard_normal((B, S, N, H))).astype(np.float32)
  v = rng.standard_normal((B, S, N, H)).astype(np.float32)
  mask = np.broadcast_to(lower_triangular_mask(T, S, offset)[None, None], (B, 1, T, S))
  got = np.asarray(jax.jit(dot_product_attention)(q, k, v, mask))
  want = naive_attention(q, k, v, mask)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_dot_product_attention_ignores_masked_values():
  """Huge values at masked key slots must not leak into the output."""
  B, T, S, N, H = 1, 2, 4, 1, 2
  q = np.ones((B, T, N, H), np.float32)
  k = np.zeros((B, S, N, H), np.float32)
  v = np.array([1.0, 3.0, 1e6, -1e6], np.float32)[None, :, None, None] * np.ones((B, S, N, H),
                                                                               np.float32)
  mask = lower_triangular_mask(T, S, 0)[None, None]
  got = np.asarray(jax.jit(dot_product_attention)(q, k, v, mask))
  # Equal scores: row 0 sees v[0] only, row 1 averages v[0], v[1].
  np.testing.assert_allclose(got[0, :, 0, 0], [1.0, 2.0], rtol=1e-6)


def test_causal_mask_full_sequence():
  pos = jnp.arange(4)[None, :]
  want = np.array([[1, 0, 0, 0],
                   [1, 1, 0, 0],
                   [1, 1, 1, 0],
                   [1, 1, 1, 1]], bool)
  got = np.asarray(causal_mask(pos, pos))
  assert got.shape == (1, 1, 4, 4)
  np.testing.assert_array_equal(got[0, 0], want)


def test_causal_mask_offset_queries_as_in_cache_decoding():
  # One new token at cache index 5, cache of 8 slots: sees slots 0..5 only.
  got = np.asarray(causal_mask(jnp.array([[5]]), jnp.arange(8)[None, :]))
  np.testing.assert_array_equal(got[0, 0], np.array([[1, 1, 1, 1, 1, 1, 0, 0]], bool))
  # A chunk of 2 tokens written at index 3 into a 6-slot cache.
  got = np.asarray(causal_mask(jnp.array([[3, 4]]), jnp.arange(6)[None, :]))
  np.testing.assert_array_equal(got[0, 0], np.array([[1, 1, 1, 1, 0, 0],
                                                      [1, 1, 1, 1, 1, 0]], bool))


def test_causal_mask_per_batch_row_offsets():
  q = jnp.array([[0], [2]])
  k = jnp.broadcast_to(jnp.arange(4)[None, :], (2, 4))
  got = np.asarray(causal_mask(q, k))
  assert got.shape == (2, 1, 1, 4)
  np.testing.assert_array_equal(got[:, 0, 0], np.array([[1, 0, 0, 0],
                                                        [1, 1, 1, 0]], bool))


# --- causality of the whole model -------------------------------------------------------

CFG = GPTConfig(vocab_size=13, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32, max_len=10)
T = 7




@pytest.fixture(scope="module")
def model_and_params():
  model = GPT(CFG)
  return model, random_params(model, 0)


def test_future_token_embeddings_have_zero_gradient(model_and_params):
  """d logits[:, t] / d (embedding input at s) == 0 exactly for s > t, nonzero for s <= t."""
  model, params = model_and_params
  tokens = jnp.asarray(np.random.default_rng(3).integers(0, CFG.vocab_size, (1, T)), jnp.int32)

  def logits_of_delta(delta_TD):
    def add_delta(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if isinstance(context.module, TokenEmbedding) and context.method_name == "__call__":
        out = out + delta_TD[None]
      return out
    with nn.intercept_methods(add_delta):
      return model.apply({"params": params}, tokens)[0][0]  # (T, V)

  delta = np.zeros((T, CFG.embed_dim), np.float32)
  bumped = delta.copy()
  # Not a constant row: LayerNorm removes any shift shared by all features.
  bumped[0] = np.random.default_rng(5).standard_normal(CFG.embed_dim)
  fwd = jax.jit(logits_of_delta)
  # Sanity: the interceptor really is on the input path.
  assert not np.allclose(fwd(delta), fwd(bumped))
  # Project logits onto a random vector: one scalar per position t keeps the Jacobian small,
  # and a structural zero stays exactly zero.
  w_V = np.random.default_rng(4).standard_normal(CFG.vocab_size).astype(np.float32)
  jac = np.asarray(jax.jit(jax.jacrev(lambda d: logits_of_delta(d) @ w_V))(delta))  # (T, T, D)
  grad_norm = np.abs(jac).sum(axis=2)  # [t, s]
  for t in range(T):
    for s in range(T):
      if s > t:
        assert grad_norm[t, s] == 0.0, (t, s, grad_norm[t, s])
      else:
        assert grad_norm[t, s] > 1e-6, (t, s, grad_norm[t, s])


def test_changing_future_tokens_leaves_past_logits_unchanged(model_and_params):
  model, params = model_and_params
  fwd = jax.jit(lambda toks: model.apply({"params": params}, toks)[0])
  rng = np.random.default_rng(0)
  base = rng.integers(0, CFG.vocab_size, size=(1, T))
  base_logits = np.asarray(fwd(jnp.asarray(base)))
  for t in range(T - 1):
    other = base.copy()
    other[0, t + 1:] = (base[0, t + 1:] + 1 + rng.integers(0, CFG.vocab_size - 1, T - t - 1)) \
        % CFG.vocab_size
    assert (other[0, t + 1:] != base[0, t + 1:]).all()
    logits = np.asarray(fwd(jnp.asarray(other)))
    np.testing.assert_array_equal(logits[0, :t + 1], base_logits[0, :t + 1])
    assert not np.allclose(logits[0, t + 1:], base_logits[0, t + 1:])

"""Chain-rule scoring against naive per-position full forward passes."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_helpers import random_params

from lm.models.gpt import GPT, GPTConfig
from lm.scoring import next_token_logprobs, token_logprobs

CFG = GPTConfig(vocab_size=13, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32, max_len=8)




class Fixture:
  def __init__(self, cfg, seed):
    self.model = GPT(cfg)
    self.params = random_params(self.model, seed, 0.5)
    model, params = self.model, self.params
    self._full = jax.jit(lambda toks: model.apply({"params": params}, toks)[0])

  def naive_logp(self, context):
    """log p(. | context) in float64 from a full forward pass on exactly `context`."""
    logits = np.asarray(self._full(jnp.asarray(np.asarray(context, np.int32)[None])))[0, -1]
    logits = logits.astype(np.float64)
    m = logits.max()
    return logits - (m + np.log(np.exp(logits - m).sum()))


@pytest.fixture(scope="module")
def fx():
  return Fixture(CFG, seed=0)


def _ids(length, seed):
  return np.random.default_rng(seed).integers(0, CFG.vocab_size, length).astype(np.int32)


def documented_window_start(t, max_len):
  """Start of the window that scores target position t (predicting ids[t] from ids[s:t]).

  Windows start at 0, stride, 2*stride, ... (stride = max_len // 2) and span max_len tokens;
  a window's rows predict the tokens after each of its positions, except its last row, and
  each target is taken from the first window that covers it.
  """
  stride = max(1, max_len // 2)
  s = max(0, math.ceil((t - (max_len - 1)) / stride)) * stride
  assert s < t <= s + max_len - 1
  return s


def _logsumexp(rows):
  rows = np.asarray(rows, np.float64)
  m = rows.max(axis=-1, keepdims=True)
  return (m + np.log(np.exp(rows - m).sum(axis=-1, keepdims=True)))[..., 0]


@pytest.mark.parametrize("length", [2, 6, CFG.max_len])
def test_short_text_sum_matches_naive_chain_rule(fx, length):
  ids = _ids(length, seed=length)
  got = token_logprobs(fx.model, fx.params, ids)
  assert got.shape == (length,)
  # Naive: one full forward over the whole text, log_softmax in float64, row i-1 scores x_i.
  logits = np.asarray(fx._full(jnp.asarray(ids[None])))[0].astype(np.float64)
  logp = logits - _logsumexp(logits)[:, None]
  want = np.array([logp[i - 1, ids[i]] for i in range(1, length)])
  np.testing.assert_allclose(got[1:], want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got[1:].sum(), want.sum(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length", [5, CFG.max_len, 29])
def test_next_token_rows_are_normalised(fx, length):
  rows = next_token_logprobs(fx.model, fx.params, _ids(length, seed=10 + length))
  assert rows.shape == (length - 1, CFG.vocab_size)
  assert np.isfinite(rows).all()
  np.testing.assert_allclose(_logsumexp(rows), 0.0, atol=1e-5)


@pytest.mark.parametrize("length", [CFG.max_len + 1, 13, 20, 25])
def test_windowed_scoring_matches_naive_windows(fx, length):
  ids = _ids(length, seed=20 + length)
  rows = next_token_logprobs(fx.model, fx.params, ids)
  assert rows.shape == (length - 1, CFG.vocab_size)
  per_token = token_logprobs(fx.model, fx.params, ids)
  for t in range(1, length):
    s = documented_window_start(t, CFG.max_len)
    if t >= CFG.max_len:  # the module docstring's promise: >= max_len / 2 tokens of context
      assert t - s >= CFG.max_len / 2
    want = fx.naive_logp(ids[s:t])
    np.testing.assert_allclose(rows[t - 1], want, rtol=1e-5, atol=1e-5, err_msg=f"t={t}")
    np.testing.assert_allclose(per_token[t], want[ids[t]], rtol=1e-5, atol=1e-5)


def test_windowed_scoring_with_odd_max_len():
  """max_len 5: stride 2, windows [0, 5), [2, 7), [4, 9), ..."""
  odd = Fixture(GPTConfig(vocab_size=11, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32,
                          max_len=5), seed=1)
  ids = np.random.default_rng(9).integers(0, 11, 17).astype(np.int32)
  rows = next_token_logprobs(odd.model, odd.params, ids)
  assert rows.shape == (16, 11)
  for t in range(1, len(ids)):
    s = documented_window_start(t, 5)
    np.testing.assert_allclose(rows[t - 1], odd.naive_logp(ids[s:t]), rtol=1e-5, atol=1e-5,
                               err_msg=f"t={t}")
  np.testing.assert_allclose(_logsumexp(rows), 0.0, atol=1e-5)


def test_windowed_scoring_differs_from_truncating_at_max_len(fx):
  """Sanity for the test above: the context window matters for this model."""
  ids = _ids(20, seed=3)
  rows = next_token_logprobs(fx.model, fx.params, ids)
  t = 12  # window start 8 (context of 4), not the most recent 7 tokens
  assert documented_window_start(t, CFG.max_len) == 8
  assert not np.allclose(rows[t - 1], fx.naive_logp(ids[t - 7:t]), atol=1e-3)


def test_first_entry_is_the_prior(fx):
  prior = np.log(np.random.default_rng(5).dirichlet(np.ones(CFG.vocab_size)))
  for length, seed in ((1, 0), (4, 1), (19, 2)):
    ids = _ids(length, seed=30 + seed)
    got = token_logprobs(fx.model, fx.params, ids, first_token_logprobs=prior)
    assert got.shape == (length,)
    assert got[0] == prior[ids[0]]
  assert next_token_logprobs(fx.model, fx.params, _ids(1, seed=0)).shape == (0, CFG.vocab_size)

"""The non-Transformer LM (lm/models/ssm.py) and the parallel scan (lm/layers/scan.py).

References: a sequential Python loop for the scan; a NumPy loop over time for the whole
model (RMSNorm, gates, conv, RG-LRU, MLP); decoding one token at a time with the O(1)
state, and through the KV-cache interface, against the parallel forward.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.layers.scan import linear_recurrence, sequential_recurrence
from lm.models.ssm import GATE_POWER, SSMLM, SSMConfig, state_bytes
from tests.model_helpers import random_params

CONFIG = SSMConfig(vocab_size=11, num_layers=2, embed_dim=16, recurrence_dim=12, mlp_dim=24,
                   conv_width=3, max_len=16)


@pytest.fixture(scope="module")
def model_and_params():
  model = SSMLM(CONFIG)
  params = random_params(model, seed=1)
  forward = jax.jit(lambda tokens: model.apply({"params": params}, tokens)[0])
  return model, params, forward


def _loop(a, b, h0):
  h, out = h0.copy(), np.zeros_like(a)
  for t in range(a.shape[1]):
    h = a[:, t] * h + b[:, t]
    out[:, t] = h
  return out


@pytest.mark.parametrize("with_h0", [False, True])
def test_parallel_scan_matches_a_python_loop(with_h0):
  rng = np.random.default_rng(0)
  a = rng.uniform(0.0, 1.0, (3, 37, 5)).astype(np.float32)
  b = rng.standard_normal((3, 37, 5)).astype(np.float32)
  h0 = rng.standard_normal((3, 5)).astype(np.float32) if with_h0 else np.zeros((3, 5), np.float32)
  expected = _loop(a, b, h0)
  got = linear_recurrence(jnp.asarray(a), jnp.asarray(b), jnp.asarray(h0) if with_h0 else None)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(sequential_recurrence(a, b, h0)), expected, rtol=1e-5,
                             atol=1e-5)


def _gelu(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def _rms(x, scale):
  return x / np.sqrt(np.mean(x ** 2, -1, keepdims=True) + 1e-6) * scale


def _numpy_forward(p, tokens):
  """The model written out step by step in NumPy (float64)."""
  p = jax.tree.map(lambda v: np.asarray(v, np.float64), p)
  emb = p["token_embed"]["embedding"]
  x = emb[tokens]  # B T D
  B, T, _ = x.shape
  for i in range(CONFIG.num_layers):
    blk = p[f"block_{i}"]
    tb = blk["temporal"]
    y = _rms(x, blk["ln_temporal"]["scale"])
    gate = _gelu(y @ tb["gate"]["kernel"] + tb["gate"]["bias"])
    u = y @ tb["input"]["kernel"] + tb["input"]["bias"]
    K = CONFIG.conv_width
    conv = np.zeros_like(u) + tb["conv_bias"]
    for t in range(T):
      for k in range(K):
        if t - k >= 0:
          conv[:, t] += tb["conv"][k] * u[:, t - k]
    lru = tb["rg_lru"]
    h = np.zeros((B, u.shape[-1]))
    hs = np.zeros_like(u)
    for t in range(T):
      r = _sigmoid(conv[:, t] @ lru["recurrence_gate"]["kernel"] + lru["recurrence_gate"]["bias"])
      g = _sigmoid(conv[:, t] @ lru["input_gate"]["kernel"] + lru["input_gate"]["bias"])
      a = _sigmoid(lru["decay"]) ** (GATE_POWER * r)
      h = a * h + np.sqrt(1 - a ** 2) * (g * conv[:, t])
      hs[:, t] = h
    x = x + (hs * gate) @ tb["output"]["kernel"] + tb["output"]["bias"]
    m = blk["mlp"]
    y = _rms(x, blk["ln_mlp"]["scale"])
    x = x + _gelu(y @ m["wi"]["kernel"] + m["wi"]["bias"]) @ m["wo"]["kernel"] + m["wo"]["bias"]
  return _rms(x, p["ln_final"]["scale"]) @ emb.T


def test_forward_matches_a_numpy_loop(model_and_params):
  _, params, forward = model_and_params
  tokens = np.random.default_rng(2).integers(0, 11, (2, 12))
  logits = forward(jnp.asarray(tokens))
  np.testing.assert_allclose(np.asarray(logits), _numpy_forward(params, tokens), rtol=2e-4,
                             atol=2e-4)


def test_step_decoding_with_constant_state_matches_the_parallel_forward(model_and_params):
  model, params, forward = model_and_params
  tokens = jnp.asarray(np.random.default_rng(3).integers(0, 11, (2, 12)))
  full = forward(tokens)
  step = jax.jit(lambda tok, s: model.apply({"params": params}, tok, state=s, return_state=True))
  state = model.init_state(2)
  size = state_bytes(state)
  outs = []
  for t in range(12):
    logits, state = step(tokens[:, t:t + 1], state)
    outs.append(logits[:, 0])
    assert state_bytes(state) == size  # the state never grows
  np.testing.assert_allclose(np.stack(outs, 1), np.asarray(full), rtol=1e-4, atol=1e-4)
  # (conv: K-1 inputs + h) x R x layers x float32 per sequence
  assert size == 2 * CONFIG.num_layers * (CONFIG.conv_width - 1 + 1) * CONFIG.width * 4


def test_cache_interface_prefill_then_decode_matches_forward(model_and_params):
  """The interface lm.sampling.generate uses: a prefill at 0, then one token at a time."""
  model, params, forward = model_and_params
  tokens = jnp.asarray(np.random.default_rng(4).integers(0, 11, (2, 12)))
  full = forward(tokens)
  apply = jax.jit(lambda tok, caches, index: model.apply({"params": params}, tok, caches=caches,
                                                         cache_index=index))
  logits, caches = apply(tokens[:, :7], model.init_cache(2, 16), 0)
  outs = [logits]
  for t in range(7, 12):
    logits, caches = apply(tokens[:, t:t + 1], caches, t)
    outs.append(logits)
  np.testing.assert_allclose(np.concatenate(outs, 1), np.asarray(full), rtol=1e-4, atol=1e-4)

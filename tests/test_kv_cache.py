"""KV-cache decoding and `generate` against full forward passes recomputed from scratch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_helpers import random_params

from lm.models.gpt import GPT, GPTConfig
from lm.sampling import generate

CFG = GPTConfig(vocab_size=17, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32, max_len=12)
GEN_CFG = GPTConfig(vocab_size=11, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32, max_len=8)




class Fixture:
  def __init__(self, cfg, seed, scale):
    self.model = GPT(cfg)
    self.params = random_params(self.model, seed, scale)
    model, params = self.model, self.params
    self.full = jax.jit(lambda toks: model.apply({"params": params}, toks)[0])
    self.cached = jax.jit(lambda toks, caches, idx: model.apply(
        {"params": params}, toks, caches=caches, cache_index=idx))

  def last_logits(self, context):
    """Full forward (no cache) on `context`, logits of its last position.

    The context is right-padded to max_len so that one compile serves every length; padding
    after the last position cannot change its logits because the model is causal (checked
    independently, via gradients and perturbations, in test_attention.py).
    """
    padded = np.zeros((1, self.model.config.max_len), np.int32)
    padded[0, :len(context)] = context
    return np.asarray(self.full(jnp.asarray(padded)))[0, len(context) - 1]


@pytest.fixture(scope="module")
def fx():
  return Fixture(CFG, seed=0, scale=0.3)


@pytest.fixture(scope="module")
def gen_fx():
  return Fixture(GEN_CFG, seed=1, scale=0.5)


def assert_close(got, want):
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def _tokens(batch, length, vocab, seed):
  return np.random.default_rng(seed).integers(0, vocab, (batch, length)).astype(np.int32)


@pytest.mark.parametrize("prefill_len", [1, 5])
def test_prefill_then_one_token_steps_match_full_forward(fx, prefill_len):
  B, T = 2, CFG.max_len
  tokens = _tokens(B, T, CFG.vocab_size, seed=prefill_len)
  want = np.asarray(fx.full(jnp.asarray(tokens)))
  caches = fx.model.init_cache(B)
  logits, caches = fx.cached(jnp.asarray(tokens[:, :prefill_len]), caches, jnp.int32(0))
  assert_close(logits, want[:, :prefill_len])
  for t in range(prefill_len, T):
    logits, caches = fx.cached(jnp.asarray(tokens[:, t:t + 1]), caches, jnp.int32(t))
    assert logits.shape == (B, 1, CFG.vocab_size)
    assert_close(logits[:, 0], want[:, t])


def test_prefill_in_two_chunks_then_steps_match_full_forward(fx):
  B, T = 2, CFG.max_len
  tokens = _tokens(B, T, CFG.vocab_size, seed=42)
  want = np.asarray(fx.full(jnp.asarray(tokens)))
  caches = fx.model.init_cache(B)
  logits, caches = fx.cached(jnp.asarray(tokens[:, :4]), caches, jnp.int32(0))
  assert_close(logits, want[:, :4])
  logits, caches = fx.cached(jnp.asarray(tokens[:, 4:9]), caches, jnp.int32(4))
  assert_close(logits, want[:, 4:9])
  for t in range(9, T):
    logits, caches = fx.cached(jnp.asarray(tokens[:, t:t + 1]), caches, jnp.int32(t))
    assert_close(logits[:, 0], want[:, t])


# --- greedy generation vs a naive recompute-everything loop ----------------------------

def naive_greedy(fx, prompt, max_new_tokens):
  """Greedy decoding that recomputes a full forward pass for every new token.

  Context window semantics as documented in lm/sampling.py: the model sees the last
  max_len prompt tokens plus what it generated; when that context is full (max_len tokens)
  and one more token is produced, the context restarts from the most recent max_len // 2
  tokens (the new token included) and grows again from there.
  """
  max_len = fx.model.config.max_len
  keep = max(1, max_len // 2)
  context = list(prompt[-max_len:])
  out = []
  for _ in range(max_new_tokens):
    logits = fx.last_logits(context)
    top2 = np.sort(logits)[-2:]
    assert top2[1] - top2[0] > 1e-4, "near-tie: pick another seed for a robust greedy test"
    token = int(np.argmax(logits))
    out.append(token)
    if len(context) < max_len:
      context.append(token)
    else:
      context = (list(prompt) + out)[-keep:]
  return np.array(out, np.int32)


MAX_NEW = 20  # same length and num_samples everywhere: one compile of `generate`


@pytest.mark.parametrize("prompt_len", [3, 1, 8, 11])
def test_greedy_generate_matches_naive_full_recompute(gen_fx, prompt_len):
  """20 new tokens with max_len 8: the first tokens stay within the window, then several
  cache refills; prompt_len 8 fills the cache at once, 11 is truncated to its last 8."""
  prompt = _tokens(1, prompt_len, GEN_CFG.vocab_size, seed=100 + prompt_len)[0]
  want = naive_greedy(gen_fx, prompt, MAX_NEW)
  got = generate(gen_fx.model, gen_fx.params, prompt, max_new_tokens=MAX_NEW, temperature=0.0,
                 seed=0, num_samples=2)
  assert got.shape == (2, MAX_NEW)
  np.testing.assert_array_equal(got[0], want)
  np.testing.assert_array_equal(got[1], want)


def test_greedy_generate_rows_identical_and_seed_independent(gen_fx):
  prompt = _tokens(1, 3, GEN_CFG.vocab_size, seed=7)[0]
  a = generate(gen_fx.model, gen_fx.params, prompt, max_new_tokens=MAX_NEW, temperature=0.0,
               seed=0, num_samples=2)
  b = generate(gen_fx.model, gen_fx.params, prompt, max_new_tokens=MAX_NEW, temperature=0.0,
               seed=9, num_samples=2)
  np.testing.assert_array_equal(a[0], a[1])
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(a[0], naive_greedy(gen_fx, prompt, MAX_NEW))


def test_sampled_generate_past_max_len_is_deterministic_per_seed(gen_fx):
  prompt = _tokens(1, 3, GEN_CFG.vocab_size, seed=8)[0]
  kw = dict(max_new_tokens=MAX_NEW, temperature=1.0, num_samples=2)
  a = generate(gen_fx.model, gen_fx.params, prompt, seed=1, **kw)
  b = generate(gen_fx.model, gen_fx.params, prompt, seed=1, **kw)
  c = generate(gen_fx.model, gen_fx.params, prompt, seed=2, **kw)
  assert a.shape == (2, MAX_NEW) and a.dtype == np.int32
  assert ((a >= 0) & (a < GEN_CFG.vocab_size)).all()
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert not np.array_equal(a[0], a[1])  # rows draw independently

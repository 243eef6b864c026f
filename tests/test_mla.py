"""MLA: against a NumPy multi-head attention on explicitly reconstructed keys; cached decode ==
full forward; the cache holds only the latent and the shared RoPE key."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.layers.attention import KVCache
from lm.layers.masks import causal_mask
from lm.layers.mla import MLA, MLACache, MLAConfig, kv_cache_bytes_per_token
from lm.models.gpt import GPT, GPTConfig

B, T, D = 2, 7, 12


def _rope_np(x, pos, base):  # (..., T, n, R) NeoX halves, as lm.layers.positions.apply_rope
  R = x.shape[-1]
  inv = base ** (-np.arange(0, R, 2) / R)
  ang = pos[..., None] * inv  # B T R/2
  cos, sin = np.cos(ang)[:, :, None], np.sin(ang)[:, :, None]
  x1, x2 = x[..., :R // 2], x[..., R // 2:]
  return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def _rms(x, scale):
  return x / np.sqrt(np.mean(x ** 2, -1, keepdims=True) + 1e-6) * scale


def reference_mla(p, x, c: MLAConfig):
  """Materialises every head's key [W_uk c_kv ; k_rope] and value, then plain softmax attention."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  x = np.asarray(x, np.float64)
  pos = np.broadcast_to(np.arange(x.shape[1]), x.shape[:2]).astype(np.float64)
  q_src = _rms(x @ p["q_down"]["kernel"], p["q_norm"]["scale"]) if c.q_rank else x
  q = np.einsum("btd,dnh->btnh", q_src, p["q_content"]["kernel"])
  q_r = _rope_np(np.einsum("btd,dnr->btnr", q_src, p["q_rope"]["kernel"]), pos, c.rope_base)
  latent = _rms(x @ p["kv_down"]["kernel"], p["kv_norm"]["scale"])
  k_r = _rope_np(np.einsum("btd,dnr->btnr", x, p["k_rope"]["kernel"]), pos, c.rope_base)
  k = np.einsum("bsc,cnh->bsnh", latent, p["k_up"]["kernel"])
  v = np.einsum("bsc,cnh->bsnh", latent, p["v_up"]["kernel"])
  N = q.shape[2]
  q_full = np.concatenate([q, q_r], -1)
  k_full = np.concatenate([k, np.repeat(k_r, N, axis=2)], -1)  # one RoPE key for all heads
  logits = np.einsum("btnh,bsnh->bnts", q_full, k_full) / np.sqrt(q_full.shape[-1])
  causal = np.tril(np.ones((x.shape[1], x.shape[1]), bool))
  logits = np.where(causal, logits, -np.inf)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  out = np.einsum("bnts,bsnh->btnh", probs, v)
  return np.einsum("btnh,nhd->btd", out, p["out"]["kernel"])


@pytest.mark.parametrize("q_rank", [0, 6])
def test_mla_equals_attention_on_reconstructed_keys(q_rank):
  c = MLAConfig(num_heads=3, head_dim=4, kv_rank=5, q_rank=q_rank, rope_dim=4)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(B, T, D)), jnp.float32)
  pos = jnp.broadcast_to(jnp.arange(T), (B, T))
  mask = causal_mask(pos, pos)
  params = nn.meta.unbox(jax.jit(MLA(c).init)(jax.random.key(0), x, mask, q_pos_BT=pos)["params"])
  params = jax.tree.map(lambda a: a * 10 if a.ndim >= 2 else a, params)  # visible attention
  y, _ = jax.jit(lambda p: MLA(c).apply({"params": p}, x, mask, q_pos_BT=pos))(params)
  np.testing.assert_allclose(np.asarray(y), reference_mla(params, x, c), atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def mla_gpt():
  c = GPTConfig(vocab_size=11, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32, max_len=10,
                attention="mla", mla_kv_rank=6, mla_q_rank=8, mla_rope_dim=4, position="none",
                norm="rmsnorm", mlp="swiglu", use_bias=False)
  model = GPT(c)
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 11, (2, 10)), jnp.int32)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(1), tokens)["params"])
  params = jax.tree.map(lambda a: a * 5 if a.ndim >= 2 else a, params)
  return model, params, tokens


def test_decode_with_latent_cache_equals_full_forward(mla_gpt):
  model, params, tokens = mla_gpt
  full, _ = jax.jit(model.apply)({"params": params}, tokens)
  caches = model.init_cache(2, 10)
  assert all(isinstance(cache, MLACache) for cache in caches)
  step = jax.jit(lambda p, t, caches, i: model.apply({"params": p}, t, caches=caches,
                                                     cache_index=i))
  # A 4-token prefill, then one token at a time.
  logits, caches = step(params, tokens[:, :4], caches, 0)
  outs = [logits]
  for i in range(4, 10):
    logits, caches = step(params, tokens[:, i:i + 1], caches, i)
    outs.append(logits)
  np.testing.assert_allclose(np.concatenate(outs, 1), np.asarray(full), atol=2e-5, rtol=1e-5)
  # The cache holds the normalised latent and the rotated shared key of every token.
  assert caches[0].latent_BSC.shape == (2, 10, 6) and caches[0].k_rope_BSR.shape == (2, 10, 4)
  assert float(jnp.abs(caches[0].latent_BSC).min(axis=-1).max()) > 0


def test_cache_bytes_per_token_vs_mha_and_gqa():
  base = dict(vocab_size=11, num_layers=4, num_heads=4, embed_dim=128, max_len=8)
  mha, gqa = GPTConfig(**base), GPTConfig(**base, num_kv_heads=2)
  mla = GPTConfig(**base, attention="mla", mla_kv_rank=32, mla_rope_dim=16, position="none")
  # Per layer: MHA 2 * 4 heads * 32 dims, GQA 2 * 2 * 32, MLA 32 + 16; f32; 4 layers.
  assert kv_cache_bytes_per_token(mha) == 2 * 4 * 32 * 4 * 4 == 4096
  assert kv_cache_bytes_per_token(gqa) == 2048
  assert kv_cache_bytes_per_token(mla) == (32 + 16) * 4 * 4 == 768
  for cfg in (mha, gqa, mla):  # the caches the model allocates are exactly that size
    caches = GPT(cfg).init_cache(3, 8)
    assert isinstance(caches[0], MLACache if cfg.attention == "mla" else KVCache)
    nbytes = sum(leaf.nbytes for leaf in jax.tree.leaves(caches))
    assert nbytes == kv_cache_bytes_per_token(cfg) * 3 * 8

"""KV-cache decoding equals the full forward pass for every position encoding, GQA/MQA,
QK-norm + soft-capping and the sparse layouts.

The full pass runs local/strided layers block-sparsely (T > window/stride); the cached
path runs them as dense attention under the pattern mask, so the two are independent."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_helpers import random_params

from lm.models.gpt import GPT, GPTConfig

# One tiny model per case; options are combined so that every choice is covered by a few
# compiles (the cache shape follows num_kv_heads, so K is part of every case).
CASES = {
    "learned_gqa_geglu": dict(position="learned", num_kv_heads=2, mlp="geglu"),
    "sinusoidal_mqa": dict(position="sinusoidal", num_kv_heads=1),
    "rope_gqa_qk_norm_softcap": dict(position="rope", num_kv_heads=2, qk_norm=True,
                                     logit_softcap=1.5),
    "alibi_mqa_alternating_local": dict(position="alibi", num_kv_heads=1,
                                        attention_pattern="alternating_local",
                                        attention_window=3),
    "t5_gqa_local_strided": dict(position="t5", num_kv_heads=2, attention_pattern="local_strided",
                                 attention_window=3, attention_stride=2, relative_buckets=8,
                                 relative_max_distance=10),
    "none_rmsnorm_swiglu_qk_norm_softcap": dict(position="none", norm="rmsnorm", mlp="swiglu",
                                                qk_norm=True, logit_softcap=2.0),
}
SLOW = ("learned_gqa_geglu",)  # learned + MHA is in test_kv_cache.py

B, PREFILL = 2, 5


def _config(**kw):
  return GPTConfig(vocab_size=17, num_layers=2, num_heads=4, embed_dim=16, mlp_dim=32,
                   max_len=12, **kw)


@pytest.mark.parametrize("case", [
    pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in CASES])
def test_prefill_then_decode_matches_full_forward(case):
  cfg = _config(**CASES[case])
  model = GPT(cfg)
  params = random_params(model, seed=len(case), scale=0.3)
  T = cfg.max_len
  tokens = jnp.asarray(np.random.default_rng(len(case)).integers(0, cfg.vocab_size, (B, T)),
                       jnp.int32)
  want = np.asarray(jax.jit(lambda t: model.apply({"params": params}, t)[0])(tokens))
  cached = jax.jit(lambda t, caches, idx: model.apply({"params": params}, t, caches=caches,
                                                      cache_index=idx))
  caches = model.init_cache(B)
  assert caches[0].k_BSKH.shape == (B, T, cfg.num_kv_heads or cfg.num_heads, cfg.head_dim)
  logits, caches = cached(tokens[:, :PREFILL], caches, jnp.int32(0))
  np.testing.assert_allclose(np.asarray(logits), want[:, :PREFILL], rtol=1e-5, atol=1e-5)
  for t in range(PREFILL, T):
    logits, caches = cached(tokens[:, t:t + 1], caches, jnp.int32(t))
    np.testing.assert_allclose(np.asarray(logits)[:, 0], want[:, t], rtol=1e-5, atol=1e-5,
                               err_msg=f"decode step t={t}")
  # Sanity: the logits do depend on the context (a wrong cache could not hide).
  assert np.abs(want[:, -1] - want[:, PREFILL]).max() > 1e-3

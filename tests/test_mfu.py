"""Model FLOPs per token (PaLM convention) against the matmuls the forward pass really does."""

import jax
import jax.numpy as jnp
import pytest
from model_helpers import traced_matmul_flops

from lm.models.gpt import GPT, GPTConfig
from lm.train import mfu


@pytest.mark.parametrize("kw", [{}, dict(num_kv_heads=1, mlp="swiglu", use_bias=False),
                                dict(num_kv_heads=2, tie_embeddings=False)])
def test_palm_flops_equal_three_times_forward_matmuls(kw):
  cfg = GPTConfig(vocab_size=37, num_layers=3, num_heads=4, embed_dim=32, mlp_dim=48, max_len=16,
                  **kw)
  model = GPT(cfg)
  tokens = jnp.zeros((1, cfg.max_len), jnp.int32)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens))
  jaxpr = jax.make_jaxpr(lambda p: model.apply(p, tokens)[0])(params).jaxpr
  forward_per_token = traced_matmul_flops(jaxpr) / cfg.max_len
  got = mfu.model_flops_per_token("gpt", cfg, cfg.max_len, num_params=0)
  assert got == pytest.approx(3 * forward_per_token, rel=1e-9)


def test_families_without_a_formula_fall_back_to_six_flops_per_parameter():
  assert mfu.model_flops_per_token("vit", None, 128, num_params=1000) == 6000.0


def test_peak_is_measured_and_cached(tmp_path, monkeypatch):
  monkeypatch.setattr(mfu, "CACHE", str(tmp_path / "peak.json"))
  small = mfu.measure_peak_flops
  monkeypatch.setattr(mfu, "measure_peak_flops", lambda dtype: small(dtype, size=256))
  first = mfu.peak_flops("float32")
  assert first > 1e8  # any real CPU does more than 0.1 GFLOP/s
  assert (tmp_path / "peak.json").exists()
  assert mfu.peak_flops("float32") == first  # read back, not remeasured

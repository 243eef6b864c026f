"""RoPE scaling for context extension against closed forms and a naive per-frequency loop."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import config as config_lib
from lm.errors import UserError
from lm.layers.positions import RopeScaling, apply_rope, rope_frequencies
from lm.models.gpt import GPT, GPTConfig

H, BASE = 16, 10000.0


def _x(seed=0, T=6, N=2):
  return jax.random.normal(jax.random.key(seed), (1, T, N, H))


def test_position_interpolation_is_rope_at_positions_over_factor():
  """Chen et al. 2023: f'(x, m) = f(x, m L / L') -- position m rotated as m / factor."""
  pos = jnp.array([[0, 1, 7, 100, 1023, 4095]])
  got = apply_rope(_x(), pos, BASE, RopeScaling("linear", 4.0))
  want = apply_rope(_x(), pos.astype(jnp.float32) / 4.0, BASE)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_ntk_base_formula_and_its_end_points():
  """base' = base * s^(H/(H-2)): the highest frequency is kept, the lowest divided by s."""
  s = 8.0
  got, mscale = rope_frequencies(H, BASE, RopeScaling("ntk", s))
  new_base = BASE * s ** (H / (H - 2))
  want = [new_base ** (-2 * i / H) for i in range(H // 2)]
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
  plain, _ = rope_frequencies(H, BASE)
  assert mscale == 1.0 and float(got[0]) == float(plain[0]) == 1.0
  np.testing.assert_allclose(float(got[-1]), float(plain[-1]) / s, rtol=1e-5)


def yarn_reference(head_dim, base, factor, original_len, beta_fast=32.0, beta_slow=1.0):
  """Peng et al. 2023, eq. 17-19, one frequency at a time."""
  out = []
  for i in range(head_dim // 2):
    theta = base ** (-2 * i / head_dim)
    wavelength = 2 * math.pi / theta
    r = original_len / wavelength
    if r < beta_slow:
      gamma = 0.0
    elif r > beta_fast:
      gamma = 1.0
    else:
      gamma = (r - beta_slow) / (beta_fast - beta_slow)
    out.append((1 - gamma) * theta / factor + gamma * theta)
  return np.array(out), 0.1 * math.log(factor) + 1.0


@pytest.mark.parametrize("head_dim,factor,length", [(16, 4.0, 256), (64, 8.0, 2048),
                                                     (128, 40.0, 4096)])
def test_yarn_ramp_matches_naive_reference(head_dim, factor, length):
  got, mscale = rope_frequencies(head_dim, BASE, RopeScaling("yarn", factor, length))
  want, want_mscale = yarn_reference(head_dim, BASE, factor, length)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
  assert mscale == pytest.approx(want_mscale)
  # The ramp really has all three regions for these sizes.
  plain, _ = rope_frequencies(head_dim, BASE)
  ratio = np.asarray(got) / np.asarray(plain)
  assert ratio[0] == pytest.approx(1.0) and ratio[-1] == pytest.approx(1 / factor, rel=1e-5)
  assert np.any((ratio > 1 / factor + 1e-3) & (ratio < 1 - 1e-3))


def test_yarn_scales_attention_logits_by_temperature_squared():
  """q and k are both scaled by 0.1 ln s + 1, so q.k is scaled by its square."""
  s = 16.0
  scaling = RopeScaling("yarn", s, 64)
  q, k = _x(1, T=1, N=1), _x(2, T=1, N=1)
  pos_q, pos_k = jnp.array([[5]]), jnp.array([[3]])
  logit = jnp.sum(apply_rope(q, pos_q, BASE, scaling) * apply_rope(k, pos_k, BASE, scaling))
  # Reference: rotate with the YaRN frequencies by hand (NeoX halves), no temperature.
  inv_freq, _ = yarn_reference(H, BASE, s, 64)

  def rot(x, p):
    x = np.asarray(x, np.float64)[0, 0, 0]
    a, b = x[:H // 2], x[H // 2:]
    c, sn = np.cos(p * inv_freq), np.sin(p * inv_freq)
    return np.concatenate([a * c - b * sn, b * c + a * sn])
  want = (0.1 * math.log(s) + 1) ** 2 * rot(q, 5) @ rot(k, 3)
  assert float(logit) == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("attention", [dict(position="rope"),
                                       dict(position="none", attention="mla", mla_kv_rank=8,
                                            mla_rope_dim=4)])
def test_gpt_passes_the_scaling_to_every_layer(attention):
  """A GPT with linear scaling == the same params run at positions / factor (for MLA: its
  decoupled RoPE query and key)."""
  base = GPTConfig(vocab_size=11, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32,
                   max_len=64, use_bias=False, **attention)
  scaled = GPTConfig(**{**base.__dict__, "rope_scaling": "linear", "rope_scaling_factor": 4.0,
                        "rope_original_max_len": 16})
  tokens = jax.random.randint(jax.random.key(0), (2, 12), 0, 11)
  params = GPT(base).init(jax.random.key(1), tokens)["params"]
  params = jax.tree.map(lambda p: 10 * p, params)  # sharper attention: positions matter
  got, _ = GPT(scaled).apply({"params": params}, tokens)
  pos = jnp.broadcast_to(jnp.arange(12, dtype=jnp.float32)[None] / 4.0, (2, 12))
  want, _ = GPT(base).apply({"params": params}, tokens, positions_BT=pos)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  plain, _ = GPT(base).apply({"params": params}, tokens)
  assert np.abs(np.asarray(got) - np.asarray(plain)).max() > 1e-2  # not a no-op


@pytest.mark.parametrize("model, message", [
    ({"position": "rope", "rope_scaling": "dynamic"}, "rope scaling 'dynamic'"),
    ({"position": "rope", "rope_scaling": "yarn", "rope_scaling_factor": 4.0}, "original_max_len"),
    ({"position": "rope", "rope_scaling": "linear", "rope_scaling_factor": 0.5}, ">= 1"),
    ({"position": "learned", "rope_scaling": "linear", "rope_scaling_factor": 2.0},
     "needs position=rope"),
])
def test_bad_scaling_configs_are_user_errors(model, message):
  with pytest.raises(UserError, match=message):
    config_lib.from_dict({"data": {"path": "x"}, "model": model})


# --- the context-extension experiment (experiments/long_context.py) --------------------


def _long_context_values(**extension):
  from configs import long_context
  values = long_context.get_config("smoke").to_dict()
  values["extension"].update(extension)
  return values


def test_bucket_perplexities_are_exp_of_mean_bucket_loss():
  from experiments.long_context import bucket_perplexities
  losses = np.array([1.0, 1.0, 2.0, 4.0])
  got = bucket_perplexities(losses, [2, 4])
  assert got == pytest.approx({"ppl_0_2": math.e, "ppl_2_4": math.exp(3.0)})


@pytest.mark.parametrize("extension, message", [
    ({"buckets": "32,64"}, "end at target_len"),
    ({"methods": "none,rope2"}, "unknown RoPE scaling 'rope2'"),
    ({"target_len": 16, "buckets": "16"}, "must exceed data.seq_len"),
    ({"finetune_stepz": 3}, "unknown config key extension.finetune_stepz"),
])
def test_long_context_config_errors(extension, message):
  from experiments.long_context import parse_config
  with pytest.raises(UserError, match=message):
    parse_config(_long_context_values(**extension))


def test_extension_sets_the_factor_from_the_lengths():
  from experiments.long_context import extended_model_config, parse_config
  config = parse_config(_long_context_values())
  yarn = extended_model_config(config.base.model, "yarn", 128, 32)
  assert (yarn.rope_scaling, yarn.rope_scaling_factor, yarn.rope_original_max_len,
          yarn.max_len) == ("yarn", 4.0, 32, 128)
  assert extended_model_config(config.base.model, "none", 128, 32).rope_scaling_factor == 1.0


@pytest.mark.slow
def test_long_context_smoke_run(tmp_path):
  import json
  import subprocess
  import sys
  out = subprocess.run([sys.executable, "-m", "experiments.run",
                        "--config=configs/long_context.py:smoke", f"--workdir={tmp_path}"],
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert [r["model"] for r in summary["rows"]] == [
      "base+none", "base+linear", "base+ntk", "base+yarn", "ft_none", "ft_linear", "ft_yarn"]
  assert (tmp_path / "ft_yarn" / "checkpoints").exists()
  assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 7

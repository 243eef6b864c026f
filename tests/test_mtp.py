"""Multi-token prediction: target alignment by hand, causality by perturbation, loss by hand."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.models.gpt import GPT, GPTConfig
from lm.objectives_mtp import (
  gpt_params,
  init_mtp_params,
  mtp_forward,
  mtp_inputs_and_targets,
  mtp_lm_loss,
)

T, V, DEPTH = 8, 13, 2


def test_depth_k_embeds_t_plus_k_and_predicts_t_plus_k_plus_1():
  tokens = np.arange(T + 1)[None]  # t_j = j
  inputs, targets = jnp.asarray(tokens[:, :-1]), jnp.asarray(tokens[:, 1:])
  for k in (1, 2, 3):
    emb, tgt, w = (np.asarray(a)[0] for a in mtp_inputs_and_targets(inputs, targets, None, k))
    for i in range(T):
      if i + k <= T - 1:
        assert (emb[i], tgt[i], w[i]) == (i + k, i + k + 1, 1.0)
      else:
        assert w[i] == 0.0
  # Padding weights of the batch are shifted with the targets.
  weights = jnp.asarray([[1, 1, 1, 1, 1, 0, 0, 0]], jnp.float32)
  _, _, w = mtp_inputs_and_targets(inputs, targets, weights, 2)
  np.testing.assert_array_equal(np.asarray(w)[0], [1, 1, 1, 0, 0, 0, 0, 0])


@pytest.fixture(scope="module")
def setup():
  c = GPTConfig(vocab_size=V, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32, max_len=T,
                position="rope", norm="rmsnorm", mlp="swiglu", use_bias=False)
  model = GPT(c)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, V, (2, T + 1)), jnp.int32)
  params = jax.jit(lambda: {**model.init(jax.random.key(0), tokens[:, :T])["params"],
                            **init_mtp_params(model, T, DEPTH, 0)})()
  params = nn.meta.unbox(params)
  # Larger weights than the init's, so every dependence is visible above float noise.
  params = jax.tree.map(lambda p: p * 3 if p.ndim >= 2 else p, params)
  forward = jax.jit(lambda p, x: mtp_forward(model, p, x, DEPTH)[:2])
  return model, params, tokens, forward


def test_depth_k_logits_see_tokens_up_to_i_plus_k(setup):
  model, params, tokens, forward = setup
  inputs = tokens[:, :T]
  _, base = forward(params, inputs)
  for j in range(T):  # perturb token j; depth-k logits at i may change only if j <= i + k
    changed = inputs.at[:, j].set((inputs[:, j] + 1) % V)
    _, new = forward(params, changed)
    for k, (a, b) in enumerate(zip(base, new), start=1):
      diff = np.abs(np.asarray(a) - np.asarray(b)).max(axis=(0, 2))  # per position i
      for i in range(T - k):
        if j > i + k:
          assert diff[i] == 0.0, (k, i, j)
        elif j == i + k:
          assert diff[i] > 1e-4, (k, i, j)  # the embedded next token matters


def test_main_head_is_the_plain_gpt_and_loss_by_hand(setup):
  model, params, tokens, forward = setup
  inputs, targets = tokens[:, :T], tokens[:, 1:]
  main, depth_logits = forward(params, inputs)
  # Inference drops the MTP modules (jit vs eager: float rounding only).
  plain, _ = jax.jit(model.apply)({"params": gpt_params(params)}, inputs)
  np.testing.assert_allclose(np.asarray(main), np.asarray(plain), atol=1e-6)

  def ce(logits, labels):
    logits = np.asarray(logits, np.float64)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    return np.mean(logz - np.take_along_axis(logits, labels[..., None], -1)[..., 0])

  toks = np.asarray(tokens)
  main_ce = ce(main, toks[:, 1:T + 1])
  # Depth k at position i predicts token i + k + 1; positions i <= T - 1 - k have one.
  depth_ce = [ce(np.asarray(lg)[:, :T - k], toks[:, k + 1:T + 1])
              for k, lg in enumerate(depth_logits, start=1)]
  lam = 0.3
  loss, metrics = jax.jit(mtp_lm_loss(model, DEPTH, lam), static_argnums=3)(
      params, {"inputs": inputs, "targets": targets}, jax.random.key(0), True)
  assert float(metrics["loss"]) == pytest.approx(main_ce, rel=1e-5)
  for k in range(1, DEPTH + 1):
    assert float(metrics[f"mtp_loss_{k}"]) == pytest.approx(depth_ce[k - 1], rel=1e-5)
    assert float(metrics[f"mtp_tokens_{k}"]) == 2 * (T - k)
  assert float(loss) == pytest.approx(main_ce + lam / DEPTH * sum(depth_ce), rel=1e-5)


@pytest.mark.slow
def test_deepseek_mini_smoke_trains_and_samples(tmp_path):
  """MoE + MTP + MLA from the command line: balance, MTP and main-head metrics reported."""
  import json
  import os
  import subprocess
  import sys
  from pathlib import Path

  root = Path(__file__).resolve().parent.parent
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONPATH=str(root))
  cmd = [sys.executable, "-m", "experiments.run", "--config=configs/deepseek_mini.py:smoke",
         f"--workdir={tmp_path / 'w'}", "--config.train.num_steps=10",
         "--config.train.eval_every=10", "--config.sample.max_new_tokens=8"]
  result = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads((tmp_path / "w" / "summary.json").read_text())
  assert 2.0 < summary["val_loss"] < 4.2 and summary["sample"].startswith("ROMEO:")
  for key in ("val_mtp_loss_1", "val_max_violation", "val_aux_loss", "val_load_0"):
    assert np.isfinite(summary[key]), key

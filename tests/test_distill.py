"""Distillation task: the loss function against hand computations and causal-LM training,
and a CLI smoke run from a trained teacher workdir (slow)."""

import json
import os
import subprocess
import sys
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.models.gpt import GPT, GPTConfig
from lm.objectives import causal_lm_loss
from lm.tasks.distill import DistillConfig, distill_loss

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def models():
  def make(layers, dim, seed):
    model = GPT(GPTConfig(vocab_size=11, num_layers=layers, num_heads=2, embed_dim=dim,
                          mlp_dim=2 * dim, max_len=16))
    params = nn.meta.unbox(model.init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))
                           ["params"])
    return model, params
  student, teacher = make(1, 8, 0), make(2, 16, 1)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 11, size=(3, 9))
  weights = np.ones((3, 8), np.float32)
  weights[2, 5:] = 0
  batch = {"inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:]),
           "weights": jnp.asarray(weights)}
  return student, types.SimpleNamespace(model=teacher[0], params=teacher[1]), batch


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_t1_alpha0_loss_is_kl_to_the_teacher_distribution(models):
  (student, params), teacher, batch = models
  loss_fn = distill_loss(student, teacher, DistillConfig(temperature=1.0, alpha=0.0))
  loss, metrics = loss_fn(params, batch, jax.random.key(0), deterministic=True)
  s_logits, _ = student.apply({"params": params}, batch["inputs"])
  t_logits, _ = teacher.model.apply({"params": teacher.params}, batch["inputs"])
  p, logq = np.exp(_log_softmax(t_logits)), _log_softmax(s_logits)
  w = np.asarray(batch["weights"], np.float64)
  soft_ce = ((-(p * logq).sum(-1)) * w).sum() / w.sum()
  entropy = ((-(p * np.log(p)).sum(-1)) * w).sum() / w.sum()
  assert float(loss) == pytest.approx(soft_ce - entropy, rel=1e-5)
  assert float(metrics["num_tokens"]) == w.sum()
  hard = -(np.take_along_axis(logq, np.asarray(batch["targets"])[..., None], -1)[..., 0]
           * w).sum() / w.sum()
  assert float(metrics["ce"]) == pytest.approx(hard, rel=1e-5)


def test_alpha1_gives_the_causal_lm_gradient(models):
  (student, params), teacher, batch = models
  kd = distill_loss(student, teacher, DistillConfig(temperature=3.0, alpha=1.0))
  lm = causal_lm_loss(student)
  g_kd = jax.grad(lambda p: kd(p, batch, jax.random.key(0), deterministic=True)[0])(params)
  g_lm = jax.grad(lambda p: lm(p, batch, jax.random.key(0), deterministic=True)[0])(params)
  for a, b in zip(jax.tree.leaves(g_kd), jax.tree.leaves(g_lm)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_teacher_gets_no_gradient_and_student_moves_toward_it(models):
  (student, params), teacher, batch = models
  kd = distill_loss(student, teacher, DistillConfig(temperature=2.0, alpha=0.0))
  loss0, _ = kd(params, batch, jax.random.key(0), deterministic=True)
  grads = jax.grad(lambda p: kd(p, batch, jax.random.key(0), deterministic=True)[0])(params)
  stepped = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)
  loss1, _ = kd(stepped, batch, jax.random.key(0), deterministic=True)
  assert float(loss1) < float(loss0)


@pytest.mark.slow
def test_distill_cli_smoke(tmp_path):
  teacher, student = tmp_path / "teacher", tmp_path / "student"
  for args in (["--config=configs/shakespeare_char.py:smoke", f"--workdir={teacher}"],
               [f"--config=configs/distill_shakespeare.py:smoke,teacher={teacher}",
                f"--workdir={student}"]):
    proc = subprocess.run([sys.executable, "-m", "experiments.run", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
  summary = json.load(open(student / "summary.json"))
  assert np.isfinite(summary["val_ce"]) and summary["val_kl"] >= 0
  assert summary["params"] < json.load(open(teacher / "summary.json"))["params"]

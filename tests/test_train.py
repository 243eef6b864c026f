"""Optimizer schedule, EMA, the scanned train step and checkpoints, against references."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lm.config import OptimConfig
from lm.errors import UserError
from lm.models.gpt import GPT, GPTConfig
from lm.objectives import causal_lm_loss
from lm.train.checkpoint import Checkpointer
from lm.train.ema import find_ema, param_ema
from lm.train.optimizer import learning_rate_schedule, make_optimizer
from lm.train.state import create_train_state
from lm.train.step import make_multi_step, train_step


def test_schedule_matches_warmup_then_cosine_closed_form():
  cfg = OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=100)
  schedule = learning_rate_schedule(cfg, num_steps=2000)
  for step in (0, 50, 100, 700, 1500, 2000):
    if step < 100:
      expected = 1e-3 * step / 100
    else:
      progress = (step - 100) / 1900
      expected = 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * progress))
    assert float(schedule(step)) == pytest.approx(expected, rel=1e-5)


def test_param_ema_matches_a_naive_loop():
  params = {"w": jnp.array([1.0, -2.0])}
  tx = optax.chain(optax.sgd(0.1), param_ema(0.9))
  state = tx.init(params)
  ema = np.array([1.0, -2.0])
  for t in range(30):
    grads = {"w": jnp.array([0.5 * t, 1.0])}
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    d = min(0.9, (1 + t) / (10 + t))
    ema = d * ema + (1 - d) * np.asarray(params["w"])
  np.testing.assert_allclose(find_ema(state)["w"], ema, rtol=1e-6)
  assert find_ema(optax.sgd(0.1).init(params)) is None


@pytest.fixture(scope="module")
def tiny():
  model = GPT(GPTConfig(vocab_size=13, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32,
                        max_len=8))
  params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  tx = make_optimizer(OptimConfig(lr=1e-2, warmup_steps=2), num_steps=20)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 13, (4, 3, 9)).astype(np.int32)
  batches = {"inputs": tokens[..., :-1], "targets": tokens[..., 1:]}
  return model, params, tx, batches


def test_scanned_steps_equal_sequential_steps(tiny):
  model, params, tx, batches = tiny
  loss_fn = causal_lm_loss(model)
  rng = jax.random.key(3)
  state = create_train_state(params, tx)
  step = jax.jit(lambda s, b: train_step(s, b, rng, loss_fn=loss_fn, tx=tx))  # compiled once
  for i in range(4):
    state, _ = step(state, jax.tree.map(lambda x: x[i], batches))
  fresh = create_train_state(jax.tree.map(jnp.copy, params), tx)  # the call donates it
  scanned, metrics = make_multi_step(loss_fn, tx)(fresh, batches, rng)
  assert int(scanned.step) == 4 and metrics["loss"].shape == (4,)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(scanned.params)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


def test_training_fits_a_repeated_batch(tiny):
  model, params, tx, batches = tiny
  repeated = jax.tree.map(lambda x: np.repeat(x[:1], 4, axis=0), batches)
  multi = make_multi_step(causal_lm_loss(model), tx)
  state = create_train_state(jax.tree.map(jnp.copy, params), tx)
  first = None
  for _ in range(5):
    state, metrics = multi(state, repeated, jax.random.key(0))
    first = float(metrics["loss"][0]) if first is None else first
  assert float(metrics["loss"][-1]) < 0.6 * first  # log(13) = 2.56 nats at the start


def test_weight_decay_skips_biases_and_norms(tiny):
  _, params, _, _ = tiny
  tx = make_optimizer(OptimConfig(lr=1.0, warmup_steps=0, weight_decay=0.5, grad_clip=0),
                      num_steps=10)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  flat = jax.tree_util.tree_flatten_with_path(updates)[0]
  for path, u in flat:
    name = jax.tree_util.keystr(path)
    if "bias" in name or "ln_" in name:
      assert np.all(np.asarray(u) == 0), name
    else:  # lr(1) * wd(0.5) * param, with the sign of a descent step
      p = dict(jax.tree_util.tree_flatten_with_path(params)[0])[path]
      np.testing.assert_allclose(u, -0.5 * np.asarray(p), rtol=1e-6)


def test_checkpoint_round_trip_and_shape_mismatch(tiny, tmp_path):
  model, params, tx, _ = tiny
  state = create_train_state(params, tx)
  ckpt = Checkpointer(str(tmp_path), keep=2)
  ckpt.save(7, state, {"next_index": 21})
  restored, data_state = ckpt.restore(jax.eval_shape(lambda: state))
  assert data_state == {"next_index": 21} and int(restored.step) == 0
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(a, b)

  wider = GPT(GPTConfig(vocab_size=13, num_layers=2, num_heads=2, embed_dim=32, mlp_dim=32,
                        max_len=8))
  wider_params = jax.eval_shape(
      lambda: nn.meta.unbox(wider.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]))
  with pytest.raises(UserError, match="does not match the model"):
    ckpt.restore(jax.eval_shape(lambda: create_train_state(wider_params, tx)))
  assert ckpt.latest_step() == 7  # the mismatch left the checkpoint alone
  ckpt.close()

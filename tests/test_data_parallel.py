"""The shard_map data-parallel step (lm/train/data_parallel.py) on 8 fake CPU devices.

The reference is the plain step (lm/train/step.py) on one device over the whole batch:
with padding weights that give every device a different number of tokens, the
count-weighted all-reduce must reproduce the full batch's mean loss, gradient norm and
updated parameters.
"""

import flax.linen as nn
import jax
import numpy as np
import pytest

from lm import sharding
from lm.config import OptimConfig, ShardingConfig
from lm.models.gpt import GPT, GPTConfig
from lm.objectives import causal_lm_loss
from lm.tasks.causal_lm import init_params
from lm.train import data_parallel
from lm.train.layout import Layout
from lm.train.optimizer import make_optimizer
from lm.train.state import create_train_state
from lm.train.step import make_multi_step

CFG = GPTConfig(vocab_size=32, num_layers=2, num_heads=2, embed_dim=32, mlp_dim=64, max_len=8)
STEPS, BATCH = 3, 16  # 2 rows per device


def _batches():
  """One random batch seen STEPS times, so the loss must fall."""
  rng = np.random.default_rng(0)
  x = rng.integers(0, CFG.vocab_size, (1, BATCH, CFG.max_len + 1)).astype(np.int32)
  x = np.repeat(x, STEPS, axis=0)
  # Row r keeps its first r % 9 targets (row 0 none): per-device token counts differ.
  weights = (np.arange(CFG.max_len)[None, :] < (np.arange(BATCH) % 9)[:, None])
  weights = np.broadcast_to(weights, (STEPS, BATCH, CFG.max_len)).astype(np.float32)
  return {"inputs": x[:, :, :-1], "targets": x[:, :, 1:], "weights": weights}


def _fresh_state(tx):
  model = GPT(CFG)
  return model, create_train_state(nn.meta.unbox(init_params(model, CFG.max_len, 0)), tx)


@pytest.fixture(scope="module")
def one_device():
  tx = make_optimizer(OptimConfig(lr=1e-2, warmup_steps=1), 10)
  model, state = _fresh_state(tx)
  step = make_multi_step(causal_lm_loss(model), tx)
  state, metrics = step(jax.device_put(state, jax.devices()[0]),
                        jax.device_put(_batches(), jax.devices()[0]), jax.random.key(0))
  return state, jax.tree.map(np.asarray, metrics)


def test_data_parallel_step_equals_one_device_step(one_device):
  ref_state, ref_metrics = one_device
  tx = make_optimizer(OptimConfig(lr=1e-2, warmup_steps=1), 10)
  model, state = _fresh_state(tx)
  layout = Layout.from_config(ShardingConfig(rules="dp"))  # data=-1: all 8 devices
  replicated = jax.tree.map(lambda _: layout.replicated, state)
  axes = data_parallel.replicated_batch_axes(layout, replicated)
  assert axes
  step = data_parallel.make_multi_step(causal_lm_loss(model), tx, layout.mesh, axes)
  with layout.context():
    state, metrics = step(jax.device_put(state, layout.replicated),
                          layout.put_batch(_batches(), leading_dims=1), jax.random.key(0))
  metrics = jax.tree.map(np.asarray, metrics)
  np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-5)
  np.testing.assert_allclose(metrics["grad_norm"], ref_metrics["grad_norm"], rtol=1e-4)
  np.testing.assert_array_equal(metrics["num_tokens"], ref_metrics["num_tokens"])
  assert metrics["loss"][-1] < metrics["loss"][0]  # it trained
  for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(state.params),
                               jax.tree.leaves(ref_state.params)):
    if "key" in jax.tree_util.keystr(path) and "bias" in jax.tree_util.keystr(path):
      # The key bias adds the same q.b to every logit of a row, which softmax ignores:
      # its true gradient is 0, so both runs move it only by rounding noise, which Adam
      # normalises differently for each summation order. Check that it stayed ~0.
      assert np.abs(np.asarray(got)).max() < 1e-4 and np.abs(np.asarray(want)).max() < 1e-4
      continue
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)
  wi = state.params["block_0"]["mlp"]["wi"]["kernel"]
  assert len(wi.sharding.device_set) == 8 and wi.sharding.is_fully_replicated


def test_used_only_when_the_batch_is_the_only_split():
  def axes_for(cfg, devices=None):
    tx = make_optimizer(OptimConfig(), 10)
    model = GPT(CFG)
    layout = Layout.from_config(cfg, devices)
    _, shardings = layout.state_shardings(
        lambda: create_train_state(init_params(model, CFG.max_len, 0), tx))
    return data_parallel.replicated_batch_axes(layout, shardings)

  assert axes_for(ShardingConfig(rules="dp")) == ("data", "fsdp")
  assert axes_for(ShardingConfig(data=2, fsdp=4, rules="fsdp")) is None  # params are split
  assert axes_for(ShardingConfig(data=1), jax.devices()[:1]) is None  # nothing to split


def test_cpu_devices_config():
  with pytest.raises(ValueError, match="cpu_devices"):
    ShardingConfig(cpu_devices=-1)
  note = sharding.start_cpu_devices(2)  # JAX already runs with conftest's 8 devices here
  assert "not applied" in note and "8 CPU device" in note
  assert jax.device_count() == 8
  assert sharding.start_cpu_devices(8) is None and sharding.start_cpu_devices(0) is None

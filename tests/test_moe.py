"""MoE layer against an independent NumPy reference that runs every expert on every token.

The reference (float64) computes affinities, top-k selection (on affinity + bias), the
normalised gates, all E experts densely, and combines them with a gate matrix that is zero
for unselected experts; capacity dropping is re-implemented with explicit loops.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.layers.moe import STATS, MoE, MoEConfig, balance_loss, max_violation


def _gelu(x):  # tanh approximation, as jax.nn.gelu
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _silu(x):
  return x / (1 + np.exp(-x))


def reference_moe(params, x_BTD, c: MoEConfig, capacity=None):
  """Dense all-experts MoE in float64; returns (y_BTD, selected_NK, gates_NK)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  B, T, D = x_BTD.shape
  x = np.asarray(x_BTD, np.float64).reshape(B * T, D)
  logits = x @ p["router"]
  if c.router == "softmax":
    e = np.exp(logits - logits.max(-1, keepdims=True))
    s = e / e.sum(-1, keepdims=True)
  else:
    s = 1 / (1 + np.exp(-logits))
  select = s + p["balance_bias"]
  chosen = np.argsort(-select, axis=-1, kind="stable")[:, :c.top_k]
  gates = np.take_along_axis(s, chosen, -1)
  if c.normalize_gates:
    gates = gates / gates.sum(-1, keepdims=True)
  G = np.zeros_like(s)  # N x E gate matrix, zero for experts not chosen (or dropped)
  used = np.zeros(c.num_experts, int)
  for n in range(x.shape[0]):
    for k in range(c.top_k):
      e = chosen[n, k]
      if capacity is None or used[e] < capacity:
        G[n, e] += gates[n, k]
      used[e] += 1
  y = np.zeros_like(x)
  for e in range(c.num_experts):
    if c.activation == "swiglu":
      h = _silu(x @ p["wi_gate"][e]) * (x @ p["wi_up"][e])
    else:
      h = _gelu(x @ p["wi"][e])
    y += G[:, e:e + 1] * (h @ p["wo"][e])
  if c.num_shared:
    sp = p["shared"]
    if c.activation == "swiglu":
      h = _silu(x @ sp["wi_gate"]["kernel"]) * (x @ sp["wi_up"]["kernel"])
    else:
      h = _gelu(x @ sp["wi"]["kernel"])
    y += h @ sp["wo"]["kernel"]
  return y.reshape(B, T, D), chosen, gates


@functools.cache
def _jitted_apply(c: MoEConfig, stats: bool):
  return jax.jit(lambda p, x: MoE(c).apply({"params": p}, x, mutable=[STATS] if stats else False))


def _apply(c: MoEConfig, params, x, stats=False):
  """The layer, jitted once per config (eager dispatch of its many small ops compiles slowly)."""
  return _jitted_apply(c, stats)(params, x)


def _init(c: MoEConfig, shape=(2, 9, 6), seed=0):
  """Random params of the layer's shapes (NumPy: compiling the layer's init is slow on CPU)."""
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  shapes = nn.meta.unbox(jax.eval_shape(MoE(c).init, jax.random.key(0), x)["params"])
  params = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), jnp.float32),
                        shapes)
  params["balance_bias"] = jnp.zeros_like(params["balance_bias"])
  # Larger router weights, so selections differ clearly between tokens.
  params["router"] = params["router"] * 5
  return params, x


CASES = [
    MoEConfig(num_experts=4, top_k=2, expert_dim=8, num_shared=1, block_size=4),
    MoEConfig(num_experts=5, top_k=3, expert_dim=8, activation="gelu", router="sigmoid",
              block_size=2),
    MoEConfig(num_experts=8, top_k=1, expert_dim=4, normalize_gates=False, block_size=64),
]


@pytest.mark.parametrize("c", CASES)
def test_dropless_equals_dense_reference(c):
  params, x = _init(c)
  y, stats = _apply(c, params, x, stats=True)
  y_ref, chosen, _ = reference_moe(params, x, c)
  np.testing.assert_allclose(np.asarray(y), y_ref, atol=1e-5, rtol=1e-5)
  counts = np.bincount(chosen.reshape(-1), minlength=c.num_experts)
  np.testing.assert_allclose(stats[STATS]["load"][0], counts / chosen.size, atol=1e-7)
  assert float(stats[STATS]["dropped"][0]) == 0.0


@pytest.mark.parametrize("c", CASES[:2])
def test_few_tokens_path_equals_dense_reference(c):
  """N * K <= E (one decoded token) takes the one-row-per-block path."""
  params, _ = _init(c)
  x = jnp.asarray(np.random.default_rng(5).normal(size=(1, 1, 6)), jnp.float32)
  y_ref, _, _ = reference_moe(params, x, c)
  np.testing.assert_allclose(np.asarray(_apply(c, params, x)), y_ref, atol=1e-5, rtol=1e-5)


def test_capacity_drops_later_tokens_like_the_reference():
  c = MoEConfig(num_experts=4, top_k=2, expert_dim=8, capacity_factor=0.5, block_size=4)
  params, x = _init(c)
  N = x.shape[0] * x.shape[1]
  capacity = math.ceil(0.5 * N * 2 / 4)
  y, stats = _apply(c, params, x, stats=True)
  y_ref, chosen, _ = reference_moe(params, x, c, capacity=capacity)
  np.testing.assert_allclose(np.asarray(y), y_ref, atol=1e-5, rtol=1e-5)
  counts = np.bincount(chosen.reshape(-1), minlength=4)
  dropped = np.maximum(counts - capacity, 0).sum() / chosen.size
  assert dropped > 0
  np.testing.assert_allclose(float(stats[STATS]["dropped"][0]), dropped, atol=1e-6)


def _loss(params, x, c):
  return jnp.sum(MoE(c).apply({"params": params}, x) ** 2)


_grad = jax.jit(jax.grad(_loss), static_argnums=2)


def test_balance_bias_changes_selection_not_gates_or_gradients():
  c = CASES[0]
  params, x = _init(c)
  grads = _grad(params, x, c)
  assert np.all(np.asarray(grads["balance_bias"]) == 0.0)  # never in the gradient
  # A bias equal for all experts cannot change any top-k: outputs and gradients identical.
  shifted = dict(params, balance_bias=params["balance_bias"] + 0.3)
  y0, y1 = (_apply(c, p, x) for p in (params, shifted))
  np.testing.assert_array_equal(np.asarray(y0), np.asarray(y1))
  g1 = _grad(shifted, x, c)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               {k: v for k, v in grads.items() if k != "balance_bias"},
               {k: v for k, v in g1.items() if k != "balance_bias"})
  # A large bias on experts 2 and 3 forces them to be chosen by every token ...
  forced = dict(params, balance_bias=jnp.array([0.0, 0.0, 10.0, 10.0]))
  y2 = _apply(c, forced, x)
  y_ref, chosen, gates = reference_moe(forced, x, c)
  assert set(np.unique(chosen)) == {2, 3}
  np.testing.assert_allclose(np.asarray(y2), y_ref, atol=1e-5, rtol=1e-5)
  # ... and the gates are the unbiased affinities of 2 and 3, renormalised: not 1/2 each.
  logits = np.asarray(x, np.float64).reshape(-1, 6) @ np.asarray(params["router"], np.float64)
  s = np.exp(logits - logits.max(-1, keepdims=True))
  s = s / s.sum(-1, keepdims=True)
  expected = np.take_along_axis(s, chosen, -1)
  np.testing.assert_allclose(gates, expected / expected.sum(-1, keepdims=True), rtol=1e-12)
  assert np.abs(gates - 0.5).max() > 1e-3


def test_balance_loss_by_hand():
  # Two tokens, two experts, top-1: both pick expert 0; f = (1, 0), P = (0.7, 0.3).
  affinity = jnp.array([[0.8, 0.2], [0.6, 0.4]])
  assert float(balance_loss(affinity, jnp.array([[0], [0]]))) == pytest.approx(2 * 0.7)
  # Perfect balance: 1.
  assert float(balance_loss(affinity, jnp.array([[0], [1]]))) == pytest.approx(
      2 * (0.5 * 0.7 + 0.5 * 0.3))
  # Sigmoid affinities are normalised per token before averaging (DeepSeek-V3 eq. 18).
  sig = jnp.array([[0.9, 0.3, 0.6]])
  p = np.array([0.9, 0.3, 0.6]) / 1.8
  assert float(balance_loss(sig, jnp.array([[0, 2]]))) == pytest.approx(
      3 * (0.5 * p[0] + 0.5 * p[2]))
  assert float(max_violation(jnp.array([0.5, 0.25, 0.25, 0.0]))) == pytest.approx(1.0)


def test_sown_aux_losses_match_hand_computation():
  c = MoEConfig(num_experts=4, top_k=2, expert_dim=8, router="sigmoid", block_size=4)
  params, x = _init(c)
  _, stats = _apply(c, params, x, stats=True)
  _, chosen, _ = reference_moe(params, x, c)
  logits = np.asarray(x, np.float64).reshape(-1, 6) @ np.asarray(params["router"], np.float64)
  s = 1 / (1 + np.exp(-logits))
  s = s / s.sum(-1, keepdims=True)

  def by_hand(s, chosen):
    f = np.bincount(chosen.reshape(-1), minlength=4) * 4 / chosen.size
    return np.sum(f * s.mean(0))

  assert float(stats[STATS]["aux_loss"][0]) == pytest.approx(by_hand(s, chosen), rel=1e-5)
  B, T = x.shape[:2]
  seq = np.mean([by_hand(s.reshape(B, T, 4)[b], chosen.reshape(B, T, 2)[b]) for b in range(B)])
  assert float(stats[STATS]["seq_aux_loss"][0]) == pytest.approx(seq, rel=1e-5)


def test_router_gradient_flows_through_gates():
  c = CASES[0]
  params, x = _init(c)
  g = _grad(params, x, c)
  assert float(jnp.abs(g["router"]).max()) > 0
  # Every expert that received tokens gets a gradient; one that received none gets zero.
  forced = dict(params, balance_bias=jnp.array([0.0, 0.0, 10.0, 10.0]))
  g = _grad(forced, x, c)
  assert float(jnp.abs(g["wo"][:2]).max()) == 0.0 and float(jnp.abs(g["wo"][2:]).min()) >= 0
  assert float(jnp.abs(g["wo"][2:]).max()) > 0


def _imbalanced_moe_gpt():
  """A one-layer MoE GPT whose router (scaled x100) starts far from balance, a batch, an
  AdamW and the moe_lm loss."""
  from lm.config import OptimConfig
  from lm.models.gpt import GPT, GPTConfig
  from lm.objectives_mtp import mtp_lm_loss
  from lm.train.optimizer import make_optimizer

  cfg = GPTConfig(vocab_size=11, num_layers=1, num_heads=2, embed_dim=16, mlp_dim=16, max_len=8,
                  mlp="moe", moe_num_experts=4, moe_top_k=2, moe_router="sigmoid")
  model = GPT(cfg)
  tokens = jnp.asarray(np.random.default_rng(3).integers(0, 11, (4, 9)), jnp.int32)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), batch["inputs"])["params"])
  params["block_0"]["moe"]["router"] = params["block_0"]["moe"]["router"] * 100  # imbalance
  tx = make_optimizer(OptimConfig(lr=1e-2, warmup_steps=0), 10)
  return params, batch, tx, mtp_lm_loss(model, depth=0)


def test_balancing_step_moves_the_bias_by_gamma_and_the_optimizer_leaves_it():
  from lm.tasks.mtp_lm import make_balancing_multi_step
  from lm.train.state import create_train_state

  params, batch, tx, loss_fn = _imbalanced_moe_gpt()
  batches = jax.tree.map(lambda a: a[None], batch)  # one step
  gamma = 0.25
  state = create_train_state(jax.tree.map(jnp.copy, params), tx)
  new, metrics = make_balancing_multi_step(gamma)(loss_fn, tx)(state, batches, jax.random.key(0))
  router = params["block_0"]["moe"]["router"]
  assert not np.allclose(new.params["block_0"]["moe"]["router"], router)  # AdamW did step
  # The step's loads (one MoE layer: its loads are the reported load_e).
  load = np.array([float(metrics[f"load_{e}"][0]) for e in range(4)])
  counts = load * batch["inputs"].size * 2
  np.testing.assert_allclose(counts, np.round(counts), atol=1e-4)  # loads are count shares
  # Over-loaded experts go down by gamma, under-loaded ones up, exactly-average ones stay;
  # the bias is exactly that (starting from 0): the optimizer added nothing to it.
  expected = gamma * np.sign(load.mean() - load)
  assert np.any(expected > 0) and np.any(expected < 0)
  np.testing.assert_array_equal(np.asarray(new.params["block_0"]["moe"]["balance_bias"]),
                                expected.astype(np.float32))
  violation = load.max() / load.mean() - 1
  assert float(metrics["max_violation"][0]) == pytest.approx(violation, rel=1e-5)
  assert float(metrics["max_violation_worst"][0]) == pytest.approx(violation, rel=1e-5)


def test_balancing_bias_stops_moving_at_until_step():
  """DeepSeek-V3's schedule: updates 0 .. until_step - 1 move the bias, later ones do not."""
  from lm.errors import UserError
  from lm.tasks.mtp_lm import MoELMConfig, make_balancing_multi_step
  from lm.train.state import create_train_state

  params, batch, tx, loss_fn = _imbalanced_moe_gpt()
  batches = jax.tree.map(lambda a: jnp.stack([a] * 4), batch)  # four steps
  gamma = 0.25
  step = make_balancing_multi_step(gamma, until_step=2)(loss_fn, tx)
  new, metrics = step(create_train_state(params, tx), batches, jax.random.key(0))
  loads = np.stack([np.asarray(metrics[f"load_{e}"]) for e in range(4)], axis=1)  # (step, E)
  # Only the first two steps' loads move the bias (each by gamma * sign(mean - load)).
  expected = sum(gamma * np.sign(l.mean() - l) for l in loads[:2])
  assert np.any(np.sign(loads[2].mean() - loads[2]) != 0)  # step 2 would have moved it
  np.testing.assert_allclose(np.asarray(new.params["block_0"]["moe"]["balance_bias"]),
                             expected, atol=1e-6)
  with pytest.raises(UserError, match="bias_update_until"):
    MoELMConfig(bias_update_until=1.5)


def _moe_layout_and_state(sharding_config, devices=None):
  from lm.config import OptimConfig
  from lm.models.gpt import GPT, GPTConfig
  from lm.tasks.causal_lm import init_params
  from lm.train.layout import Layout
  from lm.train.optimizer import make_optimizer
  from lm.train.state import create_train_state

  cfg = GPTConfig(vocab_size=11, num_layers=1, num_heads=2, embed_dim=16, mlp_dim=16, max_len=8,
                  mlp="moe", moe_num_experts=4, moe_top_k=2, moe_num_shared=1)
  model = GPT(cfg)
  tx = make_optimizer(OptimConfig(lr=1e-2, warmup_steps=1), 10)
  layout = Layout.from_config(sharding_config, devices)
  make_state = lambda: create_train_state(init_params(model, 8, 0), tx)
  _, shardings = layout.state_shardings(make_state)
  return model, tx, layout, shardings, make_state


def test_expert_weights_shard_over_the_expert_axis():
  from jax.sharding import PartitionSpec

  from lm.config import ShardingConfig
  *_, shardings, _ = _moe_layout_and_state(ShardingConfig(data=2, fsdp=2, expert=2,
                                                          rules="fsdp_ep"))
  moe = shardings.params["block_0"]["moe"]
  assert moe["wi_gate"].spec == PartitionSpec("expert", "fsdp", None)
  assert moe["wo"].spec == PartitionSpec("expert", None, "fsdp")
  assert moe["router"].spec == PartitionSpec("fsdp", None)
  assert moe["balance_bias"].spec == PartitionSpec(None)


@pytest.mark.slow
def test_fsdp_ep_training_matches_one_device():
  from lm.config import ShardingConfig
  from lm.objectives_mtp import mtp_lm_loss
  from lm.tasks.mtp_lm import make_balancing_multi_step

  rng = np.random.default_rng(0)
  x = np.repeat(rng.integers(0, 11, (1, 8, 9)).astype(np.int32), 3, axis=0)
  batches = {"inputs": x[:, :, :-1], "targets": x[:, :, 1:]}
  out = []
  for cfg, devices in ((ShardingConfig(data=1), jax.devices()[:1]),
                       (ShardingConfig(data=2, fsdp=2, expert=2, rules="fsdp_ep"), None)):
    model, tx, layout, shardings, make_state = _moe_layout_and_state(cfg, devices)
    state = layout.init_state(make_state, shardings)
    step = make_balancing_multi_step(0.01)(mtp_lm_loss(model, 0, aux_weight=0.01), tx)
    with layout.context():
      state, metrics = step(state, layout.put_batch(batches, leading_dims=1), jax.random.key(0))
    out.append((np.asarray(metrics["loss"]), np.asarray(state.params["block_0"]["moe"][
        "balance_bias"])))
  np.testing.assert_allclose(out[1][0], out[0][0], rtol=1e-5)
  np.testing.assert_allclose(out[1][1], out[0][1], atol=1e-7)
  assert out[0][0][-1] < out[0][0][0]

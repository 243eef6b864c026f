"""Meshes, rules and sharded training on 8 fake CPU devices (tests/conftest.py).

The reference for sharded training is the same computation on one device: every
preset must give the same losses after 3 steps (f32, 1e-5 relative). Parameter
layouts are compared with golden PartitionSpecs in tests/golden/ (regenerate with
LM_UPDATE_GOLDEN=1 after a deliberate change, and review the diff).
"""

import json
import os
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from lm import sharding
from lm.config import OptimConfig, ShardingConfig
from lm.models.gpt import GPT, GPTConfig
from lm.objectives import causal_lm_loss
from lm.tasks.causal_lm import init_params
from lm.train.checkpoint import Checkpointer
from lm.train.layout import Layout
from lm.train.optimizer import make_optimizer
from lm.train.state import create_train_state
from lm.train.step import make_multi_step

GOLDEN = Path(__file__).parent / "golden"
CFG = GPTConfig(vocab_size=64, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64, max_len=16)
MESHES = {  # preset -> mesh over the 8 fake devices
    "dp": ShardingConfig(rules="dp"),
    "fsdp": ShardingConfig(data=2, fsdp=4, rules="fsdp"),
    "fsdp_tp": ShardingConfig(data=2, fsdp=2, tensor=2, rules="fsdp_tp"),
    "fsdp_ep": ShardingConfig(data=2, fsdp=2, expert=2, rules="fsdp_ep"),
}


# --- mesh and rules --------------------------------------------------------------------

def test_mesh_fills_minus_one_and_checks_device_count():
  assert sharding.mesh_shape(sharding.MeshShape(data=-1, fsdp=2), 8) == (4, 2, 1, 1)
  assert sharding.mesh_shape(sharding.MeshShape(data=2, fsdp=2, tensor=2), 8) == (2, 2, 2, 1)
  with pytest.raises(sharding.ShardingError, match="needs 4 devices"):
    sharding.mesh_shape(sharding.MeshShape(data=2, fsdp=2), 8)
  with pytest.raises(sharding.ShardingError, match="cannot fill"):
    sharding.mesh_shape(sharding.MeshShape(data=-1, fsdp=3), 8)
  with pytest.raises(sharding.ShardingError, match="at most one"):
    sharding.mesh_shape(sharding.MeshShape(data=-1, fsdp=-1), 8)
  mesh = sharding.make_mesh(sharding.MeshShape(data=2, fsdp=4))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1, "expert": 1}


def test_rules_resolve_logical_names_to_partition_specs():
  rules = sharding.make_rules("fsdp_tp")
  assert sharding.logical_to_spec(("embed", "heads", "head_dim"), rules) == \
      PartitionSpec("fsdp", "tensor", None)
  assert sharding.logical_to_spec(("batch", "length", "act_mlp"), rules) == \
      PartitionSpec(("data", "fsdp"), None, "tensor")
  assert sharding.logical_to_spec((None, "embed"), sharding.make_rules("dp")) == \
      PartitionSpec(None, None)
  # An override replicates vocab explicitly and moves mlp to fsdp+tensor.
  rules = sharding.make_rules("dp", "mlp=fsdp+tensor;vocab=")
  assert sharding.logical_to_spec(("embed", "mlp"), rules) == \
      PartitionSpec(None, ("fsdp", "tensor"))


@pytest.mark.parametrize("preset,overrides,match", [
    ("zero", "", "unknown sharding preset"),
    ("dp", "embedding=fsdp", "unknown logical axis 'embedding'"),
    ("dp", "embed=model", "unknown mesh axis 'model'"),
    ("dp", "embed=fsdp;embed=tensor", "conflicting sharding overrides"),
    ("dp", "embed=fsdp+fsdp", "repeats a mesh axis"),
    ("dp", "act_embed=data", "both map to mesh axis 'data'"),  # batch is on data too
    ("dp", "mlp", "not of the form"),
])
def test_bad_rules_raise(preset, overrides, match):
  with pytest.raises(sharding.ShardingError, match=match):
    sharding.make_rules(preset, overrides)


def test_two_dims_on_one_mesh_axis_and_indivisible_dims_raise():
  rules = sharding.make_rules("fsdp", "mlp=fsdp")
  with pytest.raises(sharding.ShardingError, match="both map to mesh axis 'fsdp'"):
    sharding.logical_to_spec(("embed", "mlp"), rules)
  mesh = sharding.make_mesh(sharding.MeshShape(data=1, fsdp=8))
  with pytest.raises(sharding.ShardingError, match="size 12 is not divisible"):
    sharding.logical_to_spec(("embed",), sharding.make_rules("fsdp"), mesh, (12,))
  with pytest.raises(sharding.ShardingError, match="unknown logical axis 'hidden'"):
    sharding.logical_to_spec(("hidden",), sharding.make_rules("dp"))


def test_config_rejects_bad_sharding_section():
  from lm.errors import UserError
  with pytest.raises(UserError, match="unknown sharding preset"):
    ShardingConfig(rules="tp")


# --- layouts of real models ------------------------------------------------------------

def _layout_and_state(cfg: ShardingConfig, devices=None):
  model = GPT(CFG)
  tx = make_optimizer(OptimConfig(lr=1e-2, warmup_steps=1), 10)
  layout = Layout.from_config(cfg, devices)
  make_state = lambda: create_train_state(init_params(model, CFG.max_len, 0), tx)
  abstract, shardings = layout.state_shardings(make_state)
  return model, tx, layout, abstract, shardings, make_state


def _param_specs(shardings) -> dict:
  flat = jax.tree_util.tree_flatten_with_path(shardings.params)[0]
  return {jax.tree_util.keystr(path): [list(a) if isinstance(a, tuple) else a
                                       for a in s.spec] for path, s in flat}


@pytest.mark.parametrize("preset", sorted(MESHES))
def test_param_partition_specs_match_golden(preset):
  *_, shardings, _ = _layout_and_state(MESHES[preset])
  got = _param_specs(shardings)
  path = GOLDEN / f"gpt_{preset}.json"
  if os.environ.get("LM_UPDATE_GOLDEN"):
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
  assert got == json.loads(path.read_text())


def test_optimizer_state_follows_param_layout():
  *_, shardings, _ = _layout_and_state(MESHES["fsdp_tp"])
  kernel = shardings.params["block_0"]["mlp"]["wi"]["kernel"].spec
  assert kernel == PartitionSpec("fsdp", "tensor")
  mu = [s.spec for path, s in jax.tree_util.tree_flatten_with_path(shardings.opt_state)[0]
        if "mu" in jax.tree_util.keystr(path) and "block_0" in jax.tree_util.keystr(path)
        and "'wi'" in jax.tree_util.keystr(path) and "kernel" in jax.tree_util.keystr(path)]
  assert mu == [kernel]


# --- sharded training equals one device --------------------------------------------------

def _batches(steps=3, batch=8, seed=0):
  """One random batch seen `steps` times, so the loss must fall."""
  rng = np.random.default_rng(seed)
  x = rng.integers(0, CFG.vocab_size, (1, batch, CFG.max_len + 1)).astype(np.int32)
  x = np.repeat(x, steps, axis=0)
  return {"inputs": x[:, :, :-1], "targets": x[:, :, 1:]}


def _train_losses(cfg: ShardingConfig, devices=None):
  model, tx, layout, _, shardings, make_state = _layout_and_state(cfg, devices)
  state = layout.init_state(make_state, shardings)
  step = make_multi_step(causal_lm_loss(model), tx, shardings)
  with layout.context():
    state, metrics = step(state, layout.put_batch(_batches(), leading_dims=1),
                          jax.random.key(0))
  return np.asarray(metrics["loss"]), state


@pytest.fixture(scope="module")
def one_device_losses():
  return _train_losses(ShardingConfig(data=1), jax.devices()[:1])[0]


@pytest.mark.parametrize("preset", sorted(MESHES))
def test_sharded_training_matches_one_device(preset, one_device_losses):
  losses, state = _train_losses(MESHES[preset])
  np.testing.assert_allclose(losses, one_device_losses, rtol=1e-5)
  assert losses[-1] < losses[0]  # it trained
  wi = state.params["block_0"]["mlp"]["wi"]["kernel"]
  assert len(wi.sharding.device_set) == 8
  if preset != "dp":  # parameters really are split, not replicated
    assert wi.addressable_shards[0].data.size < wi.size


def test_checkpoint_restores_onto_another_mesh(tmp_path):
  _, saved = _train_losses(MESHES["fsdp_tp"])
  ckpt = Checkpointer(str(tmp_path), keep=1)
  ckpt.save(3, saved, {"next_index": 3})
  ckpt.close()
  *_, abstract, _, _ = _layout_and_state(ShardingConfig(data=1), jax.devices()[:1])
  restored, data = Checkpointer(str(tmp_path), keep=1, create=False).restore(abstract)
  assert data == {"next_index": 3}
  for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  leaf = restored.params["block_0"]["mlp"]["wi"]["kernel"]
  assert len(leaf.sharding.device_set) == 1


def test_batch_not_divisible_by_data_parallel_devices_is_an_error():
  layout = Layout.from_config(ShardingConfig())  # data=-1: all 8 devices
  with pytest.raises(sharding.ShardingError, match="data.batch_size=12 is not divisible by the 8"):
    layout.check_batch(12, "data.batch_size")


def test_activation_constraints_follow_rules():
  """Under fsdp_tp the MLP hidden activation is split over `tensor` inside the jitted step."""
  model = GPT(CFG)
  layout = Layout.from_config(MESHES["fsdp_tp"])
  params = nn.meta.unbox(init_params(model, CFG.max_len, 0))
  tokens = jnp.zeros((8, CFG.max_len), jnp.int32)
  with layout.context():
    hlo = jax.jit(lambda p, t: model.apply({"params": p}, t)[0]).lower(params, tokens).as_text()
  assert "sharding" in hlo and "tensor" in hlo or "devices=[" in hlo

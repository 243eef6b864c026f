"""The DeepSeek table's rows (experiments/deepseek_table.py): each is a valid config that
varies what its name says, MoE rows match the dense row's active params, and the table
renders every row it is given."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

from experiments import deepseek_table as dt
from lm.models.registry import build_model
from lm.tasks.causal_lm import init_params


def _total_params(config) -> int:
  # The task fills in the vocabulary size from the corpus; tiny Shakespeare has 65 chars.
  model = build_model(config.family, dataclasses.replace(config.model, vocab_size=65))
  shapes = jax.eval_shape(lambda: init_params(model, config.data.seq_len, 0))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.meta.unbox(shapes)))


@pytest.mark.parametrize("name", sorted(dt.ROWS))
def test_every_row_is_a_valid_config(name):
  c = dt.row_config(name, steps=7, bias_rate=0.001, seed=3)
  assert c.train.num_steps == 7 and c.train.seed == 3 and c.data.seed == 3
  m, t = c.model, c.task_config
  if name.startswith("moe"):
    assert m.mlp == "moe" and c.task == "moe_lm"
    # The routed experts a token uses add up to the dense SwiGLU width.
    assert m.moe_top_k * m.moe_expert_dim == 344
  if "aux_free" in name:
    assert t.bias_update_rate == (0.01 if name.endswith("g01") else 0.001)
    assert t.aux_weight == 0
  if name in ("moe_aux", "moe_aux_e16", "moe_aux_a01"):
    assert t.bias_update_rate == 0 and t.aux_weight == (0.1 if name == "moe_aux_a01" else 0.01)
  if name.endswith("e16"):
    assert (m.moe_num_experts, m.moe_top_k, m.moe_expert_dim) == (16, 4, 86)
  assert t.bias_update_until == (0.966 if name == "moe_aux_free_freeze" else 1.0)


@pytest.mark.parametrize("name", ["moe_aux_free", "moe_aux_free_e16"])
def test_moe_rows_have_the_dense_rows_active_params(name):
  """Active = total - unused experts; it exceeds the dense row only by the router:
  E x D weights and E balance biases per layer (closed form)."""
  dense, moe = dt.row_config("dense", 7, 0.001), dt.row_config(name, 7, 0.001)
  m = moe.model
  router = m.num_layers * (m.moe_num_experts * m.embed_dim + m.moe_num_experts)
  assert dt.active_params(moe, _total_params(moe)) == _total_params(dense) + router
  assert dt.active_params(dense, _total_params(dense)) == _total_params(dense)


def test_table_renders_every_balancing_row():
  row = dict(val_loss=1.5, max_violation=0.2, max_violation_worst=0.3, aux_loss=1.0,
             dropped=0.0, val_mtp_loss_1=None, tokens_per_sec=1000.0, active_params=10,
             total_params=20, kv_bytes_per_token=4096, decode_tokens_per_sec=100.0)
  names = ["moe_aux_free", "moe_aux", "moe_aux_a01", "moe_none", "moe_aux_free_e16",
           "moe_aux_e16", "moe_aux_free_freeze"]
  text = dt.table({n: dict(row, val_loss=1.0 + i / 10) for i, n in enumerate(names)},
                  steps=7, bias=0.001)
  for i in range(len(names)):
    assert f"| {1.0 + i / 10:.3f} |" in text
  assert "Switch aux loss, alpha=0.1" in text and "16 experts top-4" in text
  assert "frozen after 96.6% of steps" in text

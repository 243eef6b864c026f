"""Every family's FLOP formula (lm/scaling/flops.py) against the matmuls its forward pass
really does: each dot_general of the traced program, 2 x output size x contracted size,
times the trip count of any scan around it (an independent count, exact for B = 1)."""

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_helpers import traced_matmul_flops

from lm.models.bert import Bert, BertConfig
from lm.models.encdec import EncDecConfig, EncoderDecoder
from lm.models.gpt import GPT, GPTConfig
from lm.models.rnn import RecurrentConfig, RecurrentLM
from lm.models.ssm import SSMLM, SSMConfig
from lm.objectives_mtp import init_mtp_params, mtp_forward
from lm.scaling import flops
from lm.train import mfu


def _traced_flops(model, *inputs, method=None) -> int:
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs))
  return traced_matmul_flops(jax.make_jaxpr(lambda p: model.apply(p, *inputs, method=method))(params).jaxpr)


def _tokens(length, vocab=37):
  return (jnp.arange(length)[None] % (vocab - 1) + 1).astype(jnp.int32)  # no padding ids


GPT_BASE = dict(vocab_size=37, num_layers=3, num_heads=4, embed_dim=32, mlp_dim=48, max_len=16)


@pytest.mark.parametrize("kw", [
    # One token pair routed to 2 of 8 experts: N K <= E, so the MoE runs one row per
    # assignment (no padding rows) and the traced matmuls are exactly the active ones.
    dict(mlp="moe", moe_num_experts=8, moe_top_k=2, moe_num_shared=1, moe_expert_dim=24,
         moe_every=2, moe_activation="swiglu"),
    dict(mlp="moe", moe_num_experts=8, moe_top_k=1, moe_first_dense=1, moe_activation="gelu",
         attention="mla", mla_kv_rank=8, mla_q_rank=12, mla_rope_dim=4, mla_head_dim=6,
         position="none"),
])
def test_gpt_moe_and_mla_count_active_matmuls(kw):
  cfg = GPTConfig(**GPT_BASE, **kw)
  T = 2
  assert flops.gpt_forward_flops(cfg, T) == _traced_flops(GPT(cfg), _tokens(T))


def test_mtp_depths_add_projection_block_and_head():
  cfg = GPTConfig(**GPT_BASE, mlp="moe", moe_num_experts=8, moe_top_k=2, norm="rmsnorm")
  model, T, depth = GPT(cfg), 2, 2
  tokens = _tokens(T)
  params = jax.eval_shape(lambda: nn.meta.unbox(
      {**model.init(jax.random.key(0), tokens)["params"],
       **init_mtp_params(model, T, depth, seed=0)}))
  jaxpr = jax.make_jaxpr(lambda p: mtp_forward(model, p, tokens, depth))(params).jaxpr
  assert flops.gpt_forward_flops(cfg, T) + flops.mtp_forward_flops(cfg, T, depth) == \
      traced_matmul_flops(jaxpr)
  per_token = mfu.model_flops_per_token("gpt", cfg, T, 0, mtp_depth=depth)
  assert per_token == 3 * traced_matmul_flops(jaxpr) / T


def test_bert_counts_encoder_mlm_slots_and_nsp_once():
  cfg = BertConfig(vocab_size=41, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=40,
                   max_len=16)
  T, P = 9, 3
  model = Bert(cfg)
  assert flops.bert_forward_flops(cfg, T) == _traced_flops(model, _tokens(T))  # all positions
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), _tokens(T)))
  positions_BP = jnp.array([[1, 4, 7]], jnp.int32)
  jaxpr = jax.make_jaxpr(lambda p: model.apply(p, _tokens(T), mlm_positions_BP=positions_BP))(
      params).jaxpr
  assert flops.bert_forward_flops(cfg, T, mlm_positions=P) == traced_matmul_flops(jaxpr)
  config = types.SimpleNamespace(family="bert", model=cfg, task_config=None,
                                 data=types.SimpleNamespace(seq_len=T))
  task = types.SimpleNamespace(eval_batches=[{"tokens": np.zeros((2, T)),
                                              "mlm_positions": np.zeros((2, P))}])
  assert mfu.run_flops_per_token(config, task, 0) == 3 * traced_matmul_flops(jaxpr) / T


@pytest.mark.parametrize("kw", [dict(), dict(num_kv_heads=2, mlp="swiglu", position="rope")])
def test_encdec_counts_encoder_decoder_and_cross_attention(kw):
  cfg = EncDecConfig(vocab_size=41, num_encoder_layers=2, num_decoder_layers=3, num_heads=4,
                     embed_dim=32, mlp_dim=40, max_len=16, max_target_len=16, **kw)
  S, T = 11, 5
  assert flops.encdec_forward_flops(cfg, S, T) == \
      _traced_flops(EncoderDecoder(cfg), _tokens(S), _tokens(T))
  per_token = flops.train_flops_per_token("encdec", cfg, S, target_len=T)
  assert per_token == 3 * flops.encdec_forward_flops(cfg, S, T) / (S + T)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_recurrent_counts_every_gate_per_step(cell):
  cfg = RecurrentConfig(vocab_size=23, cell=cell, num_layers=2, embed_dim=12, hidden_dim=16)
  T = 7
  assert flops.recurrent_forward_flops(cfg, T) == _traced_flops(RecurrentLM(cfg), _tokens(T, 23))


@pytest.mark.parametrize("kw", [dict(), dict(recurrence_dim=24, mlp="swiglu",
                                             tie_embeddings=False)])
def test_ssm_counts_projections_gates_and_mlp(kw):
  cfg = SSMConfig(vocab_size=23, num_layers=2, embed_dim=16, mlp_dim=32, max_len=16, **kw)
  T = 8
  assert flops.ssm_forward_flops(cfg, T) == _traced_flops(SSMLM(cfg), _tokens(T, 23))


def test_run_flops_per_token_follows_the_tasks_token_unit():
  enc = EncDecConfig(vocab_size=41, num_heads=4, embed_dim=32, mlp_dim=40)
  batch = {"inputs": np.zeros((4, 11), np.int32), "targets": np.zeros((4, 5), np.int32)}
  config = types.SimpleNamespace(family="encdec", model=enc, task_config=None,
                                 data=types.SimpleNamespace(seq_len=64))
  task = types.SimpleNamespace(eval_batches=[batch])
  assert mfu.run_flops_per_token(config, task, 0) == \
      3 * flops.encdec_forward_flops(enc, 11, 5) / 16
  gpt = GPTConfig(**GPT_BASE)
  config = types.SimpleNamespace(family="gpt", model=gpt, data=types.SimpleNamespace(seq_len=16),
                                 task_config=types.SimpleNamespace(depth=1))
  assert mfu.run_flops_per_token(config, task, 0) == \
      3 * (flops.gpt_forward_flops(gpt, 16) + flops.mtp_forward_flops(gpt, 16, 1)) / 16
  vit = types.SimpleNamespace(family="vit", model=None, task_config=None,
                              data=types.SimpleNamespace(seq_len=1))
  assert mfu.run_flops_per_token(vit, task, 1000) == 6000.0  # no formula: 6 x params

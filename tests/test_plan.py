"""Sharding plans on abstract meshes: per-device bytes against closed forms and against what
the trainer really allocates on 8 fake CPU devices; activation estimate vs Korthikanti."""

import dataclasses
import functools
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import zoo
from experiments import plan as plan_cli
from lm import config as config_lib
from lm import sharding
from lm.errors import UserError
from lm.train.layout import Layout
from lm.train.optimizer import make_optimizer
from lm.train.state import create_train_state
from lm.zoo import abstract
from lm.zoo import plan as plan_lib


@functools.cache
def _config(name, smoke=False):
  return config_lib.from_dict(zoo.get_config(f"name={name}{',smoke' if smoke else ''}").to_dict())


def _plan(name, mesh, preset):
  """A plan on a zoo model whose abstract tree is traced once per test module."""
  return plan_lib.make_plan(name, _config(name), plan_lib.parse_mesh(mesh), preset,
                            boxed=_boxed(name))


@functools.cache
def _boxed(name):
  return abstract.abstract_params(_config(name))


def test_fsdp_shards_every_llama_parameter_over_all_devices():
  """Every Llama leaf (incl. the untied head) has an `embed` axis: fsdp=256 holds 1/256."""
  p = _plan("llama2_7b", "fsdp:256", "fsdp")
  assert p.param_bytes == 4 * 6_738_415_616 // 256
  # AdamW's two f32 moments, plus a few int32 step counters.
  assert 0 <= p.optimizer_bytes - 2 * p.param_bytes < 64
  assert p.state_bytes == 2 * p.param_bytes + p.optimizer_bytes


def test_dp_replicates_and_the_fit_check_says_so():
  p = _plan("llama2_70b", "data:256", "dp")
  assert p.param_bytes == 4 * 68_976_648_192
  with pytest.raises(UserError, match="llama2_70b does not fit: .* GiB per device") as e:
    plan_lib.check_fits(p, 95)
  assert "\n" not in str(e.value)
  plan_lib.check_fits(_plan("llama2_70b", "fsdp:256", "fsdp"), 95)  # 16 B/param / 256 fits


def test_tensor_parallel_split_of_gpt3_175b_matches_hand_count():
  """fsdp_tp on fsdp:32, tensor:8: matrices with embed and heads/mlp axes hold 1/256,
  biases over heads/mlp 1/8, over embed 1/32; position table 1/32, token table 1/32."""
  config = _config("gpt3_175b")
  m = config.model
  d, L, F, V, T = m.embed_dim, m.num_layers, m.mlp_dim, m.vocab_size, m.max_len
  per_block = ((4 * d * d + 2 * d * F) / 256  # q, k, v, out; wi, wo
               + (3 * d + F) / 8  # q, k, v biases (heads, head_dim); wi bias (mlp)
               + (d + d + 4 * d) / 32)  # out bias, wo bias; 2 LayerNorms' scale and bias
  expected = 4 * (L * per_block + (V * d + T * d + 2 * d) / 32)
  p = _plan("gpt3_175b", "fsdp:32,tensor:8", "fsdp_tp")
  assert p.param_bytes == expected


def test_layout_errors_are_sharding_errors():
  # BERT-large's d_model 1024 cannot be split 2048 ways.
  with pytest.raises(sharding.ShardingError, match="not divisible"):
    _plan("bert_large", "fsdp:2048", "fsdp")
  with pytest.raises(UserError, match="AXIS:SIZE"):
    plan_lib.parse_mesh("data:16,pipeline:4")
  with pytest.raises(UserError, match="vocab_size is 0"):  # left to the tokenizer
    abstract.abstract_params(_config("gpt2_small", smoke=True))


def test_activation_estimate_is_korthikanti_for_a_gpt_block():
  """Korthikanti et al. 2022, eq. 1: s b h (34 + 5 a s / h) bytes per layer (16-bit,
  with dropout, no parallelism), plus our f32 logits."""
  config = _config("bert_large")  # dense MHA, GELU MLP, dropout 0.1
  m = config.model
  s, h, a, L = config.data.seq_len, m.embed_dim, m.num_heads, m.num_layers
  full, remat = plan_lib.activation_bytes(config)
  logits = s * m.vocab_size * 4
  assert full - logits == L * s * h * (34 + 5 * a * s / h)
  # Full recomputation keeps each layer's 2-byte input plus one layer's activations.
  assert remat - logits == L * 2 * s * h + s * h * (34 + 5 * a * s / h)
  # Tensor parallelism t: s b h (10 + 24 / t + 5 a s / (h t)) (eq. 2).
  t = 8
  full_t, _ = plan_lib.activation_bytes(config, tensor=t)
  assert full_t - logits == pytest.approx(L * s * h * (10 + 24 / t + 5 * a * s / (h * t)))


@pytest.fixture(scope="module")
def devices8():
  assert len(jax.devices()) == 8, "tests/conftest.py sets 8 fake CPU devices"
  return jax.devices()


@pytest.mark.parametrize("name, mesh, preset", [
    ("deepseek_v3", "fsdp:2,tensor:2,data:2", "fsdp_tp"),
    ("deepseek_v3", "fsdp:2,expert:4", "fsdp_ep"),
])
def test_plan_equals_the_trainers_real_allocation(devices8, name, mesh, preset):
  """The abstract-mesh plan vs the train state laid out by the trainer's Layout on a real
  mesh of 8 devices: the bytes device 0 holds."""
  config = _config(name, smoke=True)
  config = dataclasses.replace(config, model=dataclasses.replace(config.model, vocab_size=64,
                                                                 moe_num_experts=8))
  shape = plan_lib.parse_mesh(mesh)
  p = plan_lib.make_plan(name, config, shape, preset)
  layout = Layout(sharding.make_mesh(shape, devices8), sharding.make_rules(preset))
  tx = make_optimizer(config.optim, config.train.num_steps)
  init = abstract._init_fn(config)
  abstract_state, shardings = layout.state_shardings(lambda: create_train_state(init(), tx))
  # Real buffers on the real mesh (zeros: what init_state would place, without compiling).
  state = jax.tree.map(lambda a, s: jax.device_put(np.zeros(a.shape, a.dtype), s),
                       abstract_state, shardings)

  def device0_bytes(tree):
    return sum(int(np.prod(s.data.shape)) * s.data.dtype.itemsize
               for leaf in jax.tree.leaves(tree) for s in leaf.addressable_shards
               if s.device == devices8[0])
  assert p.param_bytes == device0_bytes(state.params)
  assert p.optimizer_bytes == device0_bytes(state.opt_state)


@pytest.mark.slow
def test_cli_prints_the_plan_and_fails_clearly():
  cmd = [sys.executable, "-m", "experiments.plan", "--config=configs/zoo.py:name=gpt3_175b",
         "--mesh=fsdp:32,tensor:8", "--rules=fsdp_tp"]
  out = subprocess.run(cmd + ["--show_params"], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  assert "174,604" in out.stdout and "block_*/mlp/wi/kernel" in out.stdout
  bad = subprocess.run(cmd[:4] + ["--mesh=data:8", "--rules=dp", "--hbm_gib=80"],
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and bad.stderr.startswith("error: configs/zoo.py")
  assert "does not fit" in bad.stderr


def test_describe_names_every_quantity():
  p = _plan("llama2_7b", "fsdp:8", "fsdp")
  text = plan_cli.describe(p)
  assert "6,738,415,616" in text and "KV cache / token (bf16) | 524,288 B" in text
  table = plan_cli.describe_params(p)
  assert "| `lm_head/kernel` | (4096, 32000) | embed, vocab | ('fsdp', None) | (512, 32000) |" \
      in table


def test_docs_table_is_written_between_markers(tmp_path):
  doc = tmp_path / "doc.md"
  doc.write_text(f"intro\n{plan_cli.BEGIN}\nold\n{plan_cli.END}\noutro\n")
  text = plan_cli.table(["bert_large"], [256])
  plan_cli.write_docs(str(doc), text)
  written = doc.read_text()
  assert written.startswith("intro\n") and written.endswith("outro\n") and "old" not in written
  rows = [r for r in text.splitlines() if r.startswith("| bert_large")]
  assert [r.split(" | ")[2] for r in rows] == sorted(sharding.PRESETS)

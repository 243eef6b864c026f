"""Adaptation methods (lm/layers/peft.py, lm/adapt/): each checked against the base model
it starts from or against a closed form, and end to end through the runner."""

import dataclasses
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.adapt import merge, pretrained, trainable
from lm.adapt.methods import METHODS
from lm.models.bert import Bert, BertConfig
from lm.models.gpt import GPT, GPTConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = GPTConfig(vocab_size=50, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64, max_len=24)
TOKENS = jax.random.randint(jax.random.key(1), (2, 12), 0, 50)


def _init(config, seed=0, length=12):
  model = GPT(config)
  return model, nn.meta.unbox(model.init(jax.random.key(seed),
                                         jnp.zeros((1, length), jnp.int32))["params"])


def _with_base(params, base):
  """`params` with every parameter the base model has replaced by the base's value."""
  flat = pretrained.flatten(base)
  return jax.tree_util.tree_map_with_path(
      lambda p, v: flat.get(trainable.path_str(p), v), params)


@pytest.fixture(scope="module")
def base():
  return _init(BASE)


def _logits(model, params, tokens=TOKENS, **kw):
  return model.apply({"params": params}, tokens, **kw)[0]


def test_lora_with_zero_b_is_the_base_model(base):
  base_model, base_params = base
  model, params = _init(dataclasses.replace(BASE, lora_rank=4, lora_targets="query,key,value,out"))
  params = _with_base(params, base_params)
  assert any("lora_" in p for p in trainable.param_paths(params))
  np.testing.assert_array_equal(_logits(model, params), _logits(base_model, base_params))


def test_merged_lora_equals_unmerged_and_changes_the_model(base):
  base_model, base_params = base
  config = dataclasses.replace(BASE, lora_rank=3, lora_alpha=6.0, lora_targets="query,value,out")
  model, params = _init(config)
  params = _with_base(params, base_params)
  # A trained LoRA: random B instead of zeros.
  params = jax.tree_util.tree_map_with_path(
      lambda p, v: (jax.random.normal(jax.random.key(len(trainable.path_str(p))), v.shape) * 0.1
                    if trainable.path_str(p).endswith("/b") else v), params)
  unmerged = _logits(model, params)
  merged_params, merged_config = merge.merge_lora(params, config)
  assert merged_config.lora_rank == 0
  assert jax.tree.structure(merged_params) == jax.tree.structure(base_params)
  np.testing.assert_allclose(_logits(GPT(merged_config), merged_params), unmerged, atol=2e-5)
  assert np.abs(unmerged - _logits(base_model, base_params)).max() > 1e-3


def test_adapters_start_near_identity(base):
  base_model, base_params = base
  model, params = _init(dataclasses.replace(BASE, adapter_dim=4))
  params = _with_base(params, base_params)
  ours, ref = _logits(model, params), _logits(base_model, base_params)
  assert np.abs(ours - ref).max() < 1e-3 * np.abs(ref).max()


def test_soft_prompt_equals_prepending_those_embeddings(base):
  """A soft prompt set to the embeddings of real tokens must act exactly like those tokens
  prepended to the input: the base model on the longer input is the reference."""
  base_model, base_params = base
  P = 5
  model, params = _init(dataclasses.replace(BASE, prompt_len=P))
  params = _with_base(params, base_params)
  prompt_ids = jnp.array([3, 14, 15, 9, 26])
  params["soft_prompt"] = base_params["token_embed"]["embedding"][prompt_ids]
  ref = _logits(base_model, base_params,
                jnp.concatenate([jnp.broadcast_to(prompt_ids, (2, P)), TOKENS], axis=1))
  np.testing.assert_allclose(_logits(model, params), ref[:, P:], atol=2e-5)


@pytest.mark.parametrize("option", [dict(prompt_len=3), dict(prefix_len=4, prefix_hidden=8)])
def test_prompt_and_prefix_decode_with_the_kv_cache(option):
  """Token-by-token decoding with the cache equals one full forward pass."""
  model, params = _init(dataclasses.replace(BASE, **option))
  full = _logits(model, params)
  caches = model.init_cache(2, 16)
  steps = []
  for t in range(TOKENS.shape[1]):
    logits, caches = model.apply({"params": params}, TOKENS[:, t:t + 1], caches=caches,
                                 cache_index=t)
    steps.append(logits[:, 0])
  np.testing.assert_allclose(np.stack(steps, 1), full, atol=2e-5)


def test_baked_prefix_equals_the_reparameterised_one():
  model, params = _init(dataclasses.replace(BASE, prefix_len=4, prefix_hidden=8))
  baked, config = merge.bake_prefix(model, params)
  assert config.prefix_hidden == 0 and baked["prefix"]["kv"].shape == (2, 2, 4, 4, 8)
  np.testing.assert_allclose(_logits(GPT(config), baked), _logits(model, params), atol=1e-6)


def test_prefix_changes_every_query_and_is_visible_under_padding_in_bert():
  config = BertConfig(vocab_size=40, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32,
                      max_len=16, dropout=0.0, prefix_len=3)
  model = Bert(config)
  tokens = jnp.ones((1, 8), jnp.int32)
  valid = jnp.arange(8)[None] < 5
  params = model.init(jax.random.key(0), tokens, None, valid)["params"]
  hidden, _ = model.apply({"params": params}, tokens, None, valid, method=Bert.encode)
  assert np.isfinite(np.asarray(hidden)).all()


BERT_BASE = BertConfig(vocab_size=40, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32,
                       max_len=16, dropout=0.0)


@pytest.mark.parametrize("option", [dict(lora_rank=2), dict(adapter_dim=3)])
@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_bert_with_lora_or_adapters_starts_at_the_base_encoder(option, norm_position):
  base_config = dataclasses.replace(BERT_BASE, norm_position=norm_position)
  tokens = jax.random.randint(jax.random.key(2), (2, 10), 0, 40)

  def encode(config, seed=0):
    model = Bert(config)
    params = nn.meta.unbox(model.init(jax.random.key(seed), tokens)["params"])
    return model, params

  base_model, base_params = encode(base_config)
  model, params = encode(dataclasses.replace(base_config, **option), seed=1)
  params = _with_base(params, base_params)
  assert set(pretrained.flatten(params)) > set(pretrained.flatten(base_params))
  ref = base_model.apply({"params": base_params}, tokens, method=Bert.encode)[0]
  ours = model.apply({"params": params}, tokens, method=Bert.encode)[0]
  tolerance = 0 if "lora_rank" in option else 1e-3 * np.abs(np.asarray(ref)).max()
  assert np.abs(np.asarray(ours) - np.asarray(ref)).max() <= tolerance


def test_init_from_fills_the_base_and_draws_the_soft_prompt_from_its_vocabulary(base):
  _, base_params = base
  model = GPT(dataclasses.replace(BASE, prompt_len=6))
  fresh = model.init(jax.random.key(5), jnp.zeros((1, 12), jnp.int32))["params"]
  merged, unused = pretrained.merge(fresh, pretrained.flatten(base_params), ("soft_prompt",))
  merged = nn.meta.unbox(merged)
  assert not unused
  for path, value in pretrained.flatten(base_params).items():
    np.testing.assert_array_equal(pretrained.flatten(merged)[path], value)
  table = np.asarray(base_params["token_embed"]["embedding"])
  for row in np.asarray(merged["soft_prompt"]):
    assert np.any(np.all(table == row, axis=1))  # a row of the pretrained table


def test_merge_rejects_a_frozen_parameter_the_checkpoint_lacks_and_wrong_shapes(base):
  from lm.errors import UserError
  _, base_params = base
  fresh = GPT(dataclasses.replace(BASE, adapter_dim=2)).init(
      jax.random.key(0), jnp.zeros((1, 12), jnp.int32))["params"]
  with pytest.raises(UserError, match="not in the init_from checkpoint and not trainable"):
    pretrained.merge(fresh, pretrained.flatten(base_params), ("lora_",))
  wider = GPT(dataclasses.replace(BASE, mlp_dim=128)).init(
      jax.random.key(0), jnp.zeros((1, 12), jnp.int32))["params"]
  with pytest.raises(UserError, match="the model configs differ"):
    pretrained.merge(wider, pretrained.flatten(base_params), ())


# --- trainable fractions against closed forms ----------------------------------------------

def _default_gpt():
  from configs.shakespeare_char import get_config
  return GPTConfig(**{**get_config().to_dict()["model"], "vocab_size": 65})


def _abstract_params(config, head_classes=8):
  from lm.tasks.classify import Classifier
  model = Classifier(GPT(config), "gpt", "last", head_classes)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32),
                                             jnp.ones((1, 8), bool)))["params"]
  return nn.meta.unbox(shapes)


def test_trainable_counts_match_closed_forms_and_stay_under_one_percent():
  base_config = _default_gpt()
  L, D, F, C = base_config.num_layers, base_config.embed_dim, base_config.mlp_dim, 8
  head = D * C + C
  closed_form = {
      "lora": L * 2 * (D * 2 + 2 * D) + head,  # q and v, rank 2: A (D x r) and B (r x D)
      "prefix": 4 * 4 + 4 * (L * 2 * D) + L * 2 * D + head,  # table P x h, MLP h -> L 2 D
      "prompt": 8 * D + head,
      "adapters": L * 2 * (D * 2 + 2 + 2 * D + D) + head,  # down, up with biases, per sublayer
      # q, k, v, out biases; MLP in/out biases; two LayerNorm biases; final LayerNorm
      "bitfit": L * (3 * D + D + F + D + 2 * D) + D + head,
      "head": head,
  }
  for name, expected in closed_form.items():
    m = METHODS[name]
    patterns = ("^head/",) if name == "head" else m.trainable + ("^head/",)
    params = _abstract_params(dataclasses.replace(base_config, **m.model))
    counts = trainable.count(params, patterns)
    assert counts["trainable_params"] == expected, name
    # The fraction of the model the method starts from (the base plus its new parameters).
    assert counts["trainable_fraction"] < 0.01, (name, counts["trainable_fraction"])


def test_frozen_parameters_get_no_optimizer_state_and_no_update():
  from lm.config import OptimConfig
  from lm.train.optimizer import make_optimizer
  model, params = _init(dataclasses.replace(BASE, lora_rank=2))
  tx = make_optimizer(OptimConfig(lr=1e-2, warmup_steps=0), 10, trainable=("lora_",))
  state = tx.init(params)
  state_sizes = sum(x.size for x in jax.tree.leaves(state))
  lora_size = sum(x.size for p, x in pretrained.flatten(params).items() if "lora_" in p)
  assert state_sizes <= 2 * lora_size + 4  # Adam's two moments of LoRA only, and counters
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, state, params)
  for path, u in pretrained.flatten(updates).items():
    assert (np.abs(np.asarray(u)).max() > 0) == ("lora_" in path), path


# --- end to end through the runner -----------------------------------------------------------

def _run(*args, cwd=REPO):
  out = subprocess.run([sys.executable, "-m", "experiments.run", *args], cwd=cwd,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return out


@pytest.fixture(scope="module")
def gpt_base(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("adapt") / "base")
  _run("--config=configs/shakespeare_char.py:smoke", f"--workdir={workdir}",
       "--config.train.num_steps=10", "--config.train.eval_every=10",
       "--config.train.checkpoint_every=10")
  return workdir


def test_lora_run_keeps_the_base_bit_identical_and_saves_the_adapter_apart(gpt_base, tmp_path):
  workdir = str(tmp_path / "lora")
  _run(f"--config=configs/adapt_speakers.py:smoke,method=lora,init_from={gpt_base}",
       f"--workdir={workdir}")
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert 0 < summary["trainable_fraction"] < 0.05 and "val_accuracy" in summary
  _, base_params, _ = pretrained.load_params(gpt_base)
  _, tuned, _ = pretrained.load_params(workdir)
  base_flat = pretrained.flatten(base_params)
  tuned_flat = pretrained.flatten(tuned)
  changed = []
  for path, value in tuned_flat.items():
    inner = path.removeprefix("backbone/")
    if inner in base_flat:
      np.testing.assert_array_equal(value, base_flat[inner], err_msg=path)  # frozen: bitwise
    else:
      changed.append(path)
  assert changed and all("lora_" in p or p.startswith("head/") for p in changed)
  # The adapter file alone plus the base checkpoint rebuilds the tuned model exactly.
  rebuilt = pretrained.load_adapted(workdir, at=("backbone",))
  for path, value in tuned_flat.items():
    np.testing.assert_array_equal(rebuilt[path], value)
  # The adapter names the base step the run started from, recorded once: a later start
  # (a resume after the base trained on) does not rewrite it.
  info = json.load(open(os.path.join(workdir, pretrained.ADAPTER_INFO)))
  assert info["base_step"] == 10 and info["base_workdir"] == os.path.abspath(gpt_base)
  pretrained._record_base(workdir, pretrained.Base(os.path.abspath(gpt_base), 20, {}))
  assert pretrained.recorded_base(workdir)["base_step"] == 10


def test_a_pattern_that_matches_nothing_is_a_one_line_error(gpt_base, tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "experiments.run",
       f"--config=configs/adapt_speakers.py:smoke,method=head,init_from={gpt_base}",
       f"--workdir={tmp_path / 'bad'}", "--config.trainable=('^head/', 'nothing_like_this')"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 2
  assert "matches no parameter" in out.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_every_method_runs_on_the_encoder_family_and_the_table_is_written(tmp_path):
  bert = str(tmp_path / "bert")
  _run("--config=configs/bert_shakespeare.py:smoke", f"--workdir={bert}",
       "--config.train.num_steps=10", "--config.train.eval_every=10",
       "--config.train.checkpoint_every=10")
  table = str(tmp_path / "table")
  _run("--config=configs/adaptation_table.py:smoke", f"--workdir={table}",
       f"--config.init_from={bert}")
  rows = json.load(open(os.path.join(table, "table.json")))["rows"]
  methods = {r["method"] for r in rows}
  assert {"full", "lora", "prefix", "adapters", "bitfit", "head", "linear probe (cls)",
          "linear probe (mean)"} <= methods
  assert "prompt" not in methods  # soft prompts are decoder-only

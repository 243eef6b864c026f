"""SFT: packing layout, prompt masking, packed == unpacked loss, addition data, CLI smoke."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.data import addition
from lm.models.gpt import GPT, GPTConfig
from lm.tasks import sft

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pack_layout_by_hand():
  # Two examples of 4 and 5 tokens (prompt lengths 2 and 3) and one of 6, rows of 8 inputs.
  examples = [(np.array([1, 2, 3, 4]), 2), (np.array([5, 6, 7, 8, 9]), 3),
              (np.array([10, 11, 12, 13, 14, 15]), 1)]
  batch, used = sft.pack(examples, seq_len=8, num_rows=2)
  assert used == 3
  np.testing.assert_array_equal(batch["inputs"], [[1, 2, 3, 5, 6, 7, 8, 0],
                                                  [10, 11, 12, 13, 14, 0, 0, 0]])
  np.testing.assert_array_equal(batch["targets"], [[2, 3, 4, 6, 7, 8, 9, 0],
                                                   [11, 12, 13, 14, 15, 0, 0, 0]])
  # Weight 1 where the target is a response token: example 1 predicts 3, 4; example 2
  # predicts 8, 9; example 3 (prompt of 1 token) every target.
  np.testing.assert_array_equal(batch["weights"], [[0, 1, 1, 0, 0, 1, 1, 0],
                                                   [1, 1, 1, 1, 1, 0, 0, 0]])
  np.testing.assert_array_equal(batch["segment_ids"], [[1, 1, 1, 2, 2, 2, 2, 0],
                                                       [1, 1, 1, 1, 1, 0, 0, 0]])
  # A full batch stops at the first example that does not fit.
  _, used = sft.pack(examples, seq_len=8, num_rows=1)
  assert used == 2


def test_addition_template_and_rule_checks():
  tok = addition.make_tokenizer()
  ids, prompt_len = sft.encode_example(tok, addition.prompt_text(556, 497),
                                       addition.response_text(556, 497))
  assert tok.decode(ids) == "Q: What is 556 plus 497? A: <answer>1053</answer>\n"
  assert tok.decode(ids[:prompt_len]) == "Q: What is 556 plus 497? A: "
  assert addition.answer_correct("<answer>1053</answer>", 556, 497)
  assert addition.answer_correct("x <answer>1053</answer>y", 556, 497)
  assert not addition.answer_correct("<answer>1052</answer>", 556, 497)
  assert not addition.answer_correct("1053", 556, 497)
  assert addition.format_ok("<answer>1053</answer>", ended=True)
  assert not addition.format_ok("<answer>1053</answer>", ended=False)
  assert not addition.format_ok("<answer>1053</answer>5", ended=True)
  text, ended = addition.completion_text(tok, tok.encode("<answer>7</answer>\n<answer>"))
  assert (text, ended) == ("<answer>7</answer>", True)


def test_held_out_pairs_never_in_training():
  rng = np.random.default_rng(0)
  train = addition.sample_pairs(rng, 20000, 3, held_out=False)
  held = addition.held_out_pairs(300, 3)
  assert not addition.is_held_out(train[:, 0], train[:, 1]).any()
  assert addition.is_held_out(held[:, 0], held[:, 1]).all()
  assert len({tuple(p) for p in held}) == 300
  assert train.min() >= 100 and train.max() <= 999
  assert not {tuple(p) for p in train} & {tuple(p) for p in held}


@pytest.fixture(scope="module")
def tiny_model():
  tok = addition.make_tokenizer()
  model = GPT(GPTConfig(vocab_size=tok.vocab_size, num_layers=2, num_heads=2, embed_dim=32,
                        mlp_dim=64, max_len=64))
  params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  return tok, model, jax.tree.map(jnp.asarray, __import__("flax").linen.meta.unbox(params))


def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_packed_loss_equals_each_example_alone(tiny_model):
  tok, model, params = tiny_model
  pairs = [(556, 497), (100, 999), (731, 268)]
  examples = sft.addition_examples(tok, pairs)
  batch, used = sft.pack(examples, seq_len=160, num_rows=2)  # 3 in row 1, row 2 padding
  assert used == 3 and batch["segment_ids"][1].max() == 0
  loss_fn = jax.jit(sft.sft_loss(model), static_argnames="deterministic")  # eager is slow
  loss, metrics = loss_fn(params, jax.tree.map(jnp.asarray, batch), None, deterministic=True)
  # Reference: each example on its own (no packing, default positions), response tokens only.
  nll = []
  forward = jax.jit(lambda p, x: model.apply({"params": p}, x)[0])
  for ids, prompt_len in examples:
    logits = forward(params, jnp.asarray(ids[None, :-1]))
    logp = _np_log_softmax(np.asarray(logits[0], np.float64))
    nll += [-logp[t, ids[t + 1]] for t in range(prompt_len - 1, len(ids) - 1)]
  np.testing.assert_allclose(float(loss), np.mean(nll), rtol=2e-5)
  # Responses "<answer>1053</answer>", "<answer>1099</answer>", "<answer>999</answer>" + EOS.
  assert float(metrics["num_tokens"]) == len(nll) == 22 + 22 + 21
  assert float(metrics["num_sequences"]) == 3


def test_sft_loss_ignores_prompt_targets(tiny_model):
  tok, model, params = tiny_model
  batch, _ = sft.pack(sft.addition_examples(tok, [(556, 497)]), seq_len=64, num_rows=1)
  batch = jax.tree.map(jnp.asarray, batch)
  loss_fn = jax.jit(sft.sft_loss(model), static_argnames="deterministic")
  corrupted = dict(batch, targets=jnp.where(batch["weights"] > 0, batch["targets"], 3))
  a, _ = loss_fn(params, batch, None, deterministic=True)
  b, _ = loss_fn(params, corrupted, None, deterministic=True)
  assert float(a) == float(b)


def test_sft_cli_smoke(tmp_path):
  workdir = tmp_path / "sft"
  proc = subprocess.run([sys.executable, "-m", "experiments.run",
                         "--config=configs/sft_addition.py:smoke", f"--workdir={workdir}"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(workdir / "summary.json") as f:
    summary = json.load(f)
  assert summary["steps"] == 20 and np.isfinite(summary["val_loss"])
  assert summary["generation_examples"] == 16
  for key in ("greedy_accuracy", "greedy_format", "val_answer_accuracy"):
    assert 0.0 <= summary[key] <= 1.0
  assert "Q: What is" in summary["sample"]

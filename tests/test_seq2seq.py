"""Supervised seq2seq task: the Pig Latin rule by hand, the loss and metrics against NumPy,
generation metrics on hand-made rows, a tiny copy model trained end to end, the
special-token tokenizer, the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from test_encdec import random_params

from lm.data.seq2seq_pairs import (
  EOS_ID,
  SpecialTokenizer,
  load_special_tokenizer,
  prepare_text,
)
from lm.data.tokenizers import CharTokenizer
from lm.decoding import greedy_decode
from lm.errors import UserError
from lm.models.encdec import EncDecConfig, EncoderDecoder, init_params
from lm.tasks.seq2seq import (
  generation_metrics,
  lines_of,
  pig_latin,
  reverse_words,
  seq2seq_loss,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("line,want", [
    ("Romeo, thou art", "omeoRay, outhay artway"),
    ("the string; rhythm apple Queen", "ethay ingstray; rhythmay appleway ueenQay"),
    ("'Tis I!", "'isTay Iway!"),
    ("First Citizen:", "irstFay itizenCay:"),
    ("", ""),
    ("-- 42 --", "-- 42 --"),
])
def test_pig_latin_by_hand(line, want):
  assert pig_latin(line) == want


def test_reverse_words():
  assert reverse_words("To be,  or not") == "not or be, To"


def test_held_out_lines_are_stripped_and_non_empty():
  assert lines_of("  a b \n\n c\n") == ["a b", "c"]


def test_loss_and_metrics_match_numpy():
  model = EncoderDecoder(EncDecConfig(vocab_size=12, num_encoder_layers=1, num_decoder_layers=1,
                                      num_heads=2, embed_dim=8, mlp_dim=16, max_len=5,
                                      max_target_len=4))
  params = random_params(model, seed=0, scale=0.5)
  inputs = np.array([[4, 5, 6, EOS_ID, 0], [7, 8, EOS_ID, 0, 0], [0, 0, 0, 0, 0]], np.int32)
  targets = np.array([[9, 10, EOS_ID, 0], [11, EOS_ID, 0, 0], [0, 0, 0, 0]], np.int32)
  loss, metrics = jax.jit(seq2seq_loss(model))(params, {"inputs": inputs, "targets": targets},
                                               jax.random.key(0), deterministic=True)
  dec_in = np.concatenate([np.zeros((3, 1), np.int32), targets[:, :-1]], axis=1)
  logits = np.asarray(model.apply({"params": params}, inputs, dec_in), np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  rows = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]  # the real target tokens
  nll = [-logp[b, t, targets[b, t]] for b, t in rows]
  correct = [logits[b, t].argmax() == targets[b, t] for b, t in rows]
  np.testing.assert_allclose(loss, np.mean(nll), rtol=1e-5)
  assert metrics["num_tokens"] == 5 and metrics["num_sequences"] == 2  # the pad row: none
  np.testing.assert_allclose(metrics["accuracy"], np.mean(correct), rtol=1e-6)
  exact = [all(correct[:3]), all(correct[3:])]
  np.testing.assert_allclose(metrics["sequence_accuracy"], np.mean(exact), rtol=1e-6)


def test_generation_metrics_by_hand():
  targets = np.array([[5, 6, EOS_ID, 0], [7, EOS_ID, 0, 0], [8, 9, 9, EOS_ID]])
  preds = np.array([[5, 6, EOS_ID, 0],   # exact
                    [7, 7, EOS_ID, 0],   # 1 of 2 (7 right, EOS missing at position 1)
                    [8, 9, 9, 9]])       # 3 of 4, no EOS: not exact
  m = generation_metrics(preds, targets, "greedy")
  assert m["greedy_exact_match"] == pytest.approx(1 / 3)
  assert m["greedy_token_accuracy"] == pytest.approx((3 + 1 + 3) / 9)


def test_trained_copy_model_decodes_exactly():
  """End to end on target = source (random strings of 3..8 tokens + EOS): a tiny model
  trained with this task's loss must decode held-out strings exactly, so the loss,
  padding, decoder shift, cross-attention masks, cached decoding and the exact-match
  metric fit together. (Learned absolute positions: with T5's relative ones, which give
  cross-attention no position, this model reaches 0.02 here and 0.58 after 500 steps;
  docs/encoder_decoder.md.)"""
  V, L = 12, 8
  model = EncoderDecoder(EncDecConfig(vocab_size=V, num_encoder_layers=1, num_decoder_layers=1,
                                      num_heads=2, embed_dim=32, mlp_dim=64, max_len=L + 1,
                                      max_target_len=L + 1, position="learned"))
  rng = np.random.default_rng(0)

  def strings(n):
    rows = np.zeros((n, L + 1), np.int32)
    for row, length in zip(rows, rng.integers(3, L + 1, n)):
      row[:length] = rng.integers(3, V, length)
      row[length] = EOS_ID
    return rows

  params = nn.meta.unbox(init_params(model, seed=0))
  loss_fn, tx, key = seq2seq_loss(model), optax.adam(3e-3), jax.random.key(0)

  @jax.jit
  def step(params, opt_state, rows):
    grads = jax.grad(lambda p: loss_fn(p, {"inputs": rows, "targets": rows}, key, True)[0])(
        params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = tx.init(params)
  for _ in range(200):
    params, opt_state = step(params, opt_state, strings(32))
  held_out = strings(100)
  preds = greedy_decode(model, params, held_out, max_len=L + 1, eos_id=EOS_ID)
  assert generation_metrics(preds, held_out, "greedy")["greedy_exact_match"] >= 0.9


def test_special_tokenizer_round_trip(tmp_path):
  tok = SpecialTokenizer(CharTokenizer.build("abc \n"), num_sentinels=2)
  assert tok.vocab_size == 5 + 5 and tok.sentinel_id(1) == 4
  ids = np.concatenate([tok.encode("ab"), [tok.sentinel_id(0), 2, EOS_ID], tok.encode("c")])
  assert tok.decode(ids) == "ab<extra_id_0><mask></s>c"
  tok.save(tmp_path / "t.json")
  back = load_special_tokenizer(tmp_path / "t.json")
  assert back.num_sentinels == 2 and back.decode(ids) == tok.decode(ids)
  assert (back.encode("cab\n") == tok.encode("cab\n")).all()
  CharTokenizer.build("x").save(tmp_path / "plain.json")
  with pytest.raises(UserError, match="special"):
    load_special_tokenizer(tmp_path / "plain.json")


def test_workdir_tokenizer_with_other_sentinels_is_an_error(tmp_path):
  class Data:
    path = str(REPO_ROOT / "data" / "tinyshakespeare.txt")
    val_fraction, tokenizer, vocab_size = 0.1, "char", 0

  class Config:
    data = Data
  tok, _, _ = prepare_text(Config, str(tmp_path), num_sentinels=3)
  tok.save(tmp_path / "tokenizer.json")
  with pytest.raises(UserError, match="sentinels"):
    prepare_text(Config, str(tmp_path), num_sentinels=4)


def _run(workdir, *flags):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONPATH=str(REPO_ROOT))
  cmd = [sys.executable, "-m", "experiments.run",
         "--config=configs/seq2seq_shakespeare.py:smoke", f"--workdir={workdir}",
         "--config.train.num_steps=6", "--config.train.eval_every=6",
         "--config.train.log_every=3", "--config.task_config.num_eval_lines=8", *flags]
  return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_cli_smoke_run_with_beam_metrics(tmp_path):
  result = _run(tmp_path, "--config.task_config.beam_size=2")
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert 0 < summary["val_loss"] < np.log(summary["vocab_size"]) + 0.5
  for key in ("val_accuracy", "val_sequence_accuracy", "greedy_exact_match",
              "greedy_token_accuracy", "beam2_exact_match", "beam2_token_accuracy"):
    assert 0.0 <= summary[key] <= 1.0, key
  assert summary["generation_examples"] == 8
  assert " -> " in summary["sample"]


def test_bad_rule_is_a_one_line_error(tmp_path):
  result = _run(tmp_path, "--config.task_config.rule=french")
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and "rule" in lines[0] and lines[0].startswith("error:")

"""MLM + NSP data and objective: 15% and 80/10/10 statistics (binomial bounds), NSP 50/50,
pair packing by hand, resumable batches, eval weights, and a CLI smoke run.

Statistical checks use fixed seeds and 5-sigma binomial bounds: a correct sampler fails
one with probability < 1e-6, a sampler off by a point or more fails it.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.special import log_softmax

from lm.data.tokenizers import CharTokenizer
from lm.models.bert import Bert, BertConfig, init_params
from lm.tasks import mlm_nsp
from lm.tasks.mlm_nsp import (
  IS_NEXT,
  NOT_NEXT,
  BertTokenizer,
  MLMNSPConfig,
  PairSource,
  lines_and_next,
  mask_tokens,
  pack_pairs,
  prediction_positions,
)
from lm.train.step import make_eval_step
from lm.train.trainer import evaluate

REPO_ROOT = Path(__file__).resolve().parent.parent
CFG = MLMNSPConfig()
TOK = BertTokenizer(CharTokenizer(list("abcdefghijklmnopqrst")))  # 20 base tokens
MINI_PLAY = """First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.
Aye, speak.

First Citizen:
You are all resolved rather to die than to famish?
"""


def _within(count, n, p, sigmas=5.0):
  sd = math.sqrt(n * p * (1 - p))
  return abs(count - n * p) <= sigmas * sd, (count, n * p, sd)


def test_special_tokens_follow_the_base_vocabulary():
  assert (TOK.pad_id, TOK.cls_id, TOK.sep_id, TOK.mask_id, TOK.vocab_size) == (20, 21, 22, 23, 24)
  assert TOK.decode([21, 0, 1, 22, 2, 22, 20]) == "[CLS]ab[SEP]c[SEP][PAD]"


def test_mask_selects_15_percent_and_applies_80_10_10():
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 20, (400, 250)).astype(np.int32)
  maskable = rng.random(tokens.shape) < 0.9
  inputs, targets, weights = mask_tokens(tokens, maskable, np.random.default_rng(1), CFG, TOK)
  selected = weights > 0
  np.testing.assert_array_equal(targets, tokens)
  assert not selected[~maskable].any()  # specials and padding are never predicted
  np.testing.assert_array_equal(inputs[~selected], tokens[~selected])  # the rest is untouched
  ok, info = _within(selected.sum(), maskable.sum(), 0.15)
  assert ok, info
  n = int(selected.sum())
  masked = (inputs == TOK.mask_id) & selected
  same = (inputs == tokens) & selected
  other = selected & ~masked & ~same
  V = TOK.base_vocab_size
  # Random replacements are uniform over the base vocabulary, so 1/V of them keep the token.
  for count, p in [(masked.sum(), 0.8), (same.sum(), 0.1 + 0.1 / V), (other.sum(), 0.1 * (1 - 1 / V))]:
    ok, info = _within(count, n, p)
    assert ok, info
  assert inputs[other].max() < V  # never a special token
  counts = np.bincount(inputs[other], minlength=V)
  # Each replacement value, given it differs from the original: ~uniform (chi-square, 19 dof).
  expected = counts.sum() / V
  assert ((counts - expected) ** 2 / expected).sum() < 60  # P(chi2_19 > 60) ~ 4e-6


def test_prediction_slots_list_the_selected_positions_and_cap_them_uniformly():
  weights = np.zeros((2, 8), np.float32)
  weights[0, [2, 5]] = 1.0
  weights[1, [1, 2, 3, 4, 6, 7]] = 1.0
  positions, kept = prediction_positions(weights, 3, np.random.default_rng(0))
  assert positions[0].tolist() == [2, 5, 0]  # in order, padded with 0 ([CLS])
  np.testing.assert_array_equal(kept[0], weights[0])
  assert kept[1].sum() == 3 and (kept[1] <= weights[1]).all()
  assert positions[1].tolist() == np.flatnonzero(kept[1]).tolist()
  # Over the cap, each selected position is kept with probability 3/6.
  trials = 4000
  rows = np.repeat(weights[1:], trials, 0)
  _, kept = prediction_positions(rows, 3, np.random.default_rng(1))
  for column in (1, 2, 3, 4, 6, 7):
    ok, info = _within(kept[:, column].sum(), trials, 0.5)
    assert ok, info


def test_capped_batches_restore_the_tokens_they_no_longer_predict(corpus_source):
  source, tok = corpus_source
  b = next(mlm_nsp.train_iterator(source, MLMNSPConfig(max_predictions=2), tok, 48, 64, 0))
  assert b["mlm_positions"].shape == (64, 2) and (b["mlm_weights"].sum(1) <= 2).all()
  unselected = b["mlm_weights"] == 0
  np.testing.assert_array_equal(b["tokens"][unselected], b["mlm_targets"][unselected])


def test_nsp_labels_are_50_50_and_true_pairs_are_consecutive():
  lines = "\n".join(f"line {i}" for i in range(300)) + "\n"
  source = PairSource(lines, BertTokenizer(CharTokenizer.build(lines)))
  rng = np.random.default_rng(0)
  anchors = source.anchors[rng.integers(0, len(source.anchors), 20000)]
  b, labels = source.choose_pairs(anchors, rng, 0.5)
  ok, info = _within((labels == NOT_NEXT).sum(), len(labels), 0.5)
  assert ok, info
  np.testing.assert_array_equal(b[labels == IS_NEXT], anchors[labels == IS_NEXT] + 1)
  assert (b[labels == NOT_NEXT] != anchors[labels == NOT_NEXT] + 1).all()
  assert b.min() >= 0 and b.max() < len(source.lines)
  # Random sentence B is uniform over the other lines: its mean index is near the middle.
  rand = b[labels == NOT_NEXT]
  sd = math.sqrt((300 ** 2 - 1) / 12 / len(rand))
  assert abs(rand.mean() - 149.5) < 5 * sd + 1


def test_lines_pair_only_within_a_speech():
  lines, has_next = lines_and_next(MINI_PLAY)
  assert lines == ["First Citizen:", "Before we proceed any further, hear me speak.", "All:",
                   "Speak, speak.", "Aye, speak.", "First Citizen:",
                   "You are all resolved rather to die than to famish?"]
  assert has_next.tolist() == [True, False, True, True, False, True, False]


def test_pack_pairs_by_hand():
  a, b = np.array([1, 2, 3]), np.array([4, 5])
  tokens, segments, valid, maskable = pack_pairs([a, np.arange(10)], [b, np.arange(4)], 10, TOK)
  C, S, P = TOK.cls_id, TOK.sep_id, TOK.pad_id
  assert tokens[0].tolist() == [C, 1, 2, 3, S, 4, 5, S, P, P]
  assert segments[0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 0, 0]
  assert valid[0].tolist() == [True] * 8 + [False] * 2
  assert maskable[0].tolist() == [False, True, True, True, False, True, True, False, False, False]
  # Too long: the longer sentence loses tokens from its end until 3 + len(A) + len(B) = 10.
  assert tokens[1].tolist() == [C, 0, 1, 2, 3, S, 0, 1, 2, S]
  assert segments[1].tolist() == [0] * 6 + [1] * 4


@pytest.fixture(scope="module")
def corpus_source():
  text = Path(REPO_ROOT / "data" / "tinyshakespeare.txt").read_text()[:20000]
  tok = BertTokenizer(CharTokenizer.build(text))
  return PairSource(text, tok), tok


def test_batches_are_deterministic_and_resume_exactly(corpus_source):
  source, tok = corpus_source
  it = mlm_nsp.train_iterator(source, CFG, tok, 48, 4, seed=3)
  first = [next(it) for _ in range(3)]
  state = it.get_state()
  fourth = next(it)
  again = mlm_nsp.train_iterator(source, CFG, tok, 48, 4, seed=3)
  again.set_state(state)
  resumed = next(again)
  for k in fourth:
    np.testing.assert_array_equal(fourth[k], resumed[k])
  other = next(mlm_nsp.train_iterator(source, CFG, tok, 48, 4, seed=4))
  assert not np.array_equal(other["tokens"], first[0]["tokens"])
  b = first[0]
  assert b["tokens"].shape == (4, 48) and b["nsp_labels"].shape == (4,)
  assert (b["tokens"][:, 0] == tok.cls_id).all()
  assert (b["tokens"][~b["valid"]] == tok.pad_id).all()


def test_eval_weights_count_only_real_pairs_and_selected_tokens(corpus_source):
  """Evaluation through the trainer's own eval step equals a direct computation."""
  source, tok = corpus_source
  cfg = MLMNSPConfig(eval_examples=50)
  batches = mlm_nsp.eval_batches(source, cfg, tok, 48, 16)  # 50 = 3 * 16 + 2: a padded batch
  assert len(batches) == 4 and sum(b["nsp_weights"].sum() for b in batches) == 50
  # The loss runs the MLM head at the prediction slots only; the reference below runs it
  # at every position.
  assert 0 < batches[0]["mlm_positions"].shape[1] < 48
  model = Bert(BertConfig(vocab_size=tok.vocab_size, num_layers=1, num_heads=2, embed_dim=16,
                          mlp_dim=32, max_len=48, dropout=0.0))
  params = init_params(model, 48, seed=0)
  metrics = evaluate(make_eval_step(mlm_nsp.mlm_nsp_loss(model), mlm_nsp.EVAL_WEIGHTS), params,
                     batches)
  ce, hit, n, nce, nhit, npairs = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
  for b in batches:
    mlm, nsp = model.apply({"params": params}, b["tokens"], b["segments"], b["valid"])
    logp = log_softmax(np.asarray(mlm, np.float64), -1)
    w = b["mlm_weights"] > 0
    ce -= np.take_along_axis(logp, b["mlm_targets"][..., None], -1)[..., 0][w].sum()
    hit += (logp.argmax(-1) == b["mlm_targets"])[w].sum()
    n += w.sum()
    real = b["nsp_weights"] > 0
    nlogp = log_softmax(np.asarray(nsp, np.float64), -1)
    nce -= nlogp[np.arange(len(real)), b["nsp_labels"]][real].sum()
    nhit += (nlogp.argmax(-1) == b["nsp_labels"])[real].sum()
    npairs += real.sum()
  assert npairs == 50
  np.testing.assert_allclose(metrics["mlm_loss"], ce / n, rtol=1e-5)
  np.testing.assert_allclose(metrics["mlm_accuracy"], hit / n, rtol=1e-5)
  np.testing.assert_allclose(metrics["nsp_loss"], nce / npairs, rtol=1e-5)
  np.testing.assert_allclose(metrics["nsp_accuracy"], nhit / npairs, rtol=1e-5)
  # An untrained model is near chance: log V for MLM, log 2 for NSP.
  assert abs(metrics["mlm_loss"] - math.log(tok.vocab_size)) < 0.5
  assert abs(metrics["nsp_loss"] - math.log(2)) < 0.1


def test_cli_smoke_run_trains_and_reports_metrics(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONPATH=str(REPO_ROOT))
  cmd = [sys.executable, "-m", "experiments.run", "--config=configs/bert_shakespeare.py:smoke",
         f"--workdir={tmp_path / 'w'}", "--config.train.num_steps=20",
         "--config.train.eval_every=20"]
  result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((tmp_path / "w" / "summary.json").read_text())
  for key in ("val_loss", "val_mlm_loss", "val_mlm_accuracy", "val_nsp_loss",
              "val_nsp_accuracy"):
    assert math.isfinite(summary[key]), key
  V = summary["vocab_size"]
  assert V == 65 + 4  # tiny Shakespeare's characters plus [PAD] [CLS] [SEP] [MASK]
  assert summary["val_mlm_loss"] < math.log(V)  # 20 steps already beat the uniform guess
  assert 0.0 <= summary["val_nsp_accuracy"] <= 1.0
  assert "[MASK]" in summary["sample"] and "predicted:" in summary["sample"]
  rows = [json.loads(line) for line in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["step"] == 20 and "val_nsp_accuracy" in rows[-1]
  # A wrong family for the task is a one-line error.
  bad = subprocess.run(cmd[:-2] + ["--config.family=gpt"], cwd=REPO_ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and bad.stderr.strip().startswith("error:")

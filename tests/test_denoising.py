"""BART denoising: Poisson(3) span lengths, 30% masking, uniform sentence permutation, CLI.

References: the Poisson pmf (scipy), exact counts (ceil(0.3 L) masked tokens, one
<mask> per span), 1/k! for permutations; frequencies within 5 binomial standard errors.
"""

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from lm.data.seq2seq_pairs import EOS_ID, MASK_ID
from lm.tasks.denoising import (
  DenoisingConfig,
  noise,
  permute_sentences,
  poisson_span_lengths,
  text_infilling,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_span_lengths_are_poisson_3():
  rng = np.random.default_rng(0)
  lengths = poisson_span_lengths(300_000, 3.0, rng)[:-1]  # the last one is trimmed
  n = len(lengths)
  assert abs(lengths.mean() - 3.0) < 5 * math.sqrt(3.0 / n)
  assert abs(lengths.var() - 3.0) < 0.05
  for k in range(10):
    p = stats.poisson.pmf(k, 3.0)
    assert abs(np.mean(lengths == k) - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-4, k


def test_budget_is_met_exactly():
  rng = np.random.default_rng(1)
  for budget in (1, 2, 7, 20, 31):
    for _ in range(200):
      lengths = poisson_span_lengths(budget, 3.0, rng)
      assert lengths.sum() == budget and (lengths >= 0).all()


def _unmasked_is_subsequence(out, tokens):
  it = iter(tokens.tolist())
  return all(any(t == u for u in it) for t in out if t != MASK_ID)


@pytest.mark.parametrize("n", [10, 64, 101])
def test_infilling_masks_thirty_percent_with_one_mask_per_span(n):
  rng = np.random.default_rng(n)
  tokens = np.arange(10, 10 + n)  # distinct, so kept tokens identify their positions
  budget = math.ceil(0.3 * n)
  masked_fraction = []
  for _ in range(300):
    out = text_infilling(tokens, rng)
    kept = out[out != MASK_ID]
    masked = n - len(kept)
    assert masked == budget
    assert _unmasked_is_subsequence(out, tokens)
    assert len(out) <= n  # at most as many spans as masked tokens
    # Each maximal gap of removed tokens between kept ones holds >= 1 mask.
    pos = kept - 10
    gaps = np.diff(np.concatenate([[-1], pos, [n]])) - 1
    boundaries = np.concatenate([[0], np.flatnonzero(out != MASK_ID) + 1, [len(out)]])
    masks_between = [np.sum(out[a:b] == MASK_ID) for a, b in zip(boundaries[:-1],
                                                                  boundaries[1:])]
    assert all(m >= 1 for g, m in zip(gaps, masks_between) if g > 0)
    masked_fraction.append(masked / n)
  assert np.mean(masked_fraction) == pytest.approx(budget / n)
  assert abs(budget / n - 0.3) < 1 / n


def test_masks_per_example_match_the_number_of_poisson_draws():
  """E[spans] for a budget M: the expected number of draws of the renewal process until
  the Poisson(3) sums reach M, i.e. 1 + sum_{j>=1} P(Poisson(3 j) < M) (sum of j draws is
  Poisson(3 j))."""
  rng = np.random.default_rng(7)
  n, trials = 64, 4000
  budget = math.ceil(0.3 * n)
  counts = np.array([np.sum(text_infilling(np.arange(10, 10 + n), rng) == MASK_ID)
                     for _ in range(trials)])
  expected = 1 + sum(stats.poisson.cdf(budget - 1, 3.0 * j) for j in range(1, 200))
  se = counts.std() / math.sqrt(trials)
  assert abs(counts.mean() - expected) < 5 * se, (counts.mean(), expected)


def test_sentence_permutation_is_uniform():
  newline = 5
  is_boundary = np.zeros(10, bool)
  is_boundary[newline] = True
  tokens = np.array([1, 1, newline, 2, 2, 2, newline, 3, newline])
  rng = np.random.default_rng(3)
  orders = {}
  trials = 6000
  for _ in range(trials):
    out = permute_sentences(tokens, is_boundary, rng)
    assert sorted(out.tolist()) == sorted(tokens.tolist())
    key = tuple(int(x) for x in out if x != newline)
    orders[key] = orders.get(key, 0) + 1
  perms = set(itertools.permutations([1, 2, 3]))
  assert len(orders) == 6
  p = 1 / 6
  for key, count in orders.items():
    first_of_each = tuple(dict.fromkeys(key))
    assert first_of_each in perms
    assert abs(count / trials - p) < 5 * math.sqrt(p * (1 - p) / trials)


def test_noise_targets_are_the_original_window():
  rng = np.random.default_rng(4)
  is_boundary = np.zeros(50, bool)
  is_boundary[3] = True
  window = rng.integers(4, 50, 40)
  window[[9, 19, 29]] = 3
  x, y = noise(window, rng, DenoisingConfig(), is_boundary)
  assert y.tolist() == window.tolist() + [EOS_ID]
  assert x[-1] == EOS_ID and MASK_ID in x
  assert np.sum(x[:-1] != MASK_ID) == 40 - 12


def test_cli_smoke_run(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONPATH=str(REPO_ROOT))
  cmd = [sys.executable, "-m", "experiments.run", "--config=configs/bart_shakespeare.py:smoke",
         f"--workdir={tmp_path}", "--config.train.num_steps=6", "--config.train.eval_every=6",
         "--config.train.log_every=3", "--config.task_config.num_eval_examples=8"]
  result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["vocab_size"] == 3 + 65
  assert 0 < summary["val_loss"] < math.log(68) + 0.5
  assert 0.0 <= summary["greedy_token_accuracy"] <= 1.0
  assert "<mask>" in summary["sample"]

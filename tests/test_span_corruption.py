"""T5 span corruption: noise density, span counts and lengths, reconstruction, the CLI.

References are independent of the code: T5's counts by hand (round(L * 0.15) noise
tokens, round(N / 3) spans), and the law of a uniformly random composition of n items
into s non-empty runs: P(a given run has length k) = C(n-k-1, s-2) / C(n-1, s-1).
Frequencies are compared with binomial standard errors (5 sigma).
"""

import json
import os
import subprocess
import sys
from math import comb
from pathlib import Path

import numpy as np
import pytest

from lm.data.seq2seq_pairs import EOS_ID
from lm.tasks.span_corruption import (
  corrupt,
  noise_counts,
  random_spans_noise_mask,
  reconstruct,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
SENTINELS = np.arange(100, 140)


def spans(mask):
  """(noise run lengths, non-noise run lengths) in order."""
  runs, start = [], 0
  for i in range(1, len(mask) + 1):
    if i == len(mask) or mask[i] != mask[start]:
      runs.append((bool(mask[start]), i - start))
      start = i
  return [n for m, n in runs if m], [n for m, n in runs if not m]


@pytest.mark.parametrize("length,noise,num_spans", [
    (128, 19, 6), (114, 17, 6), (64, 10, 3), (512, 77, 26), (20, 3, 1), (2, 1, 1)])
def test_counts_follow_t5(length, noise, num_spans):
  assert noise_counts(length, 0.15, 3.0) == (noise, num_spans)  # by hand: round(.15 L), round(N/3)
  rng = np.random.default_rng(length)
  for _ in range(50):
    mask = random_spans_noise_mask(length, rng)
    noise_runs, other_runs = spans(mask)
    assert mask.sum() == noise and len(noise_runs) == num_spans
    assert not mask[0] and mask[-1]  # starts with kept tokens, ends with noise (T5, no roll)
    assert len(other_runs) == num_spans


def test_noise_density_and_mean_span_length_statistics():
  rng = np.random.default_rng(0)
  L, trials = 512, 400
  masks = np.stack([random_spans_noise_mask(L, rng) for _ in range(trials)])
  density = masks.mean()
  assert abs(density - 0.15) < 0.5 / L  # 77 / 512 = 0.1504: rounding only
  lengths = np.concatenate([spans(m)[0] for m in masks])
  assert abs(lengths.mean() - 3.0) < 0.05  # 77 / 26 = 2.96 exactly per example
  # Away from the first run and the end, every position is noise with about the density.
  col = masks[:, 50:450].mean(0)
  se = np.sqrt(0.15 * 0.85 / trials)
  assert np.all(np.abs(col - 0.15) < 5 * se + 0.02)


@pytest.mark.parametrize("which", [0, 1])
def test_span_lengths_are_a_uniform_random_composition(which):
  """Noise runs: 19 tokens in 6 runs; non-noise: 109 in 6 (L = 128)."""
  rng = np.random.default_rng(1 + which)
  trials = 3000
  n, s = (19, 6) if which == 0 else (109, 6)
  first = np.array([spans(random_spans_noise_mask(128, rng))[which][0] for _ in range(trials)])
  for k in range(1, 8):
    p = comb(n - k - 1, s - 2) / comb(n - 1, s - 1)
    freq = np.mean(first == k)
    assert abs(freq - p) < 5 * np.sqrt(p * (1 - p) / trials) + 1e-3, (k, freq, p)


def test_inputs_and_targets_reconstruct_the_original_exactly():
  rng = np.random.default_rng(3)
  for length in (7, 33, 128, 200):
    for _ in range(30):
      tokens = rng.integers(3, 90, length)
      mask = random_spans_noise_mask(length, rng)
      x, y = corrupt(tokens, mask, SENTINELS)
      n, s = noise_counts(length, 0.15, 3.0)
      assert len(x) == length - n + s + 1 and len(y) == n + s + 1
      assert x[-1] == EOS_ID and y[-1] == EOS_ID
      # Sentinels appear in order, once each, in both.
      assert [t for t in x if t in SENTINELS] == list(SENTINELS[:s])
      assert [t for t in y if t in SENTINELS] == list(SENTINELS[:s])
      assert reconstruct(x, y, SENTINELS) == tokens.tolist()


def test_hand_made_example():
  tokens = np.array([10, 11, 12, 13, 14, 15, 16, 17])
  mask = np.array([0, 0, 1, 1, 0, 1, 0, 1], bool)
  x, y = corrupt(tokens, mask, [100, 101, 102])
  assert x.tolist() == [10, 11, 100, 14, 101, 16, 102, EOS_ID]
  assert y.tolist() == [100, 12, 13, 101, 15, 102, 17, EOS_ID]


def test_cli_smoke_run(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONPATH=str(REPO_ROOT))
  cmd = [sys.executable, "-m", "experiments.run", "--config=configs/t5_shakespeare.py:smoke",
         f"--workdir={tmp_path}", "--config.train.num_steps=6", "--config.train.eval_every=6",
         "--config.train.log_every=3", "--config.task_config.num_eval_examples=8"]
  result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  vocab = summary["vocab_size"]
  assert vocab == 3 + 3 + 65  # pad, EOS, mask, 3 sentinels (L = 64), 65 characters
  assert 0 < summary["val_loss"] < np.log(vocab) + 0.5
  for key in ("val_accuracy", "val_sequence_accuracy", "greedy_exact_match",
              "greedy_token_accuracy"):
    assert 0.0 <= summary[key] <= 1.0
  assert "<extra_id_0>" in summary["sample"]
  tokenizer = json.loads((tmp_path / "tokenizer.json").read_text())
  assert tokenizer["kind"] == "special" and tokenizer["num_sentinels"] == 3

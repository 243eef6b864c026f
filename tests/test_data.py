"""Corpus reading, train/val split, random training windows and exhaustive eval windows."""

import numpy as np
import pytest

from lm.data.corpus import read_text, split_text
from lm.data.pipeline import eval_batches, next_chunk, train_iterator
from lm.errors import UserError


def test_read_text_errors(tmp_path):
  with pytest.raises(UserError, match="not found"):
    read_text(str(tmp_path / "missing.txt"))
  (tmp_path / "empty.txt").write_text("  \n")
  with pytest.raises(UserError, match="empty"):
    read_text(str(tmp_path / "empty.txt"))
  (tmp_path / "bad.txt").write_bytes(b"ok\xff\xfe")
  with pytest.raises(UserError, match=r"not valid UTF-8: byte 0xff at offset 2"):
    read_text(str(tmp_path / "bad.txt"))


def test_split_is_last_fraction():
  assert split_text("abcdefghij", 0.2) == ("abcdefgh", "ij")


def test_training_windows_are_contiguous_slices_with_shifted_targets():
  tokens = np.arange(1000, dtype=np.int32)  # token value == its position
  batch = next(train_iterator(tokens, seq_len=16, batch_size=4, seed=0))
  assert batch["inputs"].shape == (4, 16)
  for x, y in zip(batch["inputs"], batch["targets"]):
    np.testing.assert_array_equal(x, np.arange(x[0], x[0] + 16))
    np.testing.assert_array_equal(y, x + 1)
    assert 0 <= x[0] and y[-1] < 1000


def test_window_starts_cover_the_split_uniformly():
  tokens = np.arange(40, dtype=np.int32)
  it = train_iterator(tokens, seq_len=8, batch_size=50, seed=1)
  starts = np.concatenate([next(it)["inputs"][:, 0] for _ in range(40)])
  counts = np.bincount(starts, minlength=33)  # valid starts: 0 .. 40 - 8 - 1 = 31
  assert counts[32] == 0 and counts[:32].min() > 0  # a window needs seq_len + 1 tokens
  expected = len(starts) / 32
  chi2 = ((counts[:32] - expected) ** 2 / expected).sum()
  assert chi2 < 70  # 31 dof: the 0.9999 quantile is ~66


def test_iterator_state_resumes_the_exact_stream():
  tokens = np.arange(5000, dtype=np.int32)
  it = train_iterator(tokens, 8, 3, seed=7)
  next_chunk(it, 5)
  state = it.get_state()
  expected = next_chunk(it, 4)
  fresh = train_iterator(tokens, 8, 3, seed=7)
  fresh.set_state(state)
  np.testing.assert_array_equal(next_chunk(fresh, 4)["inputs"], expected["inputs"])
  other_seed = next(train_iterator(tokens, 8, 3, seed=8))["inputs"]
  assert not np.array_equal(other_seed, next(train_iterator(tokens, 8, 3, seed=7))["inputs"])


@pytest.mark.parametrize("n, seq_len, batch", [(2, 4, 3), (17, 4, 2), (100, 10, 5), (101, 10, 5)])
def test_eval_windows_predict_every_token_exactly_once(n, seq_len, batch):
  tokens = np.arange(n, dtype=np.int32) + 1  # +1 so padding (0) is distinguishable
  batches = eval_batches(tokens, seq_len, batch)
  predicted = []
  for b in batches:
    assert b["inputs"].shape == b["targets"].shape == b["weights"].shape == (batch, seq_len)
    mask = b["weights"] > 0
    np.testing.assert_array_equal(b["targets"][mask], b["inputs"][mask] + 1)
    predicted.extend(b["targets"][mask].tolist())
  assert predicted == list(range(2, n + 1))


def test_too_short_splits_are_user_errors():
  with pytest.raises(UserError, match="fewer than one window"):
    train_iterator(np.arange(5), seq_len=8, batch_size=2, seed=0)
  with pytest.raises(UserError, match="validation split"):
    eval_batches(np.arange(1), 8, 2)

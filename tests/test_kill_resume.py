"""The exact-resume harness (experiments/kill_resume.py): its comparison catches a
one-bit difference, and, reduced to one kill (CI) or two trials of two kills (slow), killed-and-resumed
runs end bitwise equal to an uninterrupted run. The full 10-trial run is
`python -m experiments.kill_resume` (docs/reliability.md)."""

import json

import numpy as np
import pytest

from experiments import kill_resume
from lm.train.checkpoint import Checkpointer


def fake_run(workdir, w: np.ndarray, losses: list[float]):
  """A workdir as training leaves it: a checkpoint and metrics.jsonl."""
  ckpt = Checkpointer(str(workdir))
  ckpt.save(len(losses), {"params": {"w": w}, "step": np.int32(len(losses))}, {"next": 1})
  ckpt.close()
  rows = [{"step": i + 1, "train_loss": loss} for i, loss in enumerate(losses)]
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_differences_catch_one_bit_and_one_loss(tmp_path):
  w = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
  one_bit = w.copy()
  one_bit.view(np.uint32)[1, 2] ^= 1  # the smallest possible change of one float
  fake_run(tmp_path / "a", w, [3.0, 2.5])
  fake_run(tmp_path / "b", w.copy(), [3.0, 2.5])
  fake_run(tmp_path / "c", one_bit, [3.0, 2.5])
  fake_run(tmp_path / "d", w.copy(), [3.0, 2.5000002])
  assert kill_resume.differences(str(tmp_path / "b"), str(tmp_path / "a")) == []
  (diff,) = kill_resume.differences(str(tmp_path / "c"), str(tmp_path / "a"))
  assert "['params']['w'] differs" in diff
  (diff,) = kill_resume.differences(str(tmp_path / "d"), str(tmp_path / "a"))
  assert "loss curve differs from row 1" in diff


@pytest.mark.slow
def test_random_kills_resume_bitwise(tmp_path):
  results = kill_resume.run_trials(str(tmp_path / "kr"), trials=2, kills=2, num_steps=16,
                                   checkpoint_every=4, seed=1)
  for result in results:
    assert result["differences"] == [], result
    assert any(e["killed"] for e in result["kills"]), result
  assert any(e["saving"] for e in results[1]["kills"]), results[1]  # odd trials: inside saves


def test_one_random_kill_resumes_bitwise(tmp_path):
  """The CI-sized harness: one trial, one SIGKILL at a random moment, then resume."""
  results = kill_resume.run_trials(str(tmp_path / "kr"), trials=1, kills=1, num_steps=12,
                                   checkpoint_every=4, seed=3)
  assert results[0]["differences"] == [], results[0]
  assert any(e["killed"] for e in results[0]["kills"]), results[0]

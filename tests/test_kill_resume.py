"""The exact-resume harness (experiments/kill_resume.py), reduced: one trial killed at a
random step and one killed twice inside checkpoint saves, each resumed and compared
bitwise (parameters) and row by row (loss curve) with an uninterrupted run. The full
10-trial run is `python -m experiments.kill_resume` (docs/reliability.md)."""

import pytest

from experiments import kill_resume


@pytest.mark.slow
def test_random_kills_resume_bitwise(tmp_path):
  results = kill_resume.run_trials(str(tmp_path / "kr"), trials=2, kills=2, num_steps=16,
                                   checkpoint_every=4, seed=1)
  for result in results:
    assert result["differences"] == [], result
    assert any(e["killed"] for e in result["kills"]), result
  assert any(e["saving"] for e in results[1]["kills"]), results[1]  # odd trials: inside saves

"""Fault-safe checkpoints: truncated, corrupted or half-written checkpoint directories are
detected with a clear message and the previous good one is used; best-by-metric
retention; and a real training run SIGKILLed inside a checkpoint save resumes from an
intact checkpoint and ends bitwise equal to an uninterrupted run."""

import json
import os
import shutil
import signal
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import kill_resume
from lm.errors import UserError
from lm.train.checkpoint import CORRUPT_DIR, MANIFEST, Checkpointer


def state_for(step: int) -> dict:
  """A small train-state-like tree whose values name the step they were saved at."""
  return {"params": {"w": jax.random.normal(jax.random.key(step), (64, 64)),
                     "b": jnp.arange(5.0) + step},
          "step": jnp.int32(step)}


ABSTRACT = jax.eval_shape(lambda: state_for(0))


def saved_workdir(tmp_path: Path, steps=(10, 20, 30), keep: int = 3) -> Path:
  ckpt = Checkpointer(str(tmp_path), keep=keep)
  for step in steps:
    ckpt.save(step, state_for(step), {"next_index": step})
  ckpt.close()
  return tmp_path


def biggest_file(step_dir: Path) -> Path:
  """The largest array data file (orbax/tensorstore OCDBT layout)."""
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  return max(files, key=lambda p: p.stat().st_size)


def assert_restores_step(ckpt: Checkpointer, step: int):
  state, data = ckpt.restore(ABSTRACT)
  assert int(state["step"]) == step and data == {"next_index": step}
  np.testing.assert_array_equal(state["params"]["w"], state_for(step)["params"]["w"])


def truncate(path: Path):
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])


def flip_bytes(path: Path):
  data = bytearray(path.read_bytes())
  for i in range(len(data) // 3, len(data) // 3 + 16):
    data[i] ^= 0xFF
  path.write_bytes(bytes(data))


def remove(path: Path):
  path.unlink()


@pytest.mark.parametrize("damage,reason", [
    (truncate, "truncated"),
    (flip_bytes, "checksum"),
    (remove, "missing"),
])
def test_damaged_latest_falls_back_to_previous(tmp_path, capsys, damage, reason):
  workdir = saved_workdir(tmp_path)
  damage(biggest_file(workdir / "checkpoints" / "30"))
  ckpt = Checkpointer(str(workdir), keep=3)
  assert ckpt.latest_step() == 20
  err = capsys.readouterr().err
  assert "checkpoints/30 is unusable" in err and reason in err, err
  assert err.count("\n") == 1  # one warning line, even when asked again
  assert ckpt.latest_step() == 20 and capsys.readouterr().err == ""
  # Set aside for inspection, out of orbax's way: the run can save step 30 again.
  assert (workdir / CORRUPT_DIR / "30").is_dir()
  assert not (workdir / "checkpoints" / "30").exists()
  assert_restores_step(ckpt, 20)
  ckpt.save(30, state_for(30), {"next_index": 30})
  assert ckpt.latest_step() == 30
  assert_restores_step(ckpt, 30)
  ckpt.close()


def test_unreadable_manifest(tmp_path, capsys):
  workdir = saved_workdir(tmp_path)
  (workdir / "checkpoints" / "30" / MANIFEST).write_text("{not json")
  ckpt = Checkpointer(str(workdir))
  assert ckpt.latest_step() == 20
  assert "unreadable" in capsys.readouterr().err
  ckpt.close()


# orbax reports the failed read from a coroutine as well as by raising
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_unverified_checkpoint_falls_back_when_restore_fails(tmp_path, capsys):
  """No manifest (killed between orbax's rename and the manifest write) and truncated
  data: only restoring can tell, and restore falls back to step 20. (Without a
  manifest, flipped bits inside compressed data can restore silently: the manifest's
  checksums are what catch them.)"""
  workdir = saved_workdir(tmp_path)
  step30 = workdir / "checkpoints" / "30"
  (step30 / MANIFEST).unlink()
  truncate(biggest_file(step30))
  ckpt = Checkpointer(str(workdir))
  assert ckpt.latest_step() == 30  # complete as far as orbax can tell
  assert_restores_step(ckpt, 20)
  assert "restoring failed" in capsys.readouterr().err
  assert ckpt.latest_step() == 20
  ckpt.close()


def test_unverified_intact_checkpoint_is_used(tmp_path):
  workdir = saved_workdir(tmp_path)
  (workdir / "checkpoints" / "30" / MANIFEST).unlink()
  ckpt = Checkpointer(str(workdir))
  assert_restores_step(ckpt, 30)
  ckpt.close()


def test_read_only_leaves_damage_in_place_and_explicit_step_is_an_error(tmp_path, capsys):
  workdir = saved_workdir(tmp_path)
  truncate(biggest_file(workdir / "checkpoints" / "30"))
  ckpt = Checkpointer(str(workdir), create=False)
  assert ckpt.latest_step() == 20
  assert "left in place" in capsys.readouterr().err
  assert (workdir / "checkpoints" / "30").is_dir()
  with pytest.raises(UserError, match=r"checkpoints/30 is unusable: .*truncated"):
    ckpt.restore(ABSTRACT, step=30)
  assert_restores_step(ckpt, 20)
  ckpt.close()


def test_every_checkpoint_damaged(tmp_path):
  workdir = saved_workdir(tmp_path, steps=(10, 20))
  for step in (10, 20):
    truncate(biggest_file(workdir / "checkpoints" / str(step)))
  ckpt = Checkpointer(str(workdir))
  assert ckpt.latest_step() is None  # the trainer starts from scratch
  with pytest.raises(UserError, match="no checkpoint found"):
    ckpt.restore(ABSTRACT)
  assert sorted(p.name for p in (workdir / CORRUPT_DIR).iterdir()) == ["10", "20"]
  ckpt.close()


def test_shape_mismatch_is_not_treated_as_damage(tmp_path):
  workdir = saved_workdir(tmp_path)
  other = jax.eval_shape(lambda: {**state_for(0), "params": {"w": jnp.zeros((32, 64)),
                                                             "b": jnp.zeros(5)}})
  ckpt = Checkpointer(str(workdir))
  with pytest.raises(UserError, match="does not match the model: params/w"):
    ckpt.restore(other)
  assert ckpt.all_steps() == [10, 20, 30] and not (workdir / CORRUPT_DIR).exists()
  ckpt.close()


def test_manifest_lists_every_file_with_its_checksum(tmp_path):
  workdir = saved_workdir(tmp_path, steps=(10,))
  step_dir = workdir / "checkpoints" / "10"
  manifest = json.loads((step_dir / MANIFEST).read_text())
  files = {str(p.relative_to(step_dir)) for p in step_dir.rglob("*") if p.is_file()}
  assert set(manifest["files"]) == files - {MANIFEST}
  import hashlib
  for rel, entry in manifest["files"].items():
    data = (step_dir / rel).read_bytes()
    assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@pytest.mark.parametrize("mode,losses,kept,best", [
    ("min", [3.0, 1.0, 2.0, 4.0, 5.0], [2, 4, 5], 2),
    ("max", [3.0, 1.0, 2.0, 0.5, 0.4], [1, 4, 5], 1),
    ("min", [1.0, float("nan"), 2.0, 3.0, 4.0], [1, 4, 5], 1),  # NaN is never best
])
def test_best_by_metric_retention(tmp_path, mode, losses, kept, best):
  ckpt = Checkpointer(str(tmp_path), keep=2, best_metric="val_loss", best_mode=mode)
  for step, loss in enumerate(losses, start=1):
    ckpt.save(step, state_for(step), {"next_index": step}, metrics={"val_loss": loss})
  assert ckpt.all_steps() == kept
  assert ckpt.best_step() == best
  ckpt.close()


def test_best_is_remembered_across_restarts(tmp_path):
  """A new process reads the metrics back from the manifests."""
  ckpt = Checkpointer(str(tmp_path), keep=1, best_metric="val_loss")
  for step, loss in [(1, 2.0), (2, 0.5), (3, 1.0)]:
    ckpt.save(step, state_for(step), {"next_index": step}, metrics={"val_loss": loss})
  ckpt.close()
  ckpt = Checkpointer(str(tmp_path), keep=1, best_metric="val_loss")
  assert ckpt.best_step() == 2
  ckpt.save(4, state_for(4), {"next_index": 4}, metrics={"val_loss": 0.7})
  assert ckpt.all_steps() == [2, 4]
  ckpt.close()


def test_keep_without_metric(tmp_path):
  ckpt = Checkpointer(str(tmp_path), keep=2)
  for step in range(1, 5):
    ckpt.save(step, state_for(step), {"next_index": step}, metrics={"val_loss": 1.0 / step})
  assert ckpt.all_steps() == [3, 4] and ckpt.best_step() is None
  ckpt.close()


def test_bad_arguments(tmp_path):
  with pytest.raises(UserError, match="keep"):
    Checkpointer(str(tmp_path), keep=0)
  with pytest.raises(UserError, match="best_mode"):
    Checkpointer(str(tmp_path), best_mode="lowest")


# --------------------------------------------------------------------------- a real kill


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory) -> dict:
  """A training subprocess SIGKILLed the moment orbax's temporary step directory
  appears, then rerun with the same command to the end."""
  root = tmp_path_factory.mktemp("killed")
  spec = kill_resume.RunSpec(kill_resume.make_corpus(str(root / "corpus.txt"), 8000),
                             num_steps=8, checkpoint_every=2, cache_dir=str(root / "jax_cache"))
  workdir = str(root / "run")
  # The first save (step 2) is let through so that a complete checkpoint exists.
  event = kill_resume.start_and_kill(
      spec, workdir, lambda w: kill_resume.saving_now(w) and kill_resume.logged_steps(w) > 2,
      poll_s=0.0005)
  ckpt = Checkpointer(workdir, create=False)
  intact = {s: ckpt.verify(s) for s in ckpt.all_steps()}
  ckpt.close()
  return {"spec": spec, "root": root, "workdir": workdir, "event": event, "intact": intact,
          "resumed": kill_resume.run(spec, workdir)}


def test_sigkill_inside_a_save_resumes_from_an_intact_checkpoint(killed_run):
  """(tests/test_kill_resume.py, slow, also compares such runs bitwise with an
  uninterrupted one.)"""
  event, workdir = killed_run["event"], killed_run["workdir"]
  assert event["killed"] and event["returncode"] == -signal.SIGKILL, event["stderr"]
  assert event["saving"], "the kill did not land inside a save"
  intact = killed_run["intact"]
  assert intact and all(problem is None for problem in intact.values()), intact

  proc = killed_run["resumed"]
  assert proc.returncode == 0, proc.stderr
  assert f"at step {max(intact)}" in proc.stdout
  assert "unusable" not in proc.stderr  # nothing was damaged, so nothing was set aside
  names = os.listdir(os.path.join(workdir, "checkpoints"))
  assert not any(kill_resume.TMP_MARKER in n for n in names), names  # cleaned up
  assert [r["step"] for r in kill_resume.read_metrics(workdir)] == list(range(1, 9))
  ckpt = Checkpointer(workdir, create=False)
  assert ckpt.latest_step() == 8 and ckpt.verify(8) is None
  ckpt.close()


def test_training_falls_back_past_a_truncated_checkpoint(killed_run):
  """The trainer, through Checkpointer, skips a truncated latest checkpoint: one warning
  line, resume from the one before, train the lost steps again, save a good one."""
  assert killed_run["resumed"].returncode == 0, killed_run["resumed"].stderr
  workdir = killed_run["root"] / "damaged"
  shutil.copytree(killed_run["workdir"], workdir)
  truncate(biggest_file(workdir / "checkpoints" / "8"))
  before = kill_resume.read_metrics(str(workdir))
  proc = kill_resume.run(killed_run["spec"], str(workdir))
  assert proc.returncode == 0, proc.stderr
  warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
  assert len(warnings) == 1 and "checkpoints/8 is unusable" in warnings[0], proc.stderr
  assert "truncated" in warnings[0] and "checkpoints.corrupt/8" in warnings[0]
  assert "at step 6" in proc.stdout
  assert (workdir / CORRUPT_DIR / "8").is_dir()
  ckpt = Checkpointer(str(workdir), create=False)
  assert ckpt.latest_step() == 8 and ckpt.verify(8) is None
  ckpt.close()
  after = kill_resume.read_metrics(str(workdir))
  assert [r["step"] for r in after] == list(range(1, 9))
  # Steps 7 and 8 were trained again from step 6's state and data position: same losses.
  assert [r["train_loss"] for r in after] == [r["train_loss"] for r in before]

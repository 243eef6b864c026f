"""Two processes on localhost (gloo collectives on CPU) train exactly like one process.

Each process owns one CPU device; together they form a 2-device data-parallel mesh and
each feeds its half of the global batch. The reference is a single-process run of the
same config and global batch.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
FLAGS = ["--config=configs/shakespeare_char.py:smoke", "--config.train.num_steps=6",
         "--config.train.log_every=2", "--config.train.eval_every=6",
         "--config.train.checkpoint_every=6", "--config.sample.max_new_tokens=5"]


def _env():
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONPATH=str(REPO_ROOT))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _cmd(workdir, *extra):
  return [sys.executable, "-m", "experiments.run", *FLAGS, f"--workdir={workdir}", *extra]


def _metrics(workdir):
  return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one_process(tmp_path):
  port = _free_port()
  procs = [subprocess.Popen(_cmd(tmp_path / "multi", f"--coordinator=127.0.0.1:{port}",
                                 "--num_processes=2", f"--process_id={i}"),
                            cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
  single = subprocess.run(_cmd(tmp_path / "single"), cwd=REPO_ROOT, env=_env(),
                          capture_output=True, text=True, timeout=300)
  assert single.returncode == 0, single.stderr[-2000:]
  multi, ref = _metrics(tmp_path / "multi"), _metrics(tmp_path / "single")
  assert [m["step"] for m in multi] == [m["step"] for m in ref] == [2, 4, 6]
  for key in ("train_loss", "grad_norm"):
    np.testing.assert_allclose([m[key] for m in multi], [m[key] for m in ref], rtol=1e-5)
  np.testing.assert_allclose(multi[-1]["val_loss"], ref[-1]["val_loss"], rtol=1e-5)
  assert (tmp_path / "multi" / "checkpoints" / "6").is_dir()
  assert json.loads((tmp_path / "multi" / "summary.json").read_text())["steps"] == 6


def test_unreachable_coordinator_is_a_one_line_error(tmp_path):
  result = subprocess.run(
      _cmd(tmp_path / "w", f"--coordinator=127.0.0.1:{_free_port()}", "--num_processes=2",
           "--process_id=1", "--init_timeout_s=3"),
      cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith("error: could not join the multi-process run"), result.stderr[-2000:]


@pytest.mark.slow
def test_survivor_exits_when_the_other_process_dies(tmp_path):
  """SIGKILL one process mid-run: the other must stop within 60 s, not hang."""
  port = _free_port()
  long_run = ["--config.train.num_steps=100000", "--config.train.eval_every=100000",
              "--config.train.checkpoint_every=100000", "--heartbeat_timeout_s=10"]
  procs = [subprocess.Popen(_cmd(tmp_path / "w", f"--coordinator=127.0.0.1:{port}",
                                 "--num_processes=2", f"--process_id={i}", *long_run),
                            cwd=REPO_ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    metrics = tmp_path / "w" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and metrics.read_text().strip()):  # both are training
      assert time.monotonic() < deadline, "the run never started"
      assert procs[0].poll() is None, procs[0].stderr.read()[-2000:]
      time.sleep(0.5)
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    procs[0].wait(timeout=90)
    assert time.monotonic() - killed_at < 60
    assert procs[0].returncode != 0
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()


@pytest.mark.slow
def test_a_process_with_a_user_error_exits_and_so_does_its_peer(tmp_path):
  """Process 1 fails after joining (its workdir lies under a file): it must print its one-line
  error and leave at once, not wait in the shutdown barrier for process 0, which is waiting
  for it in a collective; process 0 then exits on the heartbeat timeout."""
  port = _free_port()
  (tmp_path / "a_file").write_text("x")
  workdirs = [tmp_path / "w", tmp_path / "a_file" / "w"]
  procs = [subprocess.Popen(_cmd(workdirs[i], f"--coordinator=127.0.0.1:{port}",
                                 "--num_processes=2", f"--process_id={i}",
                                 "--heartbeat_timeout_s=10"),
                            cwd=REPO_ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    _, err = procs[1].communicate(timeout=120)
    assert procs[1].returncode == 2
    assert "not writable" in err.strip().splitlines()[-1]
    procs[0].wait(timeout=120)
    assert procs[0].returncode != 0
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()

"""`sharding.cpu_processes=N`: the runner re-runs its own command as N processes, one
pinned to each core, joined with jax.distributed and summing gradients through shared
memory (lm/train/host_allreduce.py). Process 0 prints and writes the workdir; the others'
output is dropped unless they fail. The first process to fail stops the others, and its
exit status is the run's.
"""

import glob
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time

from lm.train.host_allreduce import ENV_NAME


def cores_for(processes: int) -> list[int] | None:
  """One core per process, or None when this host (or this process's affinity) has fewer."""
  if not hasattr(os, "sched_getaffinity"):
    return None
  cores = sorted(os.sched_getaffinity(0))
  return cores[:processes] if len(cores) >= processes else None


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _stop(procs):
  for p in procs:
    if p.poll() is None:
      p.terminate()
  deadline = time.monotonic() + 30
  for p in procs:
    try:
      p.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()


def run(argv: list[str], cores: list[int]) -> int:
  """Runs `python -m experiments.run argv[1:]` once per core; returns the exit status."""
  n = len(cores)
  port, prefix = _free_port(), f"lm_{os.getpid()}_{secrets.token_hex(4)}"
  procs, logs = [], []
  try:
    for rank, core in enumerate(cores):
      env = dict(os.environ, **{ENV_NAME: f"{prefix}:{rank}:{n}"})
      cmd = [sys.executable, "-m", "experiments.run", *argv[1:],
             f"--coordinator=127.0.0.1:{port}", f"--num_processes={n}", f"--process_id={rank}"]
      log = None if rank == 0 else tempfile.TemporaryFile(mode="w+")
      logs.append(log)
      procs.append(subprocess.Popen(
          cmd, env=env, stdout=None if rank == 0 else subprocess.DEVNULL, stderr=log,
          preexec_fn=lambda core=core: os.sched_setaffinity(0, {core})))  # noqa: PLW1509
    failed = None
    while failed is None and any(p.poll() is None for p in procs):
      failed = next((r for r, p in enumerate(procs) if p.poll() not in (None, 0)), None)
      time.sleep(0.1)
    if failed is None:
      failed = next((r for r, p in enumerate(procs) if p.returncode), None)
    if failed is None:
      return 0
    _stop(procs)
    if failed and procs[0].returncode <= 0:
      logs[failed].seek(0)  # process 0 did not report it: show the failing process's words
      lines = [line for line in logs[failed].read().splitlines() if line.strip()]
      if lines:
        print(lines[-1], file=sys.stderr)
    return max(procs[failed].returncode, 1)
  except KeyboardInterrupt:
    _stop(procs)
    return 130
  finally:
    _stop(procs)
    for log in logs:
      if log is not None:
        log.close()
    for path in glob.glob(f"/dev/shm/{prefix}_*"):  # left by a process that was killed
      try:
        os.unlink(path)
      except OSError:
        pass

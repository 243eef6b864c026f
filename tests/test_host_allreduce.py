"""The shared-memory sum of sharding.cpu_processes (lm/train/host_allreduce.py), across real
processes, against sums computed here with numpy."""

import multiprocessing
import secrets
import time

import numpy as np
import pytest

from lm.train.host_allreduce import SharedMemorySum

STEPS, N = 7, 1000


def _vector(rank: int, step: int) -> np.ndarray:
  return np.random.default_rng([rank, step]).standard_normal(N).astype(np.float32)


def _worker(prefix, rank, processes, out):
  total = SharedMemorySum(prefix, rank, processes, timeout_s=60)
  sums = []
  for step in range(STEPS):
    if (rank + step) % 2:  # uneven arrival: the double buffering must hold
      time.sleep(0.02 * rank)
    sums.append(total(_vector(rank, step)))
  out.put((rank, np.stack(sums)))
  total.close()


@pytest.mark.parametrize("processes", [2, 3])
def test_every_process_gets_the_exact_sum_of_each_step(processes):
  ctx = multiprocessing.get_context("spawn")
  out, prefix = ctx.Queue(), f"lm_test_{secrets.token_hex(4)}"
  procs = [ctx.Process(target=_worker, args=(prefix, r, processes, out))
           for r in range(processes)]
  for p in procs:
    p.start()
  results = dict(out.get(timeout=120) for _ in procs)
  for p in procs:
    p.join(timeout=60)
    assert p.exitcode == 0
  for step in range(STEPS):
    expected = _vector(0, step).copy()
    for rank in range(1, processes):
      expected += _vector(rank, step)  # summed in process order, as every process does
    for rank in range(processes):
      np.testing.assert_array_equal(results[rank][step], expected)


def test_a_missing_peer_is_a_timeout_not_a_hang():
  prefix = f"lm_test_{secrets.token_hex(4)}"
  alone = SharedMemorySum(prefix, 0, 2, timeout_s=0.5)
  start = time.monotonic()
  with pytest.raises(TimeoutError, match="stopped answering"):
    alone(np.ones(4, np.float32))
  assert time.monotonic() - start < 10
  alone.close()
  orphan = SharedMemorySum(f"lm_test_{secrets.token_hex(4)}", 1, 2, timeout_s=0.5)
  with pytest.raises(TimeoutError, match="never appeared"):
    orphan(np.ones(4, np.float32))


def test_bad_ranks_are_rejected():
  with pytest.raises(ValueError):
    SharedMemorySum("x", 2, 2)
  with pytest.raises(ValueError):
    SharedMemorySum("x", 0, 1)

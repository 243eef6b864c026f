"""Summing gradients between the processes of one host through shared memory.

On a small CPU host the default recipe is fastest as one process per core, each pinned to
its core with one JAX device (`sharding.cpu_processes`, launched by experiments/run.py):
two devices inside one process share XLA's intra-op threads and wait on each other, and
jax.distributed's gloo collective costs more per step than pinning saves
(README, "What the remaining gap is"). This module is the all-reduce for that mode: each
process writes its vector into a shared segment, waits until every process has written
the same step, and sums the slots in process order, so every process gets bitwise the
same result. It runs on the host, called once per step from inside the jitted scan
(`jax.pure_callback`), with no extra thread.

The segment holds two generations of slots (step parity) and one counter per process: a
process can only write step s + 2's slot after every process has arrived at step s + 1,
by which time each has finished reading step s. Stores and loads keep program order on
x86-64 (total store order), which the counter hand-off relies on.
"""

import atexit
import os
import time
from multiprocessing import resource_tracker, shared_memory

import numpy as np

ENV_NAME = "LM_HOST_ALLREDUCE"  # set by the launcher: "<segment prefix>:<rank>:<processes>"
_HEADER_BYTES = 64 * 8  # up to 64 int64 arrival counters


class SharedMemorySum:
  """Sums float32 vectors over `processes` processes; `rank` is this one's index."""

  def __init__(self, prefix: str, rank: int, processes: int, timeout_s: float = 120.0):
    if not 0 <= rank < processes or not 1 < processes <= 64:
      raise ValueError(f"rank {rank} of {processes} processes (2 to 64)")
    self.prefix, self.rank, self.processes, self.timeout_s = prefix, rank, processes, timeout_s
    self._segments = {}  # vector length -> (SharedMemory, counters, slots, steps done)

  def _segment(self, n: int):
    if n not in self._segments:
      name = f"{self.prefix}_{n}"
      size = _HEADER_BYTES + 2 * self.processes * n * 4
      deadline = time.monotonic() + self.timeout_s
      while True:
        try:
          shm = shared_memory.SharedMemory(name, create=self.rank == 0, size=size)
          break
        except FileNotFoundError:  # the others wait for process 0 to create it
          if time.monotonic() > deadline:
            raise TimeoutError(f"shared memory {name!r} never appeared: process 0 of the "
                               f"run is gone") from None
          time.sleep(0.01)
      if self.rank:  # only the creator unlinks it (Python < 3.13 has no track=False)
        resource_tracker.unregister(shm._name, "shared_memory")  # noqa: SLF001
      counters = np.ndarray((self.processes,), np.int64, shm.buf, 0)
      slots = np.ndarray((2, self.processes, n), np.float32, shm.buf, _HEADER_BYTES)
      self._segments[n] = [shm, counters, slots, 0]
    return self._segments[n]

  def __call__(self, x) -> np.ndarray:
    """The elementwise sum of every process's `x` (1-D float32) for this step."""
    x = np.asarray(x, np.float32)
    seg = self._segment(x.shape[0])
    _, counters, slots, step = seg
    seg[3] = step + 1
    slots[step % 2, self.rank] = x
    counters[self.rank] = step + 1
    deadline = None
    while counters.min() < step + 1:
      if deadline is None:
        deadline = time.monotonic() + self.timeout_s
      elif time.monotonic() > deadline:
        raise TimeoutError(f"process {self.rank}: another process of the run stopped "
                           f"answering for {self.timeout_s:.0f}s")
      os.sched_yield()
    total = slots[step % 2, 0].copy()
    for other in range(1, self.processes):
      total += slots[step % 2, other]
    return total

  def reduce(self, flat):
    """For use inside jit: the sum over processes of a 1-D float32 array."""
    import jax  # imported here so the launcher (experiments/pinned_processes.py) needs no jax
    return jax.pure_callback(self, jax.ShapeDtypeStruct(flat.shape, flat.dtype), flat)

  def close(self):
    for shm, *_ in self._segments.values():
      shm.close()
      if self.rank == 0:
        try:
          shm.unlink()
        except FileNotFoundError:
          pass
    self._segments = {}


def from_environment() -> SharedMemorySum | None:
  """The launcher's shared-memory sum for this process, or None outside that mode."""
  spec = os.environ.get(ENV_NAME)
  if not spec:
    return None
  prefix, rank, processes = spec.rsplit(":", 2)
  total = SharedMemorySum(prefix, int(rank), int(processes))
  atexit.register(total.close)
  return total

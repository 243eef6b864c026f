"""Where the default recipe's 2-device data-parallel step loses time on a 2-core CPU.

  python -m experiments.bench_dp_overhead            # ~3 minutes

The default config splits each batch of 12 over two CPU devices in one process
(lm/train/data_parallel.py). For the same model (bf16 matmul operands) this times:

  in_process_2_devices   the trainer's 2-device step, one process on both cores
  pinned_processes       two processes at once, each pinned to its own core and running
                         the 1-device step on half the batch, with no communication:
                         the floor a 2-core data-parallel step could reach
  unpinned_processes     the same two processes, not pinned
  shm_allreduce          two pinned processes summing a gradient-sized f32 vector once per
                         step of a jitted scan, through shared memory (jax.pure_callback)
  gloo_allreduce         the same sum as one jitted psum over jax.distributed's gloo
                         collectives (what the multi-process runner uses), per call

Each measurement is a separate set of processes, so their ratios carry this host's
drift: `--repeats` alternates the step measurements. Linux only (core pinning).
"""

import json
import os
import socket
import statistics
import subprocess
import sys
import time

from absl import app, flags

_ROLE = flags.DEFINE_enum("role", "main", ["main", "step", "shm", "gloo"],
                          "Internal: what a child process measures.")
_CORE = flags.DEFINE_integer("core", -1, "Internal: the core a child pins itself to (-1: none).")
_DEVICES = flags.DEFINE_integer("devices", 1, "Internal: CPU devices of a step child.")
_BATCH = flags.DEFINE_integer("batch", 6, "Internal: batch of a step child.")
_RANK = flags.DEFINE_integer("rank", 0, "Internal: process index of a collective child.")
_ADDRESS = flags.DEFINE_string("address", "", "Internal: shared-memory name or gloo port.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Alternations of the three step measurements.")
_ROUNDS = flags.DEFINE_integer("step_rounds", 12, "Rounds of 20 steps per step measurement.")

STEPS = 20
PARAMS = 809_856  # the default model's parameters: the vector the all-reduce sums
TIMEOUT_S = 120.0


def _child(role: str, core: int = -1, **kw) -> list[str]:
  args = [sys.executable, "-m", "experiments.bench_dp_overhead", f"--role={role}",
          f"--core={core}"]
  return args + [f"--{k}={v}" for k, v in kw.items()]


def _run_together(commands) -> list[dict]:
  """Starts the commands at once; each prints one JSON line last."""
  procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
           for c in commands]
  outs = []
  for p in procs:
    out, _ = p.communicate(timeout=600)
    if p.returncode:
      raise SystemExit(f"bench_dp_overhead: a child failed (rc {p.returncode}): {' '.join(p.args)}")
    outs.append(json.loads(out.strip().splitlines()[-1]))
  return outs


def _step_child():
  import jax
  jax.config.update("jax_num_cpu_devices", _DEVICES.value)
  from experiments.bench_train import SIZES, jax_runner
  run = jax_runner(dict(SIZES["default"], batch_size=_BATCH.value), "bfloat16", _DEVICES.value)
  ms = [1e3 * run(STEPS) / STEPS for _ in range(_ROUNDS.value)]
  print(json.dumps({"ms_per_step": round(statistics.median(ms), 2)}))


def _shm_child():
  """Sums a PARAMS-long vector with the other process once per scanned step."""
  from multiprocessing import resource_tracker, shared_memory

  import jax
  import jax.numpy as jnp
  import numpy as np
  n, rank = PARAMS, _RANK.value
  size = 64 + 2 * 2 * n * 4  # two counters, then [step parity, process, n] float32
  deadline = time.monotonic() + TIMEOUT_S
  while True:
    try:
      shm = shared_memory.SharedMemory(_ADDRESS.value, create=rank == 0, size=size)
      if rank:  # only the creator's tracker may unlink it (Python < 3.13 has no track=False)
        resource_tracker.unregister(shm._name, "shared_memory")  # noqa: SLF001
      break
    except FileNotFoundError:  # rank 1 waits for rank 0 to create it
      if time.monotonic() > deadline:
        raise
      time.sleep(0.01)
  counters = np.ndarray((2,), np.int64, shm.buf, 0)
  bufs = np.ndarray((2, 2, n), np.float32, shm.buf, 64)
  done = {"steps": 0}

  def allreduce(x):
    # Double-buffered by step parity: the peer reads buffer s % 2 before it can pass
    # step s + 1's wait, so this process cannot overwrite it while it is still read.
    s = done["steps"]
    done["steps"] += 1
    bufs[s % 2, rank] = x
    counters[rank] = s + 1
    limit = time.monotonic() + TIMEOUT_S
    while counters[1 - rank] < s + 1:
      if time.monotonic() > limit:
        raise TimeoutError("the other process stopped")
    return bufs[s % 2, 0] + bufs[s % 2, 1]

  @jax.jit
  def scan(x):
    def body(c, _):
      return jax.pure_callback(allreduce, jax.ShapeDtypeStruct((n,), jnp.float32), c * 0.5), None
    return jax.lax.scan(body, x, None, length=STEPS)[0]

  x = jnp.ones((n,), jnp.float32)
  scan(x).block_until_ready()
  ms = []
  for _ in range(20):
    start = time.perf_counter()
    scan(x).block_until_ready()
    ms.append(1e3 * (time.perf_counter() - start) / STEPS)
  ok = bool(np.allclose(np.asarray(scan(x)), 1.0))  # 0.5 + 0.5 each step
  shm.close()
  if rank == 0:
    time.sleep(1.0)
    shm.unlink()
  print(json.dumps({"ms_per_allreduce": round(statistics.median(ms), 3), "sum_ok": ok}))


def _gloo_child():
  import jax
  import numpy as np
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"127.0.0.1:{_ADDRESS.value}", num_processes=2,
                             process_id=_RANK.value)
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P
  mesh = Mesh(np.array(jax.devices()), ("d",))
  f = jax.jit(jax.shard_map(lambda v: jax.lax.psum(v, "d"), mesh=mesh, in_specs=P("d"),
                            out_specs=P("d")))
  x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("d")),
                                             np.ones((1, PARAMS), np.float32), (2, PARAMS))
  f(x).block_until_ready()
  ms = []
  for _ in range(30):
    start = time.perf_counter()
    f(x).block_until_ready()
    ms.append(1e3 * (time.perf_counter() - start))
  print(json.dumps({"ms_per_allreduce": round(statistics.median(ms), 3)}))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def main(argv):
  del argv
  if _CORE.value >= 0:  # before JAX starts, so every thread it creates inherits it
    os.sched_setaffinity(0, {_CORE.value})
  role = _ROLE.value
  if role != "main":
    {"step": _step_child, "shm": _shm_child, "gloo": _gloo_child}[role]()
    return
  cores = sorted(os.sched_getaffinity(0))
  if len(cores) < 2:
    raise SystemExit("bench_dp_overhead: needs at least 2 cores")
  c0, c1 = cores[:2]
  results = {"in_process_2_devices": [], "pinned_processes": [], "unpinned_processes": []}
  for _ in range(_REPEATS.value):
    (r,) = _run_together([_child("step", devices=2, batch=12, step_rounds=_ROUNDS.value)])
    results["in_process_2_devices"].append(r["ms_per_step"])
    pair = _run_together([_child("step", c, step_rounds=_ROUNDS.value) for c in (c0, c1)])
    results["pinned_processes"].append(max(p["ms_per_step"] for p in pair))
    pair = _run_together([_child("step", step_rounds=_ROUNDS.value) for _ in (c0, c1)])
    results["unpinned_processes"].append(max(p["ms_per_step"] for p in pair))
  for name, ms in results.items():
    print(json.dumps({"measure": name, "ms_per_step": statistics.median(ms), "runs": ms}))
  name = f"lm_bench_dp_{os.getpid()}"
  shm = _run_together([_child("shm", c, rank=i, address=name) for i, c in enumerate((c0, c1))])
  print(json.dumps({"measure": "shm_allreduce", "ms_per_allreduce": max(
      s["ms_per_allreduce"] for s in shm), "sum_ok": all(s["sum_ok"] for s in shm)}))
  port = _free_port()
  gloo = _run_together([_child("gloo", c, rank=i, address=port) for i, c in enumerate((c0, c1))])
  print(json.dumps({"measure": "gloo_allreduce",
                    "ms_per_allreduce": max(g["ms_per_allreduce"] for g in gloo)}))
  floor = statistics.median(results["pinned_processes"])
  projected = floor + max(s["ms_per_allreduce"] for s in shm)
  inproc = statistics.median(results["in_process_2_devices"])
  print(json.dumps({"measure": "projection", "pinned_plus_shm_ms": round(projected, 2),
                    "in_process_ms": inproc, "speedup": round(inproc / projected, 2)}))


if __name__ == "__main__":
  app.run(main)

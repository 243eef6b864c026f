"""Model FLOPs utilisation: model FLOPs per token, the device's measured matmul peak, MFU.

Model FLOPs follow PaLM (Chowdhery et al. 2022, appendix B): 6 per matmul weight per
token (forward 2, backward 4), counting the output projection onto the vocabulary, plus
12·L·H·Q·T for attention scores and weighted sums. The attention term is *not* halved
for causal masks (the masked half is computed anyway); embedding lookups, norms and
softmax are not counted. A MoE layer counts the weights a token uses (router, top-k
routed and shared experts), not all experts. Every family's count is in
lm/scaling/flops.py. MFU = tokens/s × model FLOPs per token / peak FLOP/s.

The peak is measured, not taken from a datasheet: a large square matmul in the run's
matmul dtype, timed on this machine's devices, cached in ~/.cache/lm/peak_flops.json
(`python -m experiments.bench_peak` remeasures it).
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lm",
                     "peak_flops.json")


def model_flops_per_token(family: str, model_config, seq_len: int, num_params: int, *,
                          target_len: int = 0, mtp_depth: int = 0,
                          mlm_positions: int | None = None) -> float:
  """PaLM-convention training FLOPs per token (lm/scaling/flops.py: every family's
  matmuls as computed, MoE counting the experts a token uses, plus MTP depths);
  6 x params for families without a formula (ViT, CLIP, captioning)."""
  from lm.scaling.flops import train_flops_per_token
  flops = train_flops_per_token(family, model_config, seq_len, target_len=target_len,
                                mtp_depth=mtp_depth, mlm_positions=mlm_positions)
  return 6.0 * num_params if flops is None else flops


def run_flops_per_token(config, task, num_params: int) -> float:
  """A training run's FLOPs per token, in the unit of its task's `tokens_per_step`:
  encoder-decoder tasks count source + target tokens (lengths from an eval batch), MTP
  tasks add their depths (`task_config.depth`), MLM batches with `mlm_positions` run
  the MLM head at those slots only."""
  target_len, seq_len, slots = 0, config.data.seq_len, None
  batch = task.eval_batches[0] if task.eval_batches else {}
  if config.family == "encdec" and batch:
    seq_len, target_len = batch["inputs"].shape[-1], batch["targets"].shape[-1]
  if "mlm_positions" in batch:
    slots = batch["mlm_positions"].shape[-1]
  return model_flops_per_token(config.family, config.model, seq_len, num_params,
                               target_len=target_len, mlm_positions=slots,
                               mtp_depth=getattr(config.task_config, "depth", 0) or 0)


def peak_dtype(matmul_dtype: str) -> str:
  """The dtype whose peak bounds a run: simulated FP8 multiplies in f32."""
  return "bfloat16" if matmul_dtype == "bfloat16" else "float32"


def _device_key(dtype: str) -> str:
  d = jax.devices()[0]
  return f"{d.platform}:{getattr(d, 'device_kind', '?')}:{jax.device_count()}:{dtype}"


def measure_peak_flops(dtype: str = "float32", size: int = 2048, repeats: int = 5) -> float:
  """Best-of-`repeats` FLOP/s of a size x size matmul on every device at once."""
  devices = jax.devices()
  n = len(devices)
  mesh = jax.sharding.Mesh(np.asarray(devices), ("d",))
  spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
  x = jax.device_put(jnp.ones((n, size, size), dtype), spec)
  f = jax.jit(lambda a: jnp.einsum("nij,njk->nik", a, a, preferred_element_type=jnp.float32))
  f(x).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    f(x).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * n * size ** 3 / best


def peak_flops(dtype: str = "float32", remeasure: bool = False) -> float:
  """The cached measured peak for this device kind and dtype (measured on first use)."""
  key = _device_key(dtype)
  cache = {}
  if os.path.exists(CACHE):
    try:
      with open(CACHE) as f:
        cache = json.load(f)
    except (OSError, ValueError):
      cache = {}
  if remeasure or key not in cache:
    cache[key] = measure_peak_flops(dtype)
    try:
      os.makedirs(os.path.dirname(CACHE), exist_ok=True)
      with open(CACHE + ".tmp", "w") as f:
        json.dump(cache, f, indent=1, sort_keys=True)
      os.replace(CACHE + ".tmp", CACHE)
    except OSError:
      pass  # a read-only home only costs a remeasurement next time
  return float(cache[key])

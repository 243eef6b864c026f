"""The MFU table and the scanned-layers comparison, on whatever backend JAX finds.

  python -m experiments.bench_mfu                         # both tables
  python -m experiments.bench_mfu --tables=mfu --steps=20 --batch=8
  python -m experiments.bench_mfu --tables=scan --depths=2,8,16
  # on a GPU: ~350M (24 x 1024) and ~1.2B (24 x 2048) decoders, bf16 and simulated FP8
  python -m experiments.bench_mfu --tables=mfu --layers=24 --widths=1024,2048 \
      --dtypes=bfloat16,fp8 --seq_len=1024 --batch=8

`mfu`: the measured matmul peak (one device, per dtype), then for GPTs of width
d = 128, 384, 512, 768 (6 layers, head dim 64, MLP 4d, seq 256) the train step's
tokens/s and MFU with f32 and bf16 matmul operands. `scan`: compile time and step time
of the unrolled vs the scanned block stack (model.scan_layers) at several depths.

Nothing here is CPU-specific: the peak is a timed matmul on the first device, and the
train step is the trainer's own (lm.train.step.make_multi_step, donated state) on
random tokens (no data pipeline), so it runs unchanged on a GPU.
"""

import json
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from lm.models.gpt import GPT, GPTConfig
from lm.objectives import causal_lm_loss
from lm.scaling.counting import param_counts
from lm.train import mfu
from lm.train.state import create_train_state
from lm.train.step import make_multi_step

_TABLES = flags.DEFINE_list("tables", ["mfu", "scan"], "Which tables: mfu, scan.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed optimizer steps per measurement.")
_STEPS_PER_CALL = flags.DEFINE_integer("steps_per_call", 5, "Steps scanned per jitted call.")
_BATCH = flags.DEFINE_integer("batch", 8, "Sequences per step.")
_SEQ = flags.DEFINE_integer("seq_len", 256, "Tokens per sequence.")
_WIDTHS = flags.DEFINE_list("widths", ["128", "384", "512", "768"], "Model widths d (mfu).")
_LAYERS = flags.DEFINE_integer("layers", 6, "Depth of the mfu table's models.")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"],
                            "Matmul operand dtypes (mfu): float32, bfloat16, fp8.")
_DEPTHS = flags.DEFINE_list("depths", ["2", "8", "16"], "Depths of the scan comparison.")
_SCAN_WIDTH = flags.DEFINE_integer("scan_width", 128, "Width of the scan comparison's models.")
_PEAK_SIZE = flags.DEFINE_integer("peak_size", 0, "Matmul size for the peak; 0: 2048 on CPU, "
                                  "8192 on accelerators.")
VOCAB = 65  # tiny Shakespeare's characters


def gpt_config(width: int, layers: int, seq_len: int, **kw) -> GPTConfig:
  return GPTConfig(vocab_size=VOCAB, num_layers=layers, num_heads=max(1, width // 64),
                   embed_dim=width, mlp_dim=4 * width, max_len=seq_len, **kw)


def measure_step(cfg: GPTConfig, batch: int, steps: int, steps_per_call: int) -> dict:
  """Compile time and steady-state time of the scanned, donated train step on one device."""
  model = GPT(cfg)
  tokens = jnp.zeros((1, cfg.max_len), jnp.int32)
  params = jax.jit(lambda: nn.meta.unbox(model.init(jax.random.key(0), tokens)["params"]))()
  tx = optax.adamw(1e-3)
  state = create_train_state(params, tx)
  multi_step = make_multi_step(causal_lm_loss(model), tx)
  data = np.random.default_rng(0).integers(0, VOCAB, (steps_per_call, batch, cfg.max_len + 1))
  batches = {"inputs": jnp.asarray(data[..., :-1], jnp.int32),
             "targets": jnp.asarray(data[..., 1:], jnp.int32)}
  rng = jax.random.key(0)
  start = time.perf_counter()
  state, m = multi_step(state, batches, rng)
  np.asarray(m["loss"])
  compile_s = time.perf_counter() - start
  calls = max(1, steps // steps_per_call)
  start = time.perf_counter()
  for _ in range(calls):
    state, m = multi_step(state, batches, rng)
    np.asarray(m["loss"])  # the trainer syncs on the losses each call too
  seconds = time.perf_counter() - start
  n = calls * steps_per_call
  return {"compile_s": compile_s, "ms_per_step": 1e3 * seconds / n,
          "tokens_per_sec": n * batch * cfg.max_len / seconds}


def peak_per_device(dtype: str) -> float:
  size = _PEAK_SIZE.value or (2048 if jax.devices()[0].platform == "cpu" else 8192)
  # measure_peak_flops runs on every device at once; the train step uses one.
  return mfu.measure_peak_flops(dtype, size=size, repeats=10) / jax.device_count()


def mfu_table():
  dtypes = {d: mfu.peak_dtype(d) for d in _DTYPES.value}
  # Measured before and after the table, the larger kept: on a shared machine a single
  # measurement can land in a busy moment and inflate every MFU.
  before = {p: peak_per_device(p) for p in set(dtypes.values())}
  rows = []
  for width in map(int, _WIDTHS.value):
    for dtype in _DTYPES.value:
      cfg = gpt_config(width, _LAYERS.value, _SEQ.value, matmul_dtype=dtype)
      r = measure_step(cfg, _BATCH.value, _STEPS.value, _STEPS_PER_CALL.value)
      r["flops"] = r["tokens_per_sec"] * mfu.model_flops_per_token("gpt", cfg, cfg.max_len, 0)
      print(json.dumps({"d": width, "matmul": dtype, **{k: round(v, 3) for k, v in r.items()}}),
            flush=True)
      rows.append((width, param_counts(cfg).total, dtype, r))
  after = {p: peak_per_device(p) for p in before}
  peaks = {p: max(before[p], after[p]) for p in before}
  print("| peak | before, GFLOP/s | after | used |\n| --- | --- | --- | --- |")
  for p in sorted(peaks):
    print(f"| {p} | {before[p] / 1e9:,.1f} | {after[p] / 1e9:,.1f} | {peaks[p] / 1e9:,.1f} |")
  print("| d | params | matmul | tokens/s | ms/step | model TFLOP/s | MFU |")
  print("| --- | --- | --- | --- | --- | --- | --- |")
  for width, params, dtype, r in rows:
    print(f"| {width} | {params / 1e6:.2f}M | {dtype} | {r['tokens_per_sec']:,.0f} | "
          f"{r['ms_per_step']:.1f} | {r['flops'] / 1e12:.3f} | "
          f"{100 * r['flops'] / peaks[dtypes[dtype]]:.1f}% |", flush=True)


def scan_table():
  print("| depth | layers | compile s | ms/step | tokens/s |")
  print("| --- | --- | --- | --- | --- |")
  for depth in map(int, _DEPTHS.value):
    for scan in (False, True):
      cfg = gpt_config(_SCAN_WIDTH.value, depth, _SEQ.value, scan_layers=scan)
      r = measure_step(cfg, _BATCH.value, _STEPS.value, _STEPS_PER_CALL.value)
      print(f"| {depth} | {'scanned' if scan else 'unrolled'} | {r['compile_s']:.1f} | "
            f"{r['ms_per_step']:.1f} | {r['tokens_per_sec']:,.0f} |", flush=True)


def main(argv):
  del argv
  d = jax.devices()[0]
  print(f"jax {jax.__version__} on {d.platform}:{getattr(d, 'device_kind', '?')}, "
        f"{jax.device_count()} device(s); batch {_BATCH.value} x seq {_SEQ.value}, "
        f"{_STEPS.value} timed steps, {_STEPS_PER_CALL.value} per call", flush=True)
  tables = {"mfu": mfu_table, "scan": scan_table}
  for name in _TABLES.value:
    if name not in tables:
      raise app.UsageError(f"--tables: unknown {name!r}; known: {sorted(tables)}")
    tables[name]()


if __name__ == "__main__":
  app.run(main)

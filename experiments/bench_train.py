"""Training throughput of the real train step, with the PyTorch reference in the same run.

  python -m experiments.bench_train            # default + larger config
  python -m experiments.bench_train --configs=default --rounds=30

For each model size it times the trainer's own pieces (grain batches -> scanned,
donated, jitted train step): on one device in f32 and with bf16 matmul operands, and
data-parallel over `--cpu_devices` CPU devices (lm/train/data_parallel.py, what the
default config runs). When torch is installed (`pip install torch==2.13.0`) it also
times the same model and optimizer in PyTorch, in f32 and under bf16 autocast.
The implementations take turns for `--rounds` short rounds, so a slow spell on a shared
machine hits all of them; each line reports the median round and, against PyTorch f32,
the median over rounds of the ratio within a round (`vs_torch_f32`): on a machine whose
speed drifts over seconds, that paired ratio is steadier than a ratio of medians.
"""

import importlib.util
import json
import statistics
import time

import flax.linen as nn
import jax
import numpy as np
from absl import app, flags

from lm.config import OptimConfig, ShardingConfig
from lm.data.pipeline import next_chunk, train_iterator
from lm.models.gpt import GPT, GPTConfig
from lm.objectives import causal_lm_loss
from lm.tasks.causal_lm import init_params
from lm.train import data_parallel
from lm.train.layout import Layout
from lm.train.optimizer import make_optimizer
from lm.train.state import create_train_state
from lm.train.step import make_multi_step

_STEPS = flags.DEFINE_integer("steps", 20, "Timed optimizer steps per round (large: / 10, "
                               "at least 10).")
_ROUNDS = flags.DEFINE_integer("rounds", 20, "Rounds; each implementation runs once per round "
                                "(large: / 5, at least 3).")
_CONFIGS = flags.DEFINE_list("configs", ["default", "large"], "Which sizes to run.")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", 2, "CPU devices for the data-parallel rows "
                                    "(the default config's sharding.cpu_devices).")
_TORCH = flags.DEFINE_bool("torch", True, "Also measure the PyTorch reference if installed.")

SIZES = {
    # The classic small CPU recipe (configs/shakespeare_char.py).
    "default": dict(num_layers=4, num_heads=4, embed_dim=128, seq_len=64, batch_size=12),
    "large": dict(num_layers=6, num_heads=6, embed_dim=384, seq_len=256, batch_size=8),
}
VOCAB = 65  # tiny Shakespeare's characters
STEPS_PER_CALL = 10  # the trainer's scan length between logs


def jax_runner(size: dict, matmul_dtype: str, devices: int):
  """A compiled trainer on `devices` CPU devices (1: the plain step); `run(steps)` -> seconds."""
  model_cfg = GPTConfig(vocab_size=VOCAB, num_layers=size["num_layers"],
                        num_heads=size["num_heads"], embed_dim=size["embed_dim"],
                        mlp_dim=4 * size["embed_dim"], max_len=size["seq_len"],
                        matmul_dtype=matmul_dtype)
  model = GPT(model_cfg)
  tx = make_optimizer(OptimConfig(), num_steps=10_000)
  state = create_train_state(nn.meta.unbox(init_params(model, size["seq_len"], seed=0)), tx)
  loss_fn = causal_lm_loss(model)
  if devices == 1:
    multi_step, put = make_multi_step(loss_fn, tx), lambda chunk: chunk
  else:  # as the trainer places it (lm/train/layout.py)
    layout = Layout.from_config(ShardingConfig(rules="dp"), jax.devices("cpu")[:devices])
    multi_step = data_parallel.make_multi_step(loss_fn, tx, layout.mesh,
                                               tuple(layout.rules["batch"]))
    state = jax.device_put(state, layout.replicated)
    put = lambda chunk: layout.put_batch(chunk, leading_dims=1)  # noqa: E731
  tokens = np.random.default_rng(0).integers(0, VOCAB, 200_000).astype(np.int32)
  data = train_iterator(tokens, size["seq_len"], size["batch_size"], seed=0)
  rng = jax.random.key(0)
  box = {"state": state, "chunk": next_chunk(data, STEPS_PER_CALL)}

  def run(steps):
    start = time.perf_counter()
    for _ in range(max(1, steps // STEPS_PER_CALL)):
      box["state"], m = multi_step(box["state"], put(box["chunk"]), rng)
      box["chunk"] = next_chunk(data, STEPS_PER_CALL)  # as the trainer: while the devices run
      np.asarray(m["loss"])  # the trainer syncs on the losses each call too
    return time.perf_counter() - start

  run.compile_s = run(STEPS_PER_CALL)
  run.params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
  return run


def torch_runners(size: dict) -> dict:
  if not _TORCH.value or importlib.util.find_spec("torch") is None:
    return {}
  from experiments import torch_reference
  kw = dict(vocab_size=VOCAB, **size, warmup=5)
  return {"torch f32": torch_reference.make_runner(**kw),
          "torch bf16 autocast": torch_reference.make_runner(**kw, autocast_bf16=True)}


def paired_ratio(ref_seconds, seconds) -> dict:
  """Median and quartiles over rounds of ref / this, both timed in the same round."""
  ratios = np.asarray(ref_seconds) / np.asarray(seconds)
  q25, q50, q75 = np.percentile(ratios, [25, 50, 75])
  return {"vs_torch_f32": round(float(q50), 2),
          "vs_torch_f32_quartiles": [round(float(q25), 2), round(float(q75), 2)]}


def main(argv):
  del argv
  jax.config.update("jax_num_cpu_devices", _CPU_DEVICES.value)
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, "
        f"{len(jax.devices())} device(s); interleaved rounds")
  for name in _CONFIGS.value:
    size = SIZES[name]
    steps, rounds = _STEPS.value, _ROUNDS.value
    if name != "default":  # ~40x the FLOPs per step
      steps, rounds = max(STEPS_PER_CALL, steps // 10), max(3, rounds // 5)
    n = _CPU_DEVICES.value
    runners = {"jax f32": jax_runner(size, "float32", 1),
               "jax bf16 matmul": jax_runner(size, "bfloat16", 1),
               f"jax f32, {n}-device data parallel": jax_runner(size, "float32", n),
               f"jax bf16 matmul, {n}-device data parallel": jax_runner(size, "bfloat16", n),
               **torch_runners(size)}
    seconds = {label: [] for label in runners}
    for _ in range(rounds):
      for label, run in runners.items():
        seconds[label].append(run(steps) / steps)
    ref = seconds.get("torch f32")
    for label, per_step in seconds.items():
      s = statistics.median(per_step)
      line = {"config": name, "impl": label, "ms_per_step": round(1e3 * s, 2),
              "tokens_per_sec": round(size["batch_size"] * size["seq_len"] / s),
              "rounds_ms": [round(1e3 * x, 1) for x in per_step]}
      if hasattr(runners[label], "compile_s"):
        line["compile_s"] = round(runners[label].compile_s, 2)
      if ref:
        line.update(paired_ratio(ref, per_step))
      print(json.dumps(line), flush=True)


if __name__ == "__main__":
  app.run(main)

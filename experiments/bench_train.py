"""Training throughput of the real train loop, with the PyTorch reference in the same run.

  python -m experiments.bench_train            # default + larger config
  python -m experiments.bench_train --steps=50 --configs=default

For each model size it times the trainer's own pieces (grain batches -> scanned,
donated, jitted train step) for f32 and bf16-operand matmuls, and, when torch is
installed (`pip install torch==2.13.0`), the same model and optimizer in PyTorch.
It prints tokens/s, ms/step, compile time and the ratio to PyTorch measured here.
"""

import importlib.util
import json
import time

import flax.linen as nn
import jax
import numpy as np
from absl import app, flags

from lm.config import OptimConfig
from lm.data.pipeline import next_chunk, train_iterator
from lm.models.gpt import GPT, GPTConfig
from lm.objectives import causal_lm_loss
from lm.tasks.causal_lm import init_params
from lm.train.optimizer import make_optimizer
from lm.train.state import create_train_state
from lm.train.step import make_multi_step

_STEPS = flags.DEFINE_integer("steps", 100, "Timed optimizer steps per measurement.")
_CONFIGS = flags.DEFINE_list("configs", ["default", "large"], "Which sizes to run.")
_TORCH = flags.DEFINE_bool("torch", True, "Also measure the PyTorch reference if installed.")

SIZES = {
    # The classic small CPU recipe (configs/shakespeare_char.py).
    "default": dict(num_layers=4, num_heads=4, embed_dim=128, seq_len=64, batch_size=12),
    "large": dict(num_layers=6, num_heads=6, embed_dim=384, seq_len=256, batch_size=8),
}
VOCAB = 65  # tiny Shakespeare's characters


def measure_jax(size: dict, matmul_dtype: str, steps: int, steps_per_call: int = 10) -> dict:
  model_cfg = GPTConfig(vocab_size=VOCAB, num_layers=size["num_layers"],
                        num_heads=size["num_heads"], embed_dim=size["embed_dim"],
                        mlp_dim=4 * size["embed_dim"], max_len=size["seq_len"],
                        matmul_dtype=matmul_dtype)
  model = GPT(model_cfg)
  tx = make_optimizer(OptimConfig(), num_steps=10_000)
  state = create_train_state(nn.meta.unbox(init_params(model, size["seq_len"], seed=0)), tx)
  multi_step = make_multi_step(causal_lm_loss(model), tx)
  tokens = np.random.default_rng(0).integers(0, VOCAB, 200_000).astype(np.int32)
  data = train_iterator(tokens, size["seq_len"], size["batch_size"], seed=0)
  rng = jax.random.key(0)

  start = time.perf_counter()
  state, m = multi_step(state, next_chunk(data, steps_per_call), rng)
  np.asarray(m["loss"])
  compile_s = time.perf_counter() - start
  calls = max(1, steps // steps_per_call)
  start = time.perf_counter()
  for _ in range(calls):
    state, m = multi_step(state, next_chunk(data, steps_per_call), rng)
    np.asarray(m["loss"])  # the trainer syncs on the losses each call too
  seconds = time.perf_counter() - start
  n = calls * steps_per_call
  params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
  return {"ms_per_step": 1e3 * seconds / n,
          "tokens_per_sec": n * size["batch_size"] * size["seq_len"] / seconds,
          "compile_s": compile_s, "params": params}


def measure_torch(size: dict, steps: int) -> dict | None:
  if importlib.util.find_spec("torch") is None:
    return None
  from experiments import torch_reference
  return torch_reference.measure(vocab_size=VOCAB, num_layers=size["num_layers"],
                                 num_heads=size["num_heads"], embed_dim=size["embed_dim"],
                                 seq_len=size["seq_len"], batch_size=size["batch_size"],
                                 steps=steps, warmup=5)


def main(argv):
  del argv
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, "
        f"{len(jax.devices())} device(s)")
  for name in _CONFIGS.value:
    size = SIZES[name]
    steps = _STEPS.value if name == "default" else max(10, _STEPS.value // 10)
    results = {"f32": measure_jax(size, "float32", steps),
               "bf16_matmul": measure_jax(size, "bfloat16", steps)}
    ref = measure_torch(size, steps) if _TORCH.value else None
    for label, r in results.items():
      line = {"config": name, "impl": f"jax {label}", **{k: round(v, 3) if isinstance(v, float)
                                                           else v for k, v in r.items()}}
      if ref:
        line["speedup_vs_torch"] = round(r["tokens_per_sec"] / ref["tokens_per_sec"], 2)
      print(json.dumps(line))
    if ref:
      print(json.dumps({"config": name, "impl": f"torch {ref['torch_version']}",
                        "ms_per_step": round(ref["ms_per_step"], 3),
                        "tokens_per_sec": round(ref["tokens_per_sec"], 1),
                        "params": ref["params"]}))


if __name__ == "__main__":
  app.run(main)

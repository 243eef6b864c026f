"""Context extension by RoPE scaling: train short, evaluate and fine-tune long (kind "long_context").

  python -m experiments.run --config=configs/long_context.py --workdir=/tmp/long_context

WORKDIR/base is an ordinary train_lm run at `data.seq_len`. Each method of
`extension.methods` (none | linear | ntk | yarn, lm/layers/positions.py RopeScaling,
factor = target_len / seq_len) is evaluated at `extension.target_len` without
training; each of `extension.finetune_methods` is then fine-tuned there for a few
steps (WORKDIR/ft_<method>: config.json, metrics.jsonl, checkpoints/, tokenizer, so
`--mode=sample` works on it) and evaluated again. Evaluation reports the validation
perplexity of every position bucket. WORKDIR/metrics.jsonl has one row per evaluated
model; summary.json and table.md hold the table.
"""

import dataclasses
import json
import math
import os
import shutil
import time

import jax
import numpy as np
import optax

from lm import config as config_lib
from lm import workdir as workdir_lib
from lm.data.pipeline import eval_batches, next_chunk, train_iterator
from lm.errors import UserError
from lm.layers.positions import ROPE_SCALINGS
from lm.models.gpt import GPT
from lm.objectives import causal_lm_loss
from lm.tasks.causal_lm import prepare_data
from lm.train.checkpoint import Checkpointer
from lm.train.metrics import MetricsWriter, write_json
from lm.train.optimizer import make_optimizer
from lm.train.state import create_train_state
from lm.train.step import make_multi_step
from lm.train.trainer import train


@dataclasses.dataclass(frozen=True)
class ExtensionConfig:
  target_len: int = 2048
  methods: str = "none,linear,ntk,yarn"
  finetune_methods: str = "none,linear,yarn"
  finetune_steps: int = 100
  finetune_batch_size: int = 4
  finetune_lr: float = 3e-4
  eval_windows: int = 24
  buckets: str = "256,512,1024,2048"

  def method_list(self, field: str) -> list[str]:
    names = [m.strip() for m in getattr(self, field).split(",") if m.strip()]
    for name in names:
      if name not in ROPE_SCALINGS:
        raise UserError(f"extension.{field}: unknown RoPE scaling {name!r}; known: "
                        f"{ROPE_SCALINGS}")
    return names

  @property
  def bucket_ends(self) -> list[int]:
    return [int(b) for b in self.buckets.split(",")]


@dataclasses.dataclass(frozen=True)
class LongContextConfig:
  base: config_lib.ExperimentConfig
  extension: ExtensionConfig


def parse_config(values: dict) -> LongContextConfig:
  values = dict(values)
  extension = config_lib._build(ExtensionConfig, dict(values.pop("extension", {})), "extension")
  base = config_lib.from_dict({**values, "kind": "train_lm"})
  if base.family != "gpt" or base.model.position != "rope" or base.task != "causal_lm":
    raise UserError("long_context needs a causal GPT with model.position=rope")
  ends = extension.bucket_ends
  if ends != sorted(ends) or ends[-1] != extension.target_len:
    raise UserError(f"extension.buckets must increase and end at target_len="
                    f"{extension.target_len}, got {extension.buckets}")
  if extension.target_len <= base.data.seq_len:
    raise UserError(f"extension.target_len={extension.target_len} must exceed data.seq_len="
                    f"{base.data.seq_len}")
  extension.method_list("methods")
  extension.method_list("finetune_methods")
  return LongContextConfig(base, extension)


def extended_model_config(model_config, method: str, target_len: int, trained_len: int):
  return dataclasses.replace(
      model_config, max_len=target_len, rope_scaling=method,
      rope_scaling_factor=target_len / trained_len if method != "none" else 1.0,
      rope_original_max_len=trained_len if method != "none" else 0)


def position_losses(model, params, batches) -> np.ndarray:
  """Mean next-token loss at each position 0..T-1 over the (weighted) windows."""
  @jax.jit
  def sums(params, batch):
    logits_BTV, _ = model.apply({"params": params}, batch["inputs"])
    losses_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, batch["targets"])
    return (losses_BT * batch["weights"]).sum(0), batch["weights"].sum(0)

  total, count = 0.0, 0.0
  for batch in batches:
    s, c = sums(params, batch)
    total, count = total + np.asarray(s, np.float64), count + np.asarray(c, np.float64)
  return total / np.maximum(count, 1.0)


def bucket_perplexities(losses_T: np.ndarray, ends: list[int]) -> dict[str, float]:
  out, start = {}, 0
  for end in ends:
    out[f"ppl_{start}_{end}"] = float(math.exp(losses_T[start:end].mean()))
    start = end
  return out


def finetune(config, params, train_ids, tokenizer_dir: str, workdir: str, steps: int,
             batch_size: int, lr: float):
  """A short fine-tune at the new length: the standard scanned train step and optimizer."""
  os.makedirs(workdir, exist_ok=True)
  optim = config_lib.OptimConfig(lr=lr, min_lr=lr / 10, warmup_steps=min(10, steps))
  run_config = dataclasses.replace(
      config, optim=optim, data=dataclasses.replace(config.data, seq_len=config.model.max_len,
                                                    batch_size=batch_size),
      train=dataclasses.replace(config.train, num_steps=steps, checkpoint_every=steps))
  config_lib.save_json(run_config, os.path.join(workdir, workdir_lib.CONFIG))
  for name in (workdir_lib.TOKENIZER, workdir_lib.TOKEN_PRIOR):
    shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(workdir, name))
  model = GPT(run_config.model)
  tx = make_optimizer(optim, steps)
  multi_step = make_multi_step(causal_lm_loss(model), tx)
  state = create_train_state(params, tx)
  data = train_iterator(train_ids, run_config.data.seq_len, batch_size, run_config.data.seed)
  writer = MetricsWriter(workdir)
  per_call = min(10, steps)
  start = time.perf_counter()
  step = 0
  while step < steps:
    num = min(per_call, steps - step)
    state, metrics = multi_step(state, next_chunk(data, num), jax.random.key(0))
    step += num
    writer.write(step, {"train_loss": float(np.mean(np.asarray(metrics["loss"])))})
  writer.close()
  checkpointer = Checkpointer(workdir, keep=1)
  checkpointer.save(steps, state, data.get_state())
  checkpointer.close()
  return run_config, state.params, time.perf_counter() - start


def run(config: LongContextConfig, workdir: str) -> dict:
  start_time = time.time()
  workdir_lib.ensure_writable(workdir)
  with open(os.path.join(workdir, workdir_lib.CONFIG), "w") as f:
    json.dump({"base": config_lib.to_dict(config.base),
               "extension": dataclasses.asdict(config.extension)}, f, indent=2, sort_keys=True)
  ext = config.extension
  base_dir = os.path.join(workdir, "base")
  base_summary = train(config.base, base_dir)
  trained = workdir_lib.load_trained(base_dir)
  trained_len = trained.config.data.seq_len
  _, train_ids, val_ids = prepare_data(trained.config, base_dir)
  batches = eval_batches(val_ids, ext.target_len, ext.eval_windows)[:1]
  rows = []

  def evaluate(name: str, method: str, model_config, params, finetune_steps: int):
    losses_T = position_losses(GPT(model_config), params, batches)
    row = {"model": name, "rope_scaling": method, "finetune_steps": finetune_steps,
           **bucket_perplexities(losses_T, ext.bucket_ends),
           "ppl_all": float(math.exp(losses_T.mean()))}
    rows.append(row)
    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in row.items()))

  for method in ext.method_list("methods"):
    evaluate(f"base+{method}", method,
             extended_model_config(trained.config.model, method, ext.target_len, trained_len),
             trained.params, 0)
  finetune_seconds = {}
  for method in ext.method_list("finetune_methods"):
    model_config = extended_model_config(trained.config.model, method, ext.target_len,
                                         trained_len)
    run_config, params, seconds = finetune(
        dataclasses.replace(trained.config, model=model_config), trained.params, train_ids,
        base_dir, os.path.join(workdir, f"ft_{method}"), ext.finetune_steps,
        ext.finetune_batch_size, ext.finetune_lr)
    finetune_seconds[method] = seconds
    evaluate(f"ft_{method}", method, run_config.model, params, ext.finetune_steps)

  writer = MetricsWriter(workdir)
  for i, row in enumerate(rows):
    writer.write(i, row)
  writer.close()
  table = markdown_table(rows, ext.bucket_ends)
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write(table)
  summary = {"rows": rows, "base_val_loss": base_summary["val_loss"],
             "trained_len": trained_len, "target_len": ext.target_len,
             "eval_tokens": int(sum(float(b["weights"].sum()) for b in batches)),
             "finetune_seconds": finetune_seconds, "wall_time_s": time.time() - start_time,
             "val_loss": base_summary["val_loss"], "train_loss": base_summary["train_loss"],
             "steps": base_summary["steps"], "params": base_summary["params"],
             "tokens_per_sec": base_summary["tokens_per_sec"]}
  write_json(os.path.join(workdir, "summary.json"), summary)
  print(table)
  print(f"summary written to {workdir}/summary.json")
  return summary


def markdown_table(rows: list[dict], ends: list[int]) -> str:
  starts = [0] + ends[:-1]
  head = ["model", "RoPE scaling", "fine-tune steps"] + [f"ppl {s}-{e}" for s, e in
                                                          zip(starts, ends)] + ["ppl all"]
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for r in rows:
    cells = [r["model"], r["rope_scaling"], str(r["finetune_steps"])]
    cells += [f"{r[f'ppl_{s}_{e}']:.3f}" for s, e in zip(starts, ends)]
    cells.append(f"{r['ppl_all']:.3f}")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


__all__ = ["parse_config", "run"]

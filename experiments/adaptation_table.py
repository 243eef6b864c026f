"""The adaptation table: every method on the same pretrained checkpoint and task.

  python -m experiments.run --config=configs/adaptation_table.py --workdir=/tmp/adapt

For each method of lm/adapt/methods.py, a fine-tuning run of configs/adapt_speakers.py
in WORKDIR/<method> (speaker classification from the frozen, or for `full` the whole,
pretrained model), then linear probes on the frozen features for each pooling
(lm/eval/probing.py). Without `init_from` the default char GPT is pretrained first in
WORKDIR/base. Writes WORKDIR/table.md and table.json: method, trainable parameters,
fraction, validation accuracy, wall time.
"""

import dataclasses
import json
import os
import time

from lm import config as config_lib
from lm.errors import UserError

METHOD_ORDER = ("full", "lora", "prefix", "prompt", "adapters", "bitfit", "head")
# task -> (config module of one adaptation run, the summary metric the table reports)
TASKS = {"speakers": ("configs.adapt_speakers", "val_accuracy"),
         "addition": ("configs.adapt_addition", "greedy_accuracy")}


@dataclasses.dataclass(frozen=True)
class TableConfig:
  init_from: str = ""  # a pretrained gpt or bert workdir; "" = pretrain the default GPT
  task: str = "speakers"  # speakers (classification) | addition (generation, 2 -> 3 digits)
  methods: tuple[str, ...] = METHOD_ORDER
  steps: int = 600  # fine-tuning steps per method
  probes: bool = True  # also linear probes on frozen features
  smoke: bool = False  # tiny runs (tests)
  kind: str = "adaptation_table"

  def __post_init__(self):
    from lm.adapt.methods import METHODS
    unknown = sorted(set(self.methods) - set(METHODS))
    if unknown or not self.methods:
      raise UserError(f"unknown adaptation methods {unknown}; known: {sorted(METHODS)}")
    if self.task not in TASKS:
      raise UserError(f"task={self.task!r}; choose one of {sorted(TASKS)}")
    if self.task == "addition" and not self.init_from:
      raise UserError("task=addition needs init_from: an addition SFT workdir "
                      "(configs/sft_addition.py:digits=2)")
    if self.steps <= 0:
      raise UserError(f"steps must be positive, got {self.steps}")


def parse_config(values: dict) -> TableConfig:
  values = dict(values)
  values["methods"] = tuple(values.get("methods", METHOD_ORDER))
  return config_lib._build(TableConfig, values, "adaptation_table")


def _pretrain(workdir: str, smoke: bool) -> str:
  from configs.shakespeare_char import recipe as get_config
  from lm.train.trainer import train
  base = os.path.join(workdir, "base")
  train(config_lib.from_dict(get_config("smoke" if smoke else None).to_dict()), base)
  return base


def _row(name: str, trainable: int, fraction: float, accuracy: float, seconds: float) -> dict:
  return {"method": name, "trainable_params": trainable, "trainable_fraction": fraction,
          "val_accuracy": accuracy, "train_time_s": seconds}


def markdown(rows: list[dict], base: str, family: str, task: str) -> str:
  title = {"speakers": "Speaker classification (8 speakers, chance 0.125; val accuracy)",
           "addition": "3-digit addition from a 2-digit model (greedy exact match, 512 "
                       "held-out problems)"}[task]
  lines = [f"{title}, from `{base}` ({family}).", "",
           "| method | trainable params | fraction | accuracy | train time (s) |",
           "|---|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['method']} | {r['trainable_params']:,} | "
                 f"{100 * r['trainable_fraction']:.3f}% | {r['val_accuracy']:.3f} | "
                 f"{r['train_time_s']:.0f} |")
  return "\n".join(lines) + "\n"


def run(config: TableConfig, workdir: str) -> list[dict]:
  import importlib

  from lm.adapt.methods import method as get_method
  module, metric = TASKS[config.task]
  adapt_config = importlib.import_module(module).get_config
  from lm.train.trainer import train
  os.makedirs(workdir, exist_ok=True)
  base = config.init_from or _pretrain(workdir, config.smoke)
  with open(os.path.join(base, "config.json")) as f:
    family = json.load(f)["family"]
  rows = []
  for name in config.methods:
    if name == "head" and config.task != "speakers":
      continue  # generation has no task head: a frozen LM would not change
    try:
      get_method(name, family)
    except UserError as e:
      print(f"skipping {name}: {e}")
      continue
    arg = f"method={name},init_from={base},steps={config.steps}" + (",smoke" if config.smoke
                                                                       else "")
    summary = train(config_lib.from_dict(adapt_config(arg).to_dict()),
                    os.path.join(workdir, name))
    rows.append(_row(name, summary["trainable_params"], summary["trainable_fraction"],
                     summary[metric], summary["wall_time_s"]))
  if config.probes and config.task == "speakers":
    from lm.eval.probing import probe_workdir
    start = time.time()
    probes = probe_workdir(base)
    seconds = (time.time() - start) / 2
    # The fraction of the full classifier (backbone + head), as the `full` run counts it.
    full = [r for r in rows if r["method"] == "full"]
    total = (full[0]["trainable_params"] if full else
             rows[0]["trainable_params"] / rows[0]["trainable_fraction"] if rows else 0)
    for pooling in ("last", "cls", "mean"):
      if pooling in probes:
        p = probes[pooling]
        head = p["feature_dim"] * probes["num_classes"] + probes["num_classes"]
        rows.append(_row(f"linear probe ({pooling})", head, head / total if total else 0.0,
                         p["accuracy"], seconds))
  table = markdown(rows, os.path.abspath(base), family, config.task)
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write(table)
  with open(os.path.join(workdir, "table.json"), "w") as f:
    json.dump({"base": os.path.abspath(base), "family": family, "rows": rows}, f, indent=2)
  print(table)
  return rows

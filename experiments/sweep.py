"""Runs a scaling sweep: every planned run trained in turn, resumable, gathered into a table.

  python -m experiments.run --config=configs/scaling_sweep.py --workdir=runs/scaling_sweep

Finished runs (summary.json at the planned step count) are skipped, an interrupted
run resumes from its checkpoint, so rerunning the command continues the sweep. After
each run a progress line gives the runs done, the elapsed time and an ETA; at the end
WORKDIR/results.jsonl and WORKDIR/results.md hold one row per run, and
WORKDIR/curves.json the training curves (for the training-curve envelope).
"""

import contextlib
import dataclasses
import json
import os
import time

from lm import config as config_lib
from lm.errors import UserError
from lm.scaling import sweep as sweep_lib
from lm.train.metrics import write_json, write_lines
from lm.train.trainer import train

SWEEP_KEYS = {f.name for f in dataclasses.fields(sweep_lib.SweepConfig)} - {"base"}


def parse_config(values: dict) -> sweep_lib.SweepConfig:
  """The config dict -> SweepConfig: `sweep` holds the grid, the rest is the base LM config."""
  values = dict(values)
  if "sweep" not in values:
    raise UserError("a sweep config needs a 'sweep' section (models, tokens or flops)")
  grid = dict(values.pop("sweep"))
  unknown = sorted(set(grid) - SWEEP_KEYS)
  if unknown:
    raise UserError(f"unknown config key sweep.{unknown[0]}; known keys: {sorted(SWEEP_KEYS)}")
  values["kind"] = "train_lm"
  config_lib.from_dict(values)  # the base config must itself be valid
  grid["models"] = tuple(dict(m) for m in grid.get("models", ()))
  for key in ("tokens", "flops"):
    grid[key] = tuple(grid.get(key, ()))
  sweep = sweep_lib.SweepConfig(base=values, **grid)
  sweep_lib.plan(sweep)  # every run's config must be valid too: fail before training any
  return sweep


def _train_quietly(config_values: dict, workdir: str) -> dict:
  """Trains one run; its per-eval lines go to WORKDIR/train.log, not the sweep's output."""
  with open(os.path.join(workdir, "train.log"), "a") as log, contextlib.redirect_stdout(log):
    return train(config_lib.from_dict(config_values), workdir)


def run(sweep: sweep_lib.SweepConfig, workdir: str) -> list[dict]:
  runs = sweep_lib.plan(sweep)
  os.makedirs(workdir, exist_ok=True)
  finished = {r.name for r in runs if sweep_lib.check_plan(workdir, r)}
  todo = [r for r in runs if r.name not in finished]
  print(f"sweep {sweep.name}: {len(runs)} runs, {len(finished)} already finished, "
        f"{len(todo)} to train ({sum(r.flops_6nd for r in todo):.3g} FLOPs = 6ND)")
  start, timed = time.time(), []
  for i, planned in enumerate(todo):
    directory = sweep_lib.run_dir(workdir, planned)
    sweep_lib.write_plan(workdir, planned)
    run_start = time.time()
    summary = _train_quietly(planned.config, directory)
    seconds = time.time() - run_start
    timed.append((planned.flops_6nd, seconds))
    eta = sweep_lib.eta_seconds(timed, [r.flops_6nd for r in todo[i + 1:]])
    print(f"[{len(finished) + i + 1}/{len(runs)}] {planned.name}: N={planned.non_embedding_params:,}"
          f" D={planned.tokens:,} val_loss {summary['val_loss']:.4f} in {seconds:.0f}s | "
          f"elapsed {sweep_lib.format_duration(time.time() - start)}, "
          f"ETA {sweep_lib.format_duration(eta)}", flush=True)
  rows = gather(sweep, workdir, runs)
  print(f"results: {os.path.join(workdir, 'results.md')}")
  return rows


def gather(sweep: sweep_lib.SweepConfig, workdir: str, runs=None) -> list[dict]:
  """Writes results.jsonl, results.md and curves.json from every finished run."""
  runs = runs or sweep_lib.plan(sweep)
  rows = [row for r in runs if (row := sweep_lib.result_row(workdir, r)) is not None]
  write_lines(os.path.join(workdir, "results.jsonl"), [json.dumps(r) + "\n" for r in rows])
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(f"# {sweep.name}: {len(rows)} of {len(runs)} runs\n\n")
    f.write(sweep_lib.markdown_table(rows))
  curves = {r.name: {"non_embedding_params": r.non_embedding_params,
                     "curve": sweep_lib.training_curve(workdir, r)} for r in runs}
  write_json(os.path.join(workdir, "curves.json"), curves)
  mismatched = [r["name"] for r in rows if r["params"] != r["params_formula"]]
  if mismatched:
    print(f"warning: parameter formula differs from the param tree for {mismatched}")
  return rows

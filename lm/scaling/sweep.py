"""A sweep's plan and bookkeeping: the grid of runs, which are done, ETA, the results table.

A sweep config names a base language-model config (the usual `data`, `model`,
`optim`, `train`, `sample` sections), a list of model sizes (each a few dotted
overrides such as `model.num_layers` and `optim.lr`) and budgets: either token
counts, crossed with every size, or FLOP budgets (C = 6 N D, N non-embedding), where
each size whose run would take between `min_steps` and `max_steps` steps is trained
for C / (6 N) tokens (an IsoFLOP profile). Every run is an ordinary workdir under
`WORKDIR/runs/<name>`, trained by `lm.train.trainer.train`.
"""

import copy
import dataclasses
import json
import math
import os

from lm import config as config_lib
from lm.errors import UserError
from lm.scaling import counting

PLAN_FILE = "sweep_run.json"  # in each run's workdir: the config the sweep planned for it


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  base: dict  # a plain LM config dict (data, model, optim, train, sample, family)
  models: tuple  # of dicts: dotted overrides per size, e.g. {"model.num_layers": 2}
  tokens: tuple = ()  # token budgets crossed with every size
  flops: tuple = ()  # or FLOP budgets C = 6 N D: an IsoFLOP profile per budget
  min_steps: int = 100  # IsoFLOP: sizes outside [min_steps, max_steps] are skipped
  max_steps: int = 5000
  warmup_fraction: float = 0.05  # warmup steps as a fraction of each run's steps
  min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
  name: str = "sweep"

  def __post_init__(self):
    if not self.models:
      raise UserError("sweep.models is empty: list at least one model size")
    if bool(self.tokens) == bool(self.flops):
      raise UserError("a sweep needs exactly one of sweep.tokens (a grid) or sweep.flops "
                      "(IsoFLOP profiles)")
    if any(t <= 0 for t in (*self.tokens, *self.flops)):
      raise UserError("sweep budgets (tokens, flops) must be positive")
    if not 0 <= self.warmup_fraction < 1 or not 0 <= self.min_lr_ratio <= 1:
      raise UserError("sweep.warmup_fraction must be in [0, 1) and min_lr_ratio in [0, 1]")
    if not 0 < self.min_steps <= self.max_steps:
      raise UserError(f"need 0 < sweep.min_steps <= sweep.max_steps, got {self.min_steps}, "
                      f"{self.max_steps}")


@dataclasses.dataclass(frozen=True)
class PlannedRun:
  name: str
  size: str  # the model size's name, shared by every budget
  config: dict  # the run's full LM config dict
  tokens: int  # training tokens = steps x batch x seq_len
  non_embedding_params: int
  flops_6nd: float  # 6 N D
  flops_kaplan: float  # (6 N + 6 L T d_attn) D
  budget: float  # the budget this run belongs to (tokens or FLOPs)


def _set_dotted(values: dict, key: str, value):
  *path, leaf = key.split(".")
  node = values
  for part in path:
    if not isinstance(node.get(part), dict):
      raise UserError(f"sweep override {key!r}: the base config has no section {part!r}")
    node = node[part]
  if leaf not in node:
    raise UserError(f"sweep override {key!r}: unknown key {leaf!r}; known: {sorted(node)}")
  node[leaf] = value


def human(x: float) -> str:
  """250000 -> '250k', 1e12 -> '1T' (for run names and tables)."""
  for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(x) >= scale:
      return f"{x / scale:.3g}{unit}"
  return f"{x:.3g}"


def size_name(overrides: dict) -> str:
  if "name" in overrides:
    return str(overrides["name"])
  layers, width = overrides.get("model.num_layers"), overrides.get("model.embed_dim")
  if layers is None or width is None:
    raise UserError(f"sweep model {overrides}: give a 'name' or model.num_layers and "
                    f"model.embed_dim")
  return f"L{layers}_D{width}"


def _run_config(sweep: SweepConfig, overrides: dict, steps: int) -> dict:
  values = copy.deepcopy(sweep.base)
  values["kind"] = "train_lm"
  for key, value in overrides.items():
    if key != "name":
      _set_dotted(values, key, value)
  lr = values["optim"]["lr"]
  values["optim"]["min_lr"] = lr * sweep.min_lr_ratio
  values["optim"]["warmup_steps"] = max(1, round(sweep.warmup_fraction * steps))
  train = values["train"]
  train["num_steps"] = steps
  train["eval_every"] = steps  # one evaluation, at the end
  train["checkpoint_every"] = min(train.get("checkpoint_every", steps), steps)
  train["log_every"] = train.get("steps_per_call", config_lib.TrainConfig.steps_per_call)
  return values


def plan(sweep: SweepConfig) -> list[PlannedRun]:
  """Every run of the sweep, in order: budgets outer, sizes inner (cheap runs first)."""
  runs = []
  for budget in sweep.tokens or sweep.flops:
    for overrides in sweep.models:
      probe = config_lib.from_dict(_run_config(sweep, overrides, 1))
      tokens_per_step = probe.data.batch_size * probe.data.seq_len
      n = counting.param_counts(probe.model).non_embedding
      tokens = budget if sweep.tokens else budget / (6 * n)
      # Whole scans of train.steps_per_call steps: one compiled train step per run.
      per_call = probe.train.steps_per_call
      steps = per_call * max(1, round(tokens / (tokens_per_step * per_call)))
      if sweep.flops and not sweep.min_steps <= steps <= sweep.max_steps:
        continue
      values = _run_config(sweep, overrides, steps)
      config = config_lib.from_dict(values)  # checks every value of the run's config
      tokens = steps * tokens_per_step
      label = f"tok{human(budget)}" if sweep.tokens else f"C{human(budget)}"
      name = f"{label}_{size_name(overrides)}"
      fpt = counting.kaplan_flops_per_token(config.model, config.data.seq_len)
      runs.append(PlannedRun(name, size_name(overrides), values, tokens, n, 6.0 * n * tokens,
                             fpt * tokens, float(budget)))
  names = [r.name for r in runs]
  if len(set(names)) != len(names):
    raise UserError(f"sweep run names collide: {sorted({n for n in names if names.count(n) > 1})}")
  if not runs:
    raise UserError("the sweep plans no runs: widen sweep.min_steps/max_steps or the budgets")
  return runs


def run_dir(workdir: str, run: PlannedRun) -> str:
  return os.path.join(workdir, "runs", run.name)


def _read_json(path: str):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def check_plan(workdir: str, run: PlannedRun) -> bool:
  """True if the run finished; a UserError if its workdir was planned differently."""
  directory = run_dir(workdir, run)
  saved = _read_json(os.path.join(directory, PLAN_FILE))
  if saved is not None and not _same_plan(saved, run.config):
    raise UserError(f"{directory} was made by a sweep with another config for this run; "
                    f"use a new --workdir or delete that run")
  summary = _read_json(os.path.join(directory, "summary.json"))
  return bool(saved) and summary is not None and \
      summary.get("steps") == run.config["train"]["num_steps"]


def _same_plan(saved: dict, planned: dict) -> bool:
  """Equal as typed configs: a key the code gained since, left at its default, still matches."""
  try:
    return config_lib.from_dict(saved) == config_lib.from_dict(planned)
  except UserError:  # the saved plan names a key this code no longer has
    return False


def write_plan(workdir: str, run: PlannedRun):
  directory = run_dir(workdir, run)
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, PLAN_FILE), "w") as f:
    json.dump(run.config, f, indent=2, sort_keys=True)


def eta_seconds(done: list[tuple[float, float]], remaining_flops: list[float]) -> float:
  """Seconds left, from (flops, seconds) of the runs timed so far: t = a + b * flops.

  Per-run overhead (startup, compilation, evaluation) dominates small runs and compute
  dominates big ones, so a line through the timed runs predicts both; while the timed
  runs' FLOPs span less than a factor 2 the slope is not determined, and time is taken
  proportional to FLOPs.
  """
  if not remaining_flops:
    return 0.0
  if not done:
    return float("nan")
  flops, seconds = zip(*done)
  if max(flops) >= 2 * min(flops):
    mean_f, mean_s = sum(flops) / len(flops), sum(seconds) / len(seconds)
    var = sum((f - mean_f) ** 2 for f in flops)
    b = max(0.0, sum((f - mean_f) * (s - mean_s) for f, s in zip(flops, seconds)) / var)
    a = max(0.0, mean_s - b * mean_f)
  else:
    a, b = 0.0, sum(seconds) / sum(flops)
  return sum(a + b * f for f in remaining_flops)


def format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"


def result_row(workdir: str, run: PlannedRun) -> dict | None:
  """One row of the results table, from a finished run's summary.json and config.json."""
  directory = run_dir(workdir, run)
  summary = _read_json(os.path.join(directory, "summary.json"))
  saved = _read_json(os.path.join(directory, "config.json"))
  if summary is None or saved is None:
    return None
  config = config_lib.from_dict(saved)
  m = config.model
  counts = counting.param_counts(m)
  return {
      "name": run.name, "size": run.size, "budget": run.budget,
      "num_layers": m.num_layers, "embed_dim": m.embed_dim, "num_heads": m.num_heads,
      "mlp_dim": m.mlp_dim, "aspect_ratio": m.embed_dim / m.num_layers, "lr": config.optim.lr,
      "params": summary["params"], "params_formula": counts.total,
      "non_embedding_params": counts.non_embedding, "tokens": run.tokens,
      "steps": summary["steps"], "flops_6nd": run.flops_6nd, "flops_kaplan": run.flops_kaplan,
      "val_loss": summary["val_loss"], "train_loss": summary["train_loss"],
      "wall_time_s": summary.get("wall_time_s"), "tokens_per_sec": summary.get("tokens_per_sec"),
  }


def training_curve(workdir: str, run: PlannedRun) -> list[dict]:
  """(step, tokens_seen, train_loss) rows of a run's metrics.jsonl."""
  path = os.path.join(run_dir(workdir, run), "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [{"step": r["step"], "tokens_seen": r.get("tokens_seen"), "train_loss": r["train_loss"]}
          for r in rows if "train_loss" in r]


TABLE_COLUMNS = ("name", "num_layers", "embed_dim", "non_embedding_params", "tokens", "steps",
                 "flops_6nd", "lr", "val_loss", "train_loss", "wall_time_s")


def markdown_table(rows: list[dict], columns=TABLE_COLUMNS) -> str:
  def cell(value):
    if isinstance(value, float):
      return f"{value:.4f}" if abs(value) < 100 else human(value)
    if isinstance(value, int) and value >= 10_000:
      return human(value)
    return str(value)
  lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
  lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
  return "\n".join(lines) + "\n"

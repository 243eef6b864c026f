"""Run outputs: `metrics.jsonl` (one JSON object per log/eval step) and TensorBoard events."""

import json
import math
import os

from tensorboardX import SummaryWriter


def _jsonable(value):
  value = float(value) if not isinstance(value, (int, str)) else value
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN/inf literals
  return value


def _truncate_after(path: str, step: int):
  """Drops rows past `step`: a resumed run rewrites what the killed run logged after
  its last checkpoint, so every step appears once."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    rows = [line for line in f if line.strip()]
  keep = [line for line in rows if json.loads(line)["step"] <= step]
  if len(keep) != len(rows):
    write_lines(path, keep)


class MetricsWriter:

  def __init__(self, workdir: str, resume_step: int = 0):
    path = os.path.join(workdir, "metrics.jsonl")
    _truncate_after(path, resume_step)
    self._jsonl = open(path, "a")
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict):
    record = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    for name, value in record.items():
      if name != "step" and isinstance(value, (int, float)):
        self._tb.add_scalar(name, value, step)

  def close(self):
    self._jsonl.close()
    self._tb.close()


def write_lines(path: str, lines: list[str]):
  """Atomic replace: a crash leaves the old file or the new one, never half of one."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(lines)
  os.replace(tmp, path)


def write_json(path: str, obj: dict):
  write_lines(path, [json.dumps(obj, indent=2, sort_keys=True) + "\n"])

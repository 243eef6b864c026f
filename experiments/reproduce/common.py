"""What every reproduction script shares: where results live and how they are written."""

import json
import os
import platform

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def hardware() -> str:
  """One line naming the machine: accelerator kind and count, else the CPU cores."""
  import jax
  device = jax.devices()[0]
  if device.platform == "cpu":
    return f"{os.cpu_count()}-core CPU ({platform.machine()})"
  return f"{len(jax.devices())}x {device.device_kind}"


def write_result(name: str, result: dict, out: str = "") -> str:
  path = out or os.path.join(RESULTS_DIR, f"{name}.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=2, sort_keys=True)
    f.write("\n")
  print(f"wrote {path}")
  return path

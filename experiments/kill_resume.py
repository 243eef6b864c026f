"""Exact-resume harness: SIGKILL a training run at random steps, rerun the same command,
and compare the final parameters (bitwise) and the loss curve with an uninterrupted run.

  python -m experiments.kill_resume --trials=10 --workdir=/tmp/kill_resume

Each trial starts `python -m experiments.run` on the smoke config (a small corpus,
a metrics row every step and a checkpoint every few), waits until the run has logged
a random step, then kills it with SIGKILL: after a random 0-50 ms more in even
trials, and as soon as orbax's temporary directory of the next checkpoint appears
(inside a save) in odd ones. Then it reruns the same command until it finishes. The
trial passes when every array of the final train state (parameters, optimizer state,
step) equals the reference run's bit for bit and every metrics.jsonl row has the
same train and val loss. Exit status 0 iff all pass.
tests/test_kill_resume.py runs two trials (slow); docs/reliability.md has the results.
"""

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
from absl import flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/shakespeare_char.py:smoke"
TMP_MARKER = ".orbax-checkpoint-tmp"  # orbax writes a step here, then renames it



def _define_flags():
  """Only for the command line: tests import this module next to experiments.run."""
  flags.DEFINE_integer("trials", 10, "Independent kill-and-resume trials.")
  flags.DEFINE_integer("kills_per_trial", 1, "SIGKILLs per trial before it may finish.")
  flags.DEFINE_integer("num_steps", 30, "Training steps of every run.")
  flags.DEFINE_integer("checkpoint_every", 4, "Steps between checkpoints.")
  flags.DEFINE_integer("seed", 0, "Seeds the kill times.")
  flags.DEFINE_string("workdir", "/tmp/kill_resume", "Scratch directory (emptied).")


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One training command: everything but the workdir."""
  corpus: str
  num_steps: int = 30
  checkpoint_every: int = 4
  cache_dir: str | None = None  # a shared JAX compilation cache makes reruns faster

  def command(self, workdir: str) -> list[str]:
    return [sys.executable, "-m", "experiments.run", f"--config={CONFIG}",
            f"--workdir={workdir}", f"--config.data.path={self.corpus}",
            f"--config.train.num_steps={self.num_steps}", "--config.train.log_every=1",
            "--config.train.steps_per_call=1", f"--config.train.eval_every={self.num_steps // 2}",
            f"--config.train.checkpoint_every={self.checkpoint_every}",
            "--config.train.keep_checkpoints=2", "--config.sample.max_new_tokens=8"]

  def env(self) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if not f.startswith("--xla_force_host_platform_device_count"))
    if self.cache_dir:
      env.update(JAX_COMPILATION_CACHE_DIR=self.cache_dir,
                 JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return env


def make_corpus(path: str, num_chars: int = 20_000) -> str:
  with open(os.path.join(REPO_ROOT, "data", "tinyshakespeare.txt"), encoding="utf-8") as f:
    text = f.read(num_chars)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return path


def run(spec: RunSpec, workdir: str, timeout: float = 600) -> subprocess.CompletedProcess:
  return subprocess.run(spec.command(workdir), cwd=REPO_ROOT, env=spec.env(),
                        capture_output=True, text=True, timeout=timeout)


def logged_steps(workdir: str) -> int:
  """Rows in metrics.jsonl (one per step here: log_every=1)."""
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      return sum(1 for line in f if line.endswith("\n"))
  except FileNotFoundError:
    return 0


def saving_now(workdir: str) -> bool:
  """True while orbax's temporary directory for a step exists (a save in progress)."""
  try:
    return any(TMP_MARKER in name for name in os.listdir(os.path.join(workdir, "checkpoints")))
  except FileNotFoundError:
    return False


def start_and_kill(spec: RunSpec, workdir: str, should_kill, delay_s: float = 0.0,
                   timeout: float = 600, poll_s: float = 0.001) -> dict:
  """Starts the run and SIGKILLs it once `should_kill(workdir)` holds (+ `delay_s`).

  Returns {killed, saving (orbax's temporary directory existed after the kill),
  logged (metrics rows at the kill), returncode, stderr}.
  """
  os.makedirs(workdir, exist_ok=True)
  err_path = os.path.join(os.path.dirname(os.path.abspath(workdir)),
                          os.path.basename(workdir) + ".err")
  with open(err_path, "w") as err:
    proc = subprocess.Popen(spec.command(workdir), cwd=REPO_ROOT, env=spec.env(),
                            stdout=subprocess.DEVNULL, stderr=err)
    try:
      deadline = time.monotonic() + timeout
      while proc.poll() is None and not should_kill(workdir) and time.monotonic() < deadline:
        time.sleep(poll_s)
      if delay_s:
        time.sleep(delay_s)
      killed = proc.poll() is None
      if killed:
        proc.send_signal(signal.SIGKILL)
    finally:
      proc.wait()
  with open(err_path) as f:
    stderr = f.read()
  return {"killed": killed, "saving": saving_now(workdir), "logged": logged_steps(workdir),
          "returncode": proc.returncode, "stderr": stderr}


def read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def final_state(workdir: str) -> dict[str, np.ndarray]:
  """Every array of the newest checkpoint's train state (params, optimizer state, step),
  read back raw: no config or model needed, so the comparison is of the bytes saved."""
  import jax
  import orbax.checkpoint as ocp

  from lm.train.checkpoint import Checkpointer
  checkpointer = Checkpointer(workdir, create=False)
  step = checkpointer.latest_step()
  checkpointer.close()
  tree = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step),
                                                         "state"))
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def differences(workdir: str, reference: str) -> list[str]:
  """What differs from the reference run: the train state bitwise, then the loss curve."""
  out = []
  got, want = final_state(workdir), final_state(reference)
  if got.keys() != want.keys():
    return [f"state entries differ: {sorted(got.keys() ^ want.keys())}"]
  for name in want:
    if got[name].dtype != want[name].dtype or got[name].tobytes() != want[name].tobytes():
      out.append(f"{name} differs (max |diff| "
                 f"{np.max(np.abs(got[name].astype(np.float64) - want[name])):.3g})")
  curve = lambda rows: [(r["step"], r.get("train_loss"), r.get("val_loss")) for r in rows]
  got_curve, want_curve = curve(read_metrics(workdir)), curve(read_metrics(reference))
  if got_curve != want_curve:
    first = next((i for i, (a, b) in enumerate(zip(got_curve, want_curve)) if a != b),
                 min(len(got_curve), len(want_curve)))
    out.append(f"loss curve differs from row {first}: "
               f"{got_curve[first:first + 1]} vs {want_curve[first:first + 1]}")
  return out


_RESUMED = re.compile(r"resuming from .* at step (\d+)")


def trial(spec: RunSpec, workdir: str, reference: str, rng: np.random.Generator,
          kills: int = 1, in_save: bool = False) -> dict:
  """Kills a run `kills` times at random logged steps, resumes it, compares with `reference`.

  `in_save`: kill at the first checkpoint save after the random step, while orbax's
  temporary directory exists, instead of after a random 0-50 ms.
  """
  shutil.rmtree(workdir, ignore_errors=True)
  events = []
  for _ in range(kills):
    first = logged_steps(workdir) + 1
    if first >= spec.num_steps:
      break
    target = int(rng.integers(first, spec.num_steps))
    if in_save:
      should_kill, delay = (lambda w, t=target: logged_steps(w) >= t and saving_now(w)), 0.0
    else:
      should_kill, delay = (lambda w, t=target: logged_steps(w) >= t), float(rng.uniform(0, 0.05))
    event = start_and_kill(spec, workdir, should_kill, delay, poll_s=0.0005)
    if event["returncode"] not in (0, -signal.SIGKILL):
      raise RuntimeError(f"run failed before the kill:\n{event['stderr']}")
    events.append({k: event[k] for k in ("killed", "saving", "logged")} | {"target": target})
  proc = run(spec, workdir)
  if proc.returncode != 0:
    raise RuntimeError(f"the resumed run failed:\n{proc.stdout}\n{proc.stderr}")
  resumed = _RESUMED.search(proc.stdout)
  return {"kills": events, "resumed_at": int(resumed.group(1)) if resumed else 0,
          "differences": differences(workdir, reference)}


def run_trials(root: str, trials: int, kills: int = 1, num_steps: int = 30,
               checkpoint_every: int = 4, seed: int = 0, log=print) -> list[dict]:
  shutil.rmtree(root, ignore_errors=True)
  os.makedirs(root)
  spec = RunSpec(make_corpus(os.path.join(root, "corpus.txt")), num_steps, checkpoint_every,
                 cache_dir=os.path.join(root, "jax_cache"))
  reference = os.path.join(root, "reference")
  proc = run(spec, reference)
  if proc.returncode != 0:
    raise RuntimeError(f"the reference run failed:\n{proc.stdout}\n{proc.stderr}")
  rng = np.random.default_rng(seed)
  results = []
  for i in range(trials):
    # Every other trial aims its kills inside a checkpoint save.
    result = trial(spec, os.path.join(root, f"trial_{i}"), reference, rng, kills,
                   in_save=i % 2 == 1)
    results.append(result)
    kills_text = ", ".join(
        f"step {e['logged']}{' during a save' if e['saving'] else ''}"
        if e["killed"] else "finished before the kill" for e in result["kills"])
    log(f"trial {i}: killed at {kills_text}; resumed at step {result['resumed_at']}; "
        f"{'bitwise identical' if not result['differences'] else result['differences']}")
  return results


def main():
  from absl import logging
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  f = flags.FLAGS
  if f.trials < 1 or f.kills_per_trial < 1 or f.checkpoint_every < 1 or f.num_steps < 2:
    from lm.errors import UserError
    raise UserError("--trials, --kills_per_trial, --checkpoint_every must be >= 1 and "
                    "--num_steps >= 2")
  results = run_trials(f.workdir, f.trials, f.kills_per_trial, f.num_steps, f.checkpoint_every,
                       f.seed)
  passed = sum(not r["differences"] for r in results)
  during_save = sum(e["saving"] for r in results for e in r["kills"])
  print(f"{passed}/{len(results)} trials bitwise identical to the uninterrupted run "
        f"({during_save} kills landed during a checkpoint save)")
  with open(os.path.join(f.workdir, "results.json"), "w") as out:
    json.dump(results, out, indent=1)
  sys.exit(0 if passed == len(results) else 1)


if __name__ == "__main__":
  from experiments import hygiene_cli
  _define_flags()
  hygiene_cli.run(main)

"""End-to-end tests of the command-line runner (`python -m experiments.run`).

Every CLI call is a subprocess, run exactly as a user would. One tiny run (smoke
config, 20 steps, checkpoints at 10 and 20, a 4 KB corpus) is trained once per
module; sampling, scoring, resuming and the error paths use it or copies of it.
The subprocesses share a JAX compilation cache and run a few at a time (see `runs`).
"""

import concurrent.futures
import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG = "configs/shakespeare_char.py:smoke"
NUM_STEPS = 20
CLI_TIMEOUT_S = 300
WORKERS = 3  # concurrent CLI subprocesses: each spends seconds importing, single-threaded
SCORE_TEXT = "All:\nWe know't, we know't."
BAD_FLAGS = [  # (flag, words the error line must contain)
    ("--config.model.nonexistent=3", ["nonexistent"]),
    ("--config.model.embed_dimm=3", ["embed_dimm", "embed_dim"]),
    ("--config.nosection.x=1", ["nosection"]),
    ("--config.train.num_steps=abc", ["num_steps", "abc"]),
    ("--no_such_flag=1", ["no_such_flag"]),
]
_JAX_CACHE = {}  # filled by the `runs` fixture: env vars for a shared compilation cache


# --------------------------------------------------------------------------- helpers


def _env() -> dict:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
  env["JAX_PLATFORMS"] = "cpu"
  # A user's run sees one CPU device, not the 8 fake ones conftest.py sets up.
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags)
  env.update(_JAX_CACHE)
  return env


def _cmd(*args) -> list[str]:
  return [sys.executable, "-m", "experiments.run", *map(str, args)]


def run_cli(*args, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess:
  return subprocess.run(_cmd(*args), cwd=REPO_ROOT, env=_env(), capture_output=True, text=True,
                        timeout=timeout)


def train_args(workdir, corpus, *extra, num_steps: int = NUM_STEPS) -> list[str]:
  return [f"--config={CONFIG}", f"--workdir={workdir}", f"--config.data.path={corpus}",
          f"--config.train.num_steps={num_steps}", "--config.train.eval_every=10",
          "--config.train.checkpoint_every=10", "--config.train.log_every=10", *extra]


def _show(proc: subprocess.CompletedProcess) -> str:
  return f"rc={proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


def assert_ok(proc: subprocess.CompletedProcess):
  assert proc.returncode == 0, _show(proc)


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
  """Status 2, exactly one non-empty stderr line, `error: ...` naming the problem."""
  assert proc.returncode == 2, _show(proc)
  assert "Traceback" not in proc.stderr + proc.stdout, _show(proc)
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, _show(proc)
  line = lines[0]
  assert line.startswith("error: "), _show(proc)
  for needle in needles:
    assert needle.lower() in line.lower(), f"{needle!r} not in {line!r}"
  return line


def read_metrics(workdir) -> list[dict]:
  with open(Path(workdir) / "metrics.jsonl") as f:
    return [json.loads(line) for line in f if line.strip()]


def tree_digest(directory) -> dict[str, str]:
  """relative path -> sha256 of every file under `directory` (and '/' for each dir)."""
  directory = Path(directory)
  digest = {}
  for path in sorted(directory.rglob("*")):
    rel = str(path.relative_to(directory))
    digest[rel] = "/" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
  return digest


def copy_workdir(src, dst) -> Path:
  shutil.copytree(src, dst)
  return Path(dst)


def params_of(workdir):
  from lm.workdir import load_trained
  return load_trained(str(workdir)).params


def assert_same_params(actual, expected):
  import jax
  flat_a = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(actual)[0]}
  flat_e = {jax.tree_util.keystr(k): v
            for k, v in jax.tree_util.tree_flatten_with_path(expected)[0]}
  assert flat_a.keys() == flat_e.keys()
  for name in flat_e:  # exact: same programs, same data order, same RNG folds
    np.testing.assert_allclose(np.asarray(flat_a[name]), np.asarray(flat_e[name]), rtol=0,
                               atol=0, err_msg=name)


# --------------------------------------------------------------------------- fixtures
#
# Each CLI call costs seconds of imports, so the calls run in a small thread pool
# of subprocesses: `runs` starts the reference run, the run to be killed and every
# call that needs no trained workdir at once, then, once the reference run is done,
# every call that reads (a copy of) its workdir. Tests wait on their own call.


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
  """~4 KB of Shakespeare: the characters of the default prompt 'ROMEO:' included."""
  text = (REPO_ROOT / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:4000]
  assert set("ROMEO:") <= set(text)
  path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
  path.write_text(text, encoding="utf-8")
  return path


def _train_and_kill(workdir: Path, corpus: Path) -> dict:
  """Starts the same 20-step run as the reference and SIGKILLs it as soon as checkpoints/10 is complete.

  Orbax writes a step to a temporary directory and renames it, so `checkpoints/10`
  appearing means that checkpoint is whole. If the kill lands too late (the run got
  to checkpoints/20 first), that checkpoint is deleted to simulate a crash during
  its save; the caller reports which happened.
  """
  workdir.parent.mkdir(parents=True, exist_ok=True)
  ckpt10 = workdir / "checkpoints" / "10"
  with open(workdir.parent / "killed.out", "w") as out, \
       open(workdir.parent / "killed.err", "w") as err:
    proc = subprocess.Popen(_cmd(*train_args(workdir, corpus)), cwd=REPO_ROOT, env=_env(),
                            stdout=out, stderr=err)
    try:
      deadline = time.monotonic() + CLI_TIMEOUT_S
      while not ckpt10.is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
      if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    finally:
      proc.wait()
  ckpt20 = workdir / "checkpoints" / "20"
  killed_in_time = proc.returncode == -signal.SIGKILL and not ckpt20.exists()
  if ckpt20.exists():
    shutil.rmtree(ckpt20)
  return {"returncode": proc.returncode, "killed_in_time": killed_in_time,
          "stderr": (workdir.parent / "killed.err").read_text()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus):
  root = tmp_path_factory.mktemp("runs")
  _JAX_CACHE.update(JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  ref = root / "ref"
  jobs = {}
  pool = concurrent.futures.ThreadPoolExecutor(WORKERS)
  try:
    submit = lambda name, *args: jobs.__setitem__(name, pool.submit(run_cli, *args))
    reference = pool.submit(run_cli, *train_args(ref, corpus))
    killed = pool.submit(_train_and_kill, root / "killed" / "run", corpus)

    # Calls that need no trained workdir.
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.txt").write_bytes(b"")
    (bad / "latin1.txt").write_bytes(b"\xff\xfe\x00abc some more text here\n" * 50)
    for kind, path in [("missing", bad / "nonexistent" / "corpus.txt"),
                       ("empty", bad / "empty.txt"), ("not_utf8", bad / "latin1.txt")]:
      submit(f"corpus_{kind}", *train_args(bad / f"run_{kind}", path))
    for i, (flag, _) in enumerate(BAD_FLAGS):
      submit(f"flag_{i}", f"--config={CONFIG}", f"--workdir={bad / 'run_flag'}", flag)
    submit("config_arg", f"--config={CONFIG},bogus", f"--workdir={bad / 'run_arg'}")
    submit("config_file", "--config=configs/no_such_config.py", f"--workdir={bad / 'run_cf'}")

    jobs["reference"] = reference
    reference_proc = reference.result()
    if reference_proc.returncode != 0:
      pytest.fail(f"the reference run failed:\n{_show(reference_proc)}")

    # Calls that read the trained workdir, or a copy of it they may change.
    copies = {name: copy_workdir(ref, root / name / "run")
              for name in ("crash_during_save", "rerun_finished", "shape", "nan", "optim")}
    shutil.rmtree(copies["crash_during_save"] / "checkpoints" / "20")
    no_ckpt = root / "no_ckpt"
    no_ckpt.mkdir()
    for name in ("config.json", "tokenizer.json", "token_prior.json"):
      shutil.copy(ref / name, no_ckpt / name)
    snapshots = {name: tree_digest(copies[name]) for name in ("rerun_finished", "shape", "nan")}

    sample = [f"--workdir={ref}", "--mode=sample"]
    submit("sample_greedy", *sample, "--prompt=First Citizen:", "--temperature=0",
           "--max_new_tokens=20", "--seed=1")
    submit("sample_uniform", *sample, "--prompt=All:", "--temperature=inf",
           "--max_new_tokens=15", "--seed=3")
    submit("score", f"--workdir={ref}", "--mode=score", f"--text={SCORE_TEXT}")
    submit("crash_during_save", *train_args(copies["crash_during_save"], corpus))
    submit("rerun_finished", *train_args(copies["rerun_finished"], corpus))
    submit("shape", *train_args(copies["shape"], corpus, "--config.model.embed_dim=32"))
    # grad_clip=0 drops the clipping transform: another optimizer-state structure.
    submit("optim", *train_args(copies["optim"], corpus, "--config.optim.grad_clip=0",
                                num_steps=30))
    # 20 more steps at lr=1e30 after resuming at step 20: diverges after a good checkpoint.
    submit("nan", *train_args(copies["nan"], corpus, "--config.optim.lr=1e30", num_steps=40))
    submit("sample_no_ckpt", f"--workdir={no_ckpt}", "--mode=sample", "--prompt=All:")
    submit("sample_bad_prompt", *sample, "--prompt=ROMEO: é")

    killed_result = killed.result()
    submit("resume_after_kill", *train_args(root / "killed" / "run", corpus))
  except BaseException:
    pool.shutdown(wait=True, cancel_futures=True)
    raise
  yield {"root": root, "ref": ref, "corpus": corpus, "jobs": jobs, "copies": copies,
         "snapshots": snapshots, "no_ckpt": no_ckpt, "killed": killed_result}
  pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def trained(runs):
  """The uninterrupted 20-step run (checkpoints at 10 and 20). Treat as read-only."""
  return {"workdir": runs["ref"], "corpus": runs["corpus"],
          "proc": runs["jobs"]["reference"].result()}


def result(runs, name) -> subprocess.CompletedProcess:
  return runs["jobs"][name].result()


# --------------------------------------------------------------------------- training outputs


def test_train_writes_every_run_file(trained):
  workdir = trained["workdir"]
  for name in ("config.json", "metrics.jsonl", "summary.json", "tokenizer.json"):
    assert (workdir / name).is_file(), name
  assert any((workdir / "tensorboard").glob("events.out.tfevents.*"))
  entries = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  assert entries == ["10", "20"], entries  # no temporary directories left behind
  assert "summary written to" in trained["proc"].stdout


def test_default_config_runs_data_parallel_on_two_cpu_devices(trained):
  # The default config sets sharding.cpu_devices=2: the runner starts JAX with two CPU
  # devices (the subprocess has no device-count flag of its own) and the batch is split.
  summary = json.loads((trained["workdir"] / "summary.json").read_text())
  assert summary["devices"] == 2


def test_metrics_jsonl(trained):
  records = read_metrics(trained["workdir"])
  steps = [r["step"] for r in records]
  assert steps == [10, 20]  # log_every = eval_every = 10
  for r in records:
    assert math.isfinite(r["train_loss"]) and r["train_loss"] > 0
    assert math.isfinite(r["val_loss"]) and r["val_loss"] > 0  # every step here is an eval step


def test_summary_consistent_with_metrics(trained):
  with open(trained["workdir"] / "summary.json") as f:
    summary = json.load(f)
  for key in ("val_loss", "train_loss", "steps", "params", "tokens_per_sec", "wall_time_s"):
    assert key in summary, key
  last = read_metrics(trained["workdir"])[-1]
  assert summary["steps"] == NUM_STEPS == last["step"]
  assert summary["val_loss"] == last["val_loss"]
  assert summary["train_loss"] == last["train_loss"]
  assert isinstance(summary["params"], int) and summary["params"] > 0
  assert summary["wall_time_s"] > 0
  assert summary["tokens_per_sec"] is None or summary["tokens_per_sec"] > 0


def test_config_json_reloads(trained):
  from lm import config as config_lib
  config = config_lib.load_json(str(trained["workdir"] / "config.json"))
  assert config.train.num_steps == NUM_STEPS
  assert config.train.checkpoint_every == 10
  assert config.data.path == str(trained["corpus"])
  assert config.model.vocab_size == len(set(trained["corpus"].read_text(encoding="utf-8")))


# --------------------------------------------------------------------------- sample and score


def test_sample_greedy_ignores_seed_and_keeps_prompt(runs, trained):
  proc = result(runs, "sample_greedy")  # --temperature=0 --seed=1
  assert_ok(proc)
  assert proc.stdout.startswith("First Citizen:")
  text = proc.stdout[:-1]  # print() adds one newline
  assert len(text) == len("First Citizen:") + 20  # char tokens: one character each
  # The same greedy decode in-process with another seed prints the same text.
  from experiments.sample import sample
  assert sample(str(trained["workdir"]), prompt="First Citizen:", temperature=0.0,
                max_new_tokens=20, seed=2) == [text]


def test_sample_infinite_temperature(runs):
  proc = result(runs, "sample_uniform")
  assert_ok(proc)
  assert proc.stdout.startswith("All:")
  assert len(proc.stdout[:-1]) == len("All:") + 15


def test_score_in_process_chain_rule(trained, capsys):
  from experiments.sample import score
  text = "First Citizen:\nSpeak, speak."
  got = score(str(trained["workdir"]), text)
  out = capsys.readouterr().out
  assert len(got["tokens"]) == len(got["token_log_probs"]) == len(text)
  assert all(lp <= 0 and math.isfinite(lp) for lp in got["token_log_probs"])
  assert sum(got["token_log_probs"]) == pytest.approx(got["log_prob"], rel=1e-6, abs=1e-6)
  assert f"{got['log_prob']:.4f}" in out


def test_score_in_process_bad_text(trained):
  from experiments.sample import score
  from lm.errors import UserError
  with pytest.raises(UserError, match="empty"):
    score(str(trained["workdir"]), "")
  with pytest.raises(UserError, match="vocabulary"):
    score(str(trained["workdir"]), "price: 5€")


_TOKEN_LINE = re.compile(r"^\s*(\d+)\s+(.+?)\s+(-?\d+\.\d{4})(\s+\(first token.*\))?$")
_TOTAL_LINE = re.compile(r"^log p\(x_1\.\.(\d+)\) = (-?\d+\.\d+) nats")


def test_score_cli_output_sums_to_total(runs):
  proc = result(runs, "score")
  assert_ok(proc)
  token_values, totals = [], []
  for line in proc.stdout.splitlines():
    if m := _TOTAL_LINE.match(line):
      totals.append((int(m.group(1)), float(m.group(2))))
    elif m := _TOKEN_LINE.match(line):
      token_values.append(float(m.group(3)))
  assert len(totals) == 1, proc.stdout
  n, total = totals[0]
  assert n == len(SCORE_TEXT) == len(token_values), proc.stdout
  # Each printed value is rounded to 4 decimals.
  assert sum(token_values) == pytest.approx(total, abs=1e-4 * (n + 1)), proc.stdout


# --------------------------------------------------------------------------- resume


def test_resume_after_kill_matches_uninterrupted_run(runs, trained):
  killed = runs["killed"]
  print(f"killed before checkpoint 20 was written: {killed['killed_in_time']}")
  assert killed["returncode"] in (-signal.SIGKILL, 0), killed["stderr"]
  workdir = runs["root"] / "killed" / "run"
  proc = result(runs, "resume_after_kill")
  assert_ok(proc)
  assert "resuming" in proc.stdout and "at step 10" in proc.stdout, _show(proc)
  records = read_metrics(workdir)
  assert any(r["step"] > 10 for r in records)
  assert records[-1]["step"] == NUM_STEPS
  reference = read_metrics(trained["workdir"])[-1]
  assert records[-1]["train_loss"] == reference["train_loss"]
  assert records[-1]["val_loss"] == reference["val_loss"]
  with open(workdir / "summary.json") as f:
    assert json.load(f)["steps"] == NUM_STEPS
  assert_same_params(params_of(workdir), params_of(trained["workdir"]))


def test_resume_after_crash_during_last_save(runs, trained):
  """Deterministic interruption: step 20's metrics row was written, its checkpoint not."""
  proc = result(runs, "crash_during_save")
  assert_ok(proc)
  assert "resuming" in proc.stdout and "at step 10" in proc.stdout, _show(proc)
  workdir = runs["copies"]["crash_during_save"]
  assert_same_params(params_of(workdir), params_of(trained["workdir"]))


def test_resume_does_not_repeat_metrics_rows(runs):
  """After resuming at 10, metrics.jsonl must not hold step 20 twice."""
  assert_ok(result(runs, "crash_during_save"))
  steps = [r["step"] for r in read_metrics(runs["copies"]["crash_during_save"])]
  assert steps == [10, 20], f"metrics.jsonl steps after resume: {steps}"


def test_rerun_of_finished_run_changes_nothing(runs):
  proc = result(runs, "rerun_finished")
  assert_ok(proc)
  assert "at step 20" in proc.stdout
  workdir = runs["copies"]["rerun_finished"]
  before, after = runs["snapshots"]["rerun_finished"], tree_digest(workdir)
  ckpts = lambda d: {k: v for k, v in d.items() if k.startswith("checkpoints")}
  assert ckpts(after) == ckpts(before)
  assert [r["step"] for r in read_metrics(workdir)] == [10, 20]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kind,needles", [
    ("missing", ["not found", "nonexistent/corpus.txt"]),
    ("empty", ["empty", "empty.txt"]),
    ("not_utf8", ["utf-8", "latin1.txt", "0xff"]),
])
def test_bad_corpus(runs, kind, needles):
  assert_user_error(result(runs, f"corpus_{kind}"), *needles)
  ckpts = runs["root"] / "bad" / f"run_{kind}" / "checkpoints"
  assert not ckpts.exists() or not any(ckpts.iterdir())


@pytest.mark.parametrize("i", range(len(BAD_FLAGS)), ids=[f for f, _ in BAD_FLAGS])
def test_bad_flag(runs, i):
  assert_user_error(result(runs, f"flag_{i}"), *BAD_FLAGS[i][1])


def test_bad_config_arg(runs):
  assert_user_error(result(runs, "config_arg"), "bogus")


def test_missing_config_file(runs):
  assert_user_error(result(runs, "config_file"), "no_such_config.py")


def test_sample_without_checkpoint(runs):
  assert_user_error(result(runs, "sample_no_ckpt"), "no checkpoint", str(runs["no_ckpt"]))


def test_sample_prompt_outside_vocab(runs):
  assert_user_error(result(runs, "sample_bad_prompt"), "'é'", "vocabulary")


def test_checkpoint_of_other_model_shape(runs):
  line = assert_user_error(result(runs, "shape"), "does not match", "checkpoint")
  assert "32" in line  # names the mismatched size
  before, after = runs["snapshots"]["shape"], tree_digest(runs["copies"]["shape"])
  # Checkpoints, config and tokenizer are untouched (tensorboard may gain an empty file).
  keep = lambda d: {k: v for k, v in d.items() if not k.startswith("tensorboard")}
  assert keep(after) == keep(before)


def test_checkpoint_of_other_optimizer_structure(runs):
  """Resuming with grad_clip=0 (no clipping transform) must resume or fail in one line."""
  proc = result(runs, "optim")
  if proc.returncode == 0:
    assert "resuming" in proc.stdout, _show(proc)
  else:
    assert_user_error(proc, "checkpoint")


def test_nan_loss_stops_without_overwriting_checkpoint(runs):
  proc = result(runs, "nan")
  assert proc.returncode != 0, _show(proc)
  assert "Traceback" not in proc.stderr + proc.stdout, _show(proc)
  # The progress bar may precede it on stderr; the error is the last line.
  last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
  assert last.startswith("error: "), _show(proc)
  m = re.search(r"loss became (nan|inf|-inf) at step (\d+)", last)
  assert m, last
  assert 20 < int(m.group(2)) <= 40
  assert "step 20" in last  # the last good checkpoint
  workdir = runs["copies"]["nan"]
  before, after = runs["snapshots"]["nan"], tree_digest(workdir)
  ckpts = lambda d: {k: v for k, v in d.items() if k.startswith("checkpoints")}
  assert ckpts(after) == ckpts(before)
  assert [r["step"] for r in read_metrics(workdir)] == [10, 20]

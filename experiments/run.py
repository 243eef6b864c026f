"""The one entry point.

  python -m experiments.run --config=configs/X.py --workdir=DIR [--config.a.b=v ...]
  python -m experiments.run --workdir=DIR --mode=sample --prompt="ROMEO:" --temperature=0.8
  python -m experiments.run --workdir=DIR --mode=score --text="To be, or not to be"
  python -m experiments.run --workdir=T5_DIR --mode=sample --prompt=SOURCE --beam_size=4
  python -m experiments.run --mode=embed --hf_checkpoint=HF_BERT_DIR --text="To be"

`--mode=train` dispatches to `experiments/<config.kind>.py::run(config, workdir)`
(the module's `parse_config(dict)` if it has one, else `lm.config.from_dict`, turns
the config into frozen dataclasses); without --config it resumes the workdir's own
config.json. Bad input exits with
status 2 and one line on stderr.
"""

import importlib
import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from lm.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:args]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (created if missing).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "sample", "score", "embed"], "What to do.")
_PROMPT = flags.DEFINE_string("prompt", None, "sample: text to continue (encoder-decoder: the "
                              "source); score: what --text is conditioned on.")
_TEMPERATURE = flags.DEFINE_float("temperature", None, "sample: 0 argmax, 1 model, inf uniform.")
_TOP_K = flags.DEFINE_integer("top_k", None, "sample: keep the k most likely tokens (0 = off).")
_TOP_P = flags.DEFINE_float("top_p", None, "sample: nucleus mass (1 = off).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", None, "sample: tokens to generate.")
_SEED = flags.DEFINE_integer("seed", None, "sample: random seed.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "sample: independent samples.")
_TEXT = flags.DEFINE_string("text", None, "score: the text to score.")
_BEAM_SIZE = flags.DEFINE_integer("beam_size", 0, "sample: beam search width (encoder-decoder; "
                                  "0 or 1 = greedy / sampling).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator", None, "Multi-process runs: HOST:PORT of process 0 (jax.distributed).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process runs: how many.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process runs: this one's index.")
_INIT_TIMEOUT = flags.DEFINE_integer("init_timeout_s", 60,
                                     "Multi-process runs: seconds to wait for all processes.")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout_s", 30,
    "Multi-process runs: a process silent this long counts as dead and the others exit.")
_HF_CHECKPOINT = flags.DEFINE_string(
    "hf_checkpoint", None, "embed: a Hugging Face BERT dir (config.json, model.safetensors, "
    "tokenizer.json); prints the mean-pooled, L2-normalised embedding of --text.")


def _config_values() -> dict:
  """The run's config as a plain dict: from --config, else the workdir's config.json."""
  from lm.workdir import CONFIG
  if _CONFIG.value is not None:
    try:
      return _CONFIG.value.to_dict()
    except OSError as e:  # ml_collections defers "no such config file" to first use
      raise UserError(f"cannot load --config: {str(e).strip().splitlines()[-1].strip()}") from None
  saved = os.path.join(_WORKDIR.value, CONFIG)
  if not os.path.exists(saved):
    raise UserError(f"--config is required: {saved} does not exist to resume from")
  with open(saved) as f:
    return json.load(f)


def _experiment(kind: str):
  try:
    return importlib.import_module(f"experiments.{kind}")
  except ModuleNotFoundError as e:
    if e.name != f"experiments.{kind}":
      raise
    raise UserError(f"unknown experiment kind {kind!r}: no experiments/{kind}.py") from None


def _wait_for_coordinator(address: str, timeout_s: float, who: str):
  """Polls the coordinator's port: XLA's client aborts the process (no exception) when it
  cannot register, so an absent coordinator is caught here, with a message."""
  import socket
  import time
  host, _, port = address.rpartition(":")
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host or "127.0.0.1", int(port)), timeout=1.0):
        return
    except (OSError, ValueError) as e:
      if time.monotonic() > deadline:
        raise UserError(f"could not join the multi-process run at {address} as process {who} "
                        f"within {timeout_s}s: {e}") from None
      time.sleep(0.2)


def _init_distributed():
  """Joins a multi-process run when --coordinator (or JAX_COORDINATOR_ADDRESS) is given."""
  coordinator = _COORDINATOR.value or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if not coordinator:
    return
  import jax
  num = _NUM_PROCESSES.value or int(os.environ.get("JAX_NUM_PROCESSES", 0))
  pid = _PROCESS_ID.value if _PROCESS_ID.value is not None else int(
      os.environ.get("JAX_PROCESS_ID", -1))
  if num < 1 or not 0 <= pid < num:
    raise UserError(f"a multi-process run needs --num_processes >= 1 and 0 <= --process_id < "
                    f"num_processes, got {num} and {pid}")
  if pid != 0:
    _wait_for_coordinator(coordinator, _INIT_TIMEOUT.value, f"{pid}/{num}")
  if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(coordinator, num_processes=num, process_id=pid,
                               initialization_timeout=_INIT_TIMEOUT.value,
                               heartbeat_timeout_seconds=_HEARTBEAT.value)
  except Exception as e:  # noqa: BLE001 -- jax raises several types here; all mean "no run"
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UserError(f"could not join the multi-process run at {coordinator} as process "
                    f"{pid}/{num} within {_INIT_TIMEOUT.value}s: {first}") from None
  global _JOINED_MULTI_PROCESS
  _JOINED_MULTI_PROCESS = num > 1


def _main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
  _init_distributed()
  if _MODE.value == "embed":  # needs no workdir
    if not _HF_CHECKPOINT.value or _TEXT.value is None:
      raise UserError("--mode=embed needs --hf_checkpoint=DIR and --text")
    from experiments.embed import embed
    embed(_HF_CHECKPOINT.value, [_TEXT.value])
    return
  if not _WORKDIR.value:
    raise UserError("--workdir is required")
  workdir = _WORKDIR.value
  if _MODE.value == "train":
    values = _config_values()
    if not _JOINED_MULTI_PROCESS:  # one process: JAX may start with several CPU devices
      from lm.sharding import start_cpu_devices
      note = start_cpu_devices(values.get("sharding", {}).get("cpu_devices", 0))
      if note:
        print(f"note: {note}", file=sys.stderr)
    from lm.workdir import ensure_writable
    ensure_writable(workdir)
    module = _experiment(values.get("kind", "train_lm"))
    # An experiment kind with its own config shape provides `parse_config(dict)`;
    # the rest use the language-model ExperimentConfig.
    parse = getattr(module, "parse_config", None)
    if parse is None:
      from lm.config import from_dict as parse
    module.run(parse(values), workdir)
  elif _MODE.value == "sample":
    from experiments.sample import sample
    sample(workdir, prompt=_PROMPT.value, temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
           top_p=_TOP_P.value, max_new_tokens=_MAX_NEW.value, seed=_SEED.value,
           num_samples=_NUM_SAMPLES.value, beam_size=_BEAM_SIZE.value)
  else:
    from experiments.sample import score
    if _TEXT.value is None:
      raise UserError("--mode=score needs --text")
    score(workdir, _TEXT.value, _PROMPT.value)


def _flag_error(error: Exception, argv: list[str]) -> str:
  """One line naming the bad flag: absl's own errors, or ml_collections' for --config.*."""
  if isinstance(error, (AttributeError, KeyError)):
    # ml_collections raises these for an override of a key the config lacks:
    # AttributeError(KeyError("'key'\nDid you mean ...?")).
    while error.args and isinstance(error.args[0], (AttributeError, KeyError)):
      error = error.args[0]
    text = error.args[0] if error.args and isinstance(error.args[0], str) else str(error)
    key, *hint = text.split("\n")
    key = key.strip("'\" ")
    overrides = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
    culprit = next((o for o in overrides if key in o.split(".")), None)
    where = f" in {culprit}" if culprit else ""
    return " ".join([f"unknown config key {key!r}{where}", *hint])
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if "Traceback (most recent call last)" in str(error):
    # A config file's get_config raised: its own exception is the last line.
    return f"{lines[0]} {lines[-1]}"
  return " ".join(lines)


def _parse_flags(argv: list[str]) -> list[str]:
  """app.run's flag parser, but bad flags give one `error:` line and status 2."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 -- any failure here is a bad command line
    print(f"error: {_flag_error(e, argv)}", file=sys.stderr)
    sys.exit(2)


_JOINED_MULTI_PROCESS = False


def main(argv):
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  try:
    _main(argv)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    if _JOINED_MULTI_PROCESS:
      # A normal exit would wait in jax.distributed's shutdown barrier for peers that are
      # waiting for this process in a collective: leave at once, so their heartbeat sees
      # it gone and they exit too (--heartbeat_timeout_s).
      sys.stderr.flush()
      sys.stdout.flush()
      os._exit(2)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)

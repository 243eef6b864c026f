"""In-context learning evaluation of any trained GPT workdir: accuracy vs k.

  python -m experiments.icl --workdir=/tmp/icl_strings            # icl_strings run
  python -m experiments.icl --workdir=/tmp/sft_add --shots=0      # addition (SFT run)
  python -m experiments.icl --workdir=/tmp/shakespeare --separator=": "

Writes WORKDIR/icl.json (every cell, with a sample prompt and output) and
WORKDIR/icl_table.md (one table per scoring method). The suite follows the run: an
icl_strings run is evaluated on its own training and held-out tasks, an addition run
(sft, dpo) on "Q: What is a plus b? A: ", anything else on the default string tasks.
"""

import json
import os
import sys

from absl import app, flags, logging

from lm.errors import UserError

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained GPT workdir.")
_OUT = flags.DEFINE_string("out_dir", None, "Where to write icl.json / icl_table.md "
                           "(default: the workdir).")
_SUITE = flags.DEFINE_enum("suite", "auto", ["auto", "strings", "addition"], "Which tasks.")
_SHOTS = flags.DEFINE_string("shots", "0,1,2,4,8", "k values (demonstrations per prompt).")
_NUM_EVAL = flags.DEFINE_integer("num_eval", 32, "Held-out queries per task and k.")
_METHODS = flags.DEFINE_string("methods", "generate,choice",
                               "generate (greedy exact match) and/or choice (option log-lik).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the queries and demonstrations.")
_SEPARATOR = flags.DEFINE_string("separator", None, "strings: between input and output.")
_TRAIN = flags.DEFINE_string("train_tasks", None, "strings: tasks the model trained on.")
_HELDOUT = flags.DEFINE_string("heldout_tasks", None, "strings: tasks it never saw.")

METHOD_TITLES = {"generate": "greedy decoding, exact match",
                 "choice": "option log-likelihood, highest of the candidate answers"}


def pick_suite(config, suite: str):
  """The ICL tasks for a run: its own string tasks, addition, or the default strings."""
  from lm.icl import suites
  from lm.tasks.icl_strings import ICLStringsConfig
  tc = config.task_config
  if suite == "auto":
    suite = ("addition" if config.task in ("sft", "dpo") and hasattr(tc, "num_digits")
             else "strings")
  if suite == "addition":
    return suite, suites.addition_suite(getattr(tc, "num_digits", 3))
  base = tc if isinstance(tc, ICLStringsConfig) else ICLStringsConfig()
  return suite, suites.string_suite(
      _TRAIN.value if _TRAIN.value is not None else base.train_tasks,
      _HELDOUT.value if _HELDOUT.value is not None else base.heldout_tasks,
      separator=_SEPARATOR.value if _SEPARATOR.value is not None else base.separator,
      min_len=base.min_input_len, max_len=base.max_input_len)


def evaluate_workdir(workdir: str, out_dir: str | None = None) -> dict:
  from lm.icl import harness
  from lm.icl.loading import load_decoder
  from lm.tasks.icl_strings import parse_shots
  decoder = load_decoder(workdir)
  suite, tasks = pick_suite(decoder.config, _SUITE.value)
  shots = parse_shots(_SHOTS.value)
  methods = [m.strip() for m in _METHODS.value.split(",") if m.strip()]
  unknown = sorted(set(methods) - set(harness.METHODS))
  if unknown or not methods:
    raise UserError(f"--methods={_METHODS.value!r}; choose from {harness.METHODS}")
  out = {"workdir": os.path.abspath(workdir), "step": decoder.step, "suite": suite,
         "task": decoder.config.task}
  lines = [f"# In-context learning: `{workdir}` (step {decoder.step}, {suite} suite)", ""]
  for method in methods:
    results = harness.evaluate(decoder.model, decoder.params, decoder.tokenizer, tasks,
                               shots=shots, num_eval=_NUM_EVAL.value, seed=_SEED.value,
                               method=method)
    out[method] = results
    lines += [f"## {METHOD_TITLES[method]}", "", harness.format_table(results)]
  out_dir = out_dir or workdir
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "icl.json"), "w") as f:
    json.dump(out, f, indent=2)
  with open(os.path.join(out_dir, "icl_table.md"), "w") as f:
    f.write("\n".join(lines))
  print("\n".join(lines))
  print(f"written: {out_dir}/icl_table.md, {out_dir}/icl.json")
  return out


def main(argv):
  logging.set_verbosity(logging.WARNING)
  try:
    if len(argv) > 1:
      raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _WORKDIR.value:
      raise UserError("--workdir is required")
    evaluate_workdir(_WORKDIR.value, _OUT.value)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)

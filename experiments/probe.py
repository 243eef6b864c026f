"""Linear probes on a pretrained workdir's frozen features (lm/eval/probing.py).

  python -m experiments.probe --workdir=/tmp/gpt [--num_speakers=8] [--hidden=0]

Prints speaker-classification accuracy for each pooling of the family and writes
WORKDIR/probe.json (or --out).
"""

import json
import os

from absl import flags, logging

from experiments import hygiene_cli
from lm.errors import UserError

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained gpt or bert workdir.")
_NUM_SPEAKERS = flags.DEFINE_integer("num_speakers", 8, "Classes: the top speakers.")
_HIDDEN = flags.DEFINE_integer("hidden", 0, "0: linear probe; > 0: one hidden ReLU layer.")
_OUT = flags.DEFINE_string("out", None, "Where to write the results (default WORKDIR/probe.json).")


def main():
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  from lm.eval.probing import probe_workdir
  if not _WORKDIR.value:
    raise UserError("--workdir is required")
  results = probe_workdir(_WORKDIR.value, _NUM_SPEAKERS.value, hidden=_HIDDEN.value)
  for pooling in ("last", "cls", "mean"):
    if pooling in results:
      r = results[pooling]
      print(f"{pooling:>5} pooling: probe accuracy {r['accuracy']:.3f} "
            f"(train {r['train_accuracy']:.3f}, {r['feature_dim']} features)")
  out = _OUT.value or os.path.join(_WORKDIR.value, "probe.json")
  with open(out, "w") as f:
    json.dump(results, f, indent=2)
  print(f"written to {out}")


if __name__ == "__main__":
  hygiene_cli.run(main)

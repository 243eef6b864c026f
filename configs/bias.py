"""Template-based bias scoring of a trained decoder or encoder (lm/eval/bias.py).

Run (after training, e.g. configs/shakespeare_char.py into /tmp/shakespeare):
  python -m experiments.run --config=configs/bias.py --config.model_workdir=/tmp/shakespeare \
      --workdir=/tmp/bias
Expected: table.md with, per category (gender, age, nationality), the preference for the
first group term and its positive-minus-negative association with 95% bootstrap
intervals; docs/privacy.md has measured tables. A bert-family workdir
(configs/bert_shakespeare.py) is scored with the MLM pseudo-log-likelihood instead.

Variants: `:smoke` (200 bootstrap resamples).
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = base.parse_arg(arg, smoke=False)
  c = ml_collections.ConfigDict()
  c.kind = "bias"
  c.model_workdir = ""  # required: the trained run to score
  c.templates = ""  # "" = the shipped lm/eval/data/bias_templates.json
  c.num_resamples = 2000
  c.confidence = 0.95
  c.seed = 0
  if args.smoke:
    c.num_resamples = 200
  return c

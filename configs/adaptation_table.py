"""The adaptation table: full fine-tuning, LoRA, prefix, prompt, adapters, BitFit, a
trained head and linear probes, all on one pretrained checkpoint and the speaker task.

  python -m experiments.run --config=configs/adaptation_table.py --workdir=/tmp/adapt \
      [--config.init_from=/tmp/gpt]

Without init_from, the default char GPT (configs/shakespeare_char.py) is pretrained
first in WORKDIR/base. Writes WORKDIR/table.md (method, trainable params, fraction,
val accuracy, train time); the measured table is in docs/adaptation.md. Expected: every
lightweight method under 1% of the parameters and well above chance (0.125).

--config.task=addition runs the generation task instead (3-digit addition from a 2-digit
SFT workdir given as init_from; greedy exact match; no "head" row, no probes).

Args: smoke (tiny pretraining and 20-step fine-tunes), steps=N (per method).
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = base.parse_arg(arg, smoke=False, steps=600)
  c = ml_collections.ConfigDict()
  c.kind = "adaptation_table"
  c.init_from = ""
  c.task = "speakers"  # or addition (needs init_from: configs/sft_addition.py:digits=2)
  c.methods = ("full", "lora", "prefix", "prompt", "adapters", "bitfit", "head")
  c.steps = args.steps
  c.probes = True
  c.smoke = args.smoke
  return c

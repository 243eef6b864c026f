"""Adapting a pretrained addition model to a harder generation task: 3-digit operands.

The lecture's arithmetic example ("Q: What is 556 plus 497? A: 1053") as the generation
task of the adaptation methods. Pretrain on 2-digit problems, then adapt (base frozen):
  python -m experiments.run --config=configs/sft_addition.py:digits=2 --workdir=/tmp/add2
  python -m experiments.run --config=configs/adapt_addition.py:method=lora,init_from=/tmp/add2 \
      --workdir=/tmp/add3_lora
summary.json: greedy_accuracy (exact answers of 512 held-out 3-digit problems, greedy
decoding), trainable_params, trainable_fraction. Measured numbers: docs/adaptation.md.

Args: method=full|lora|prefix|prompt|adapters|bitfit (lm/adapt/methods.py), init_from=DIR
(an addition SFT workdir; without it the default sft_addition model trains from scratch),
digits=N (default 3), steps=N, smoke.
"""

import ml_collections

from configs import base
from configs.adapt_speakers import adapted


def _pretrained(init_from: str) -> dict:
  if init_from:
    from configs.adapt_speakers import _backbone_config
    return _backbone_config(init_from, "gpt")
  from configs import sft_addition
  return sft_addition.get_config().to_dict()


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = base.parse_arg(arg, smoke=False, method="lora", init_from="", digits=3, steps=600)
  pretrained = _pretrained(args.init_from)
  if pretrained.get("task") != "sft":
    raise ValueError(f"init_from={args.init_from} is a {pretrained.get('task')!r} run; "
                     "adapt_addition starts from an addition SFT workdir")
  c = adapted(pretrained, args.method, args.init_from, args.steps, args.smoke)
  c.task = "sft"
  c.task_config = ml_collections.ConfigDict(dict(num_digits=args.digits,
                                                 num_eval=16 if args.smoke else 512))
  c.data.batch_size = 8 if args.smoke else 16
  return c

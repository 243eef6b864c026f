"""DPO on addition preferences (right sum chosen, a one-digit carry error rejected), from
an SFT warm start that is also the frozen reference (lm/tasks/dpo.py).

First train the SFT warm start (configs/sft_addition.py), then:
  python -m experiments.run --config=configs/dpo_addition.py:init_from=/tmp/sft_add \
      --workdir=/tmp/dpo_add
val_loss starts at log 2 = 0.693 (policy == reference); val_reward_accuracy is the
held-out implicit-reward accuracy; summary.json adds greedy_accuracy (policy),
reference_greedy_accuracy (the SFT model) and win_rate. Measured results in
docs/post_training.md.

beta defaults to 0.5, not the paper's usual 0.1: from this 500-step SFT warm start, 200
steps at beta=0.1 push the chosen answers' likelihood down with the rejected ones and
break the answer format (greedy accuracy 0.35 -> 0.00), while beta=0.5 keeps the policy
near the reference (greedy 0.35 -> 0.41, format intact); docs/post_training.md.

Args: smoke, init_from=DIR (same as --config.task_config.init_from), beta=B, steps=N.
"""

import ml_collections

from configs import base
from configs.shakespeare_char import recipe as lm_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = base.parse_arg(arg, smoke=False, init_from="", beta=0.5, steps=200)
  c = lm_config()
  c.task = "dpo"
  c.task_config = ml_collections.ConfigDict(dict(init_from=args.init_from, beta=args.beta,
                                                 num_eval=512))
  c.data.path = ""  # synthetic
  c.data.batch_size = 32  # preference pairs per step
  c.data.eval_batch_size = 128
  c.optim.lr = 1e-4
  c.optim.min_lr = 1e-5
  c.optim.warmup_steps = 10
  c.optim.weight_decay = 0.0
  c.train.num_steps = args.steps
  c.train.eval_every = 50
  c.train.checkpoint_every = 100
  c.train.log_every = 10
  if args.smoke:
    c.data.batch_size = 4
    c.data.eval_batch_size = 16
    c.task_config.num_eval = 16
    c.train.num_steps = 4
    c.train.log_every = 2
    c.train.eval_every = 2
    c.train.checkpoint_every = 2
    c.train.steps_per_call = 2
    c.optim.warmup_steps = 1
  return c

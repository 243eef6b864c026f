"""GRPO with rule-based rewards on multi-digit addition, from an SFT warm start.

First train the SFT warm start (configs/sft_addition.py), then:
  python -m experiments.run --config=configs/grpo_addition.py \
      --config.init_from=/tmp/sft_add --workdir=/tmp/grpo_add
metrics.jsonl: per step reward, accuracy, format, completion_length, kl, clip_fraction,
zero_std_groups; heldout_accuracy (greedy, 512 held-out problems) at step 0 and every
eval_every steps. summary.json: heldout_accuracy_before / _after. Measured results in
docs/post_training.md.

Args: smoke (a few steps of a tiny group), init_from=DIR (same as --config.init_from).
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = base.parse_arg(arg, smoke=False, init_from="")
  c = ml_collections.ConfigDict()
  c.kind = "grpo"
  c.init_from = args.init_from  # an SFT workdir; required
  c.num_steps = 100
  c.prompts_per_step = 16  # P prompts ...
  c.group_size = 8  # ... times G completions per step
  c.num_iterations = 1  # gradient steps per batch of rollouts
  c.max_new_tokens = 0  # 0: a correct answer's length + slack
  c.temperature = 1.0
  c.clip_eps = 0.2
  c.beta = 0.04  # k3 KL penalty to the frozen SFT reference
  c.token_averaging = "sequence"  # sequence (DeepSeekMath) | token (DAPO)
  c.answer_reward = 1.0
  c.format_reward = 0.1
  c.advantage_eps = 1e-4
  c.lr = 1e-4
  c.warmup_steps = 10
  c.grad_clip = 1.0
  c.num_eval = 512
  c.eval_every = 25
  c.checkpoint_every = 50
  c.seed = 0
  if args.smoke:
    c.num_steps = 4
    c.prompts_per_step = 4
    c.group_size = 4
    c.num_iterations = 2
    c.num_eval = 16
    c.eval_every = 2
    c.checkpoint_every = 2
    c.warmup_steps = 1
  return c

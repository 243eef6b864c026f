"""SFT of a small GPT on multi-digit addition in a chat template (lm/tasks/sft.py).

  "Q: What is 556 plus 497? A: " -> "<answer>1053</answer>" + EOS

Loss on the response only, examples packed with segment ids. Run:
  python -m experiments.run --config=configs/sft_addition.py --workdir=/tmp/sft_add
summary.json: val_loss, val_answer_accuracy (teacher-forced), greedy_accuracy and
greedy_format (greedy decoding of 512 held-out problems). Measured results in
docs/post_training.md; this run is also the warm start of configs/grpo_addition.py and
configs/dpo_addition.py (a deliberately short run: GRPO and DPO have room to improve it).

Args: smoke, digits=N (operand digits, default 3), steps=N.
"""

import ml_collections

from configs import base
from configs.shakespeare_char import recipe as lm_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = base.parse_arg(arg, smoke=False, digits=3, steps=1500)
  c = lm_config()
  c.task = "sft"
  c.task_config = ml_collections.ConfigDict(dict(num_digits=args.digits, num_eval=512))
  c.data.path = ""  # synthetic: the task generates its data
  c.data.seq_len = 160  # three 3-digit examples (50 tokens each) per packed row
  c.data.batch_size = 16
  c.data.eval_batch_size = 64
  c.model.max_len = 64  # one example (and its rollout) fits
  c.model.num_layers = 4
  c.model.embed_dim = 128
  c.model.mlp_dim = 512
  c.optim.lr = 1e-3
  c.optim.min_lr = 1e-4
  c.optim.warmup_steps = 100
  c.train.num_steps = args.steps
  c.train.eval_every = 250
  c.train.checkpoint_every = 500
  c.sample.prompt = "Q: What is 556 plus 497? A: "
  if args.smoke:
    c.model.num_layers = 2
    c.model.num_heads = 2
    c.model.embed_dim = 32
    c.model.mlp_dim = 128
    c.data.batch_size = 8
    c.optim.warmup_steps = 5
    c.task_config.num_eval = 16
    c.train.num_steps = 20
    c.train.log_every = 10
    c.train.eval_every = 10
    c.train.checkpoint_every = 10
  return c

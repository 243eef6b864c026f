"""Scaling sweep on tiny Shakespeare (chars): 6 model sizes x 4 token budgets.

Run (resumable: rerun to continue; finished runs are skipped):
  python -m experiments.run --config=configs/scaling_sweep.py --workdir=runs/scaling_sweep
Then fit and plot (see docs/scaling.md):
  python -m experiments.scaling_report --sweep=runs/scaling_sweep --out=docs/scaling
Expected: non-embedding N from 12.8k to 608k (48x), D from 256k to 2M tokens; val_loss
falls with both, from 2.56 (12.8k params, 256k tokens) to 1.84 (608k, 2M).

Variants: `:smoke` (2 tiny sizes x 2 budgets of a few dozen steps, for tests).

Each size's learning rate follows 2e-3 * sqrt(64 / width) (wider models want smaller
steps); every run warms up for 5% of its steps and decays (cosine) to lr / 10 at its
own end, so each budget is a separately tuned run (Hoffmann et al. 2022, not Kaplan's
fixed schedule).
"""

import ml_collections

from configs import base, shakespeare_char


def size(num_layers: int, embed_dim: int, num_heads: int) -> dict:
  """One model size: overrides applied to the base config, with the width's lr."""
  return {"model.num_layers": num_layers, "model.embed_dim": embed_dim,
          "model.num_heads": num_heads, "model.mlp_dim": 4 * embed_dim,
          "optim.lr": round(2e-3 * (64 / embed_dim) ** 0.5, 6)}


def base_config() -> ml_collections.ConfigDict:
  """The LM config every sweep run starts from: the char recipe, evaluated once at the end."""
  c = shakespeare_char.recipe()
  c.kind = "sweep"
  c.data.seq_len = 64
  c.model.max_len = 64
  c.data.batch_size = 16  # 1024 tokens per step
  c.data.eval_batch_size = 256
  c.train.log_every = 25
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 1
  c.train.steps_per_call = 25
  c.sample.max_new_tokens = 0  # no sample after each run
  c.sweep = ml_collections.ConfigDict()
  c.sweep.name = "sweep"
  c.sweep.models = []
  c.sweep.tokens = []
  c.sweep.flops = []
  c.sweep.min_steps = 100
  c.sweep.max_steps = 5000
  c.sweep.warmup_fraction = 0.05
  c.sweep.min_lr_ratio = 0.1
  return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Tiny sizes and runs of a few dozen steps: every code path in seconds."""
  c.data.seq_len = 16
  c.model.max_len = 16
  c.data.batch_size = 8  # divisible by the 8 fake devices of the tests
  c.data.val_fraction = 0.002  # ~2k validation tokens
  c.train.log_every = 10
  c.train.steps_per_call = 10
  c.sweep.models = [size(1, 16, 1), size(2, 32, 2)]
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = base.parse_arg(arg, smoke=False)
  c = base_config()
  c.sweep.name = "scaling_sweep"
  c.sweep.models = [size(1, 32, 1), size(2, 40, 2), size(2, 56, 2), size(3, 72, 2),
                    size(4, 88, 2), size(4, 112, 4)]
  c.sweep.tokens = [250_000, 500_000, 1_000_000, 2_000_000]
  if args.smoke:
    smoke(c)
    c.sweep.tokens = [2000, 4000]  # 16 and 31 steps of 128 tokens
  return c

"""IsoFLOP profiles: at each of 3 compute budgets, every size trained for D = C / (6N) tokens.

Run (resumable):
  python -m experiments.run --config=configs/scaling_isoflop.py --workdir=runs/scaling_isoflop
  python -m experiments.scaling_report --isoflop=runs/scaling_isoflop --out=docs/scaling
Expected: budgets C = 6ND of 2e11, 6e11 and 2e12 FLOPs, 8-9 sizes each (sizes whose run
would take fewer than 120 or more than 16000 steps are skipped); each profile is a
valley in loss vs log N whose minimum moves to larger N as C grows (Hoffmann et al.
2022, approach 2): measured minima near N = 8k, 16k and 46k, val_loss 2.01, 1.92, 1.78.

Variants: `:smoke` (2 tiny budgets, a few dozen steps).
"""

import ml_collections

from configs import base
from configs.scaling_sweep import base_config, size, smoke


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = base.parse_arg(arg, smoke=False)
  c = base_config()
  c.sweep.name = "scaling_isoflop"
  c.sweep.models = [size(1, 16, 1), size(1, 24, 1), size(1, 32, 1), size(2, 32, 1), size(2, 48, 2), size(2, 64, 2),
                    size(3, 64, 2), size(3, 80, 2), size(4, 96, 3), size(4, 128, 4),
                    size(6, 128, 4)]
  c.sweep.flops = [2e11, 6e11, 2e12]
  c.sweep.min_steps = 120
  c.sweep.max_steps = 16000
  if args.smoke:
    smoke(c)
    c.sweep.models = [size(1, 16, 1), size(2, 16, 1), size(1, 32, 1)]
    c.sweep.flops = [1e8, 2e8]
    c.sweep.min_steps = 8
    c.sweep.max_steps = 100
  return c

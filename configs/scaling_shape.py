"""Shape at fixed size: ~200k non-embedding parameters from 1 x 128 to 12 x 37 (depth x width).

Run (resumable):
  python -m experiments.run --config=configs/scaling_shape.py --workdir=runs/scaling_shape
  python -m experiments.scaling_report --shape=runs/scaling_shape --out=docs/scaling
Expected: aspect ratio (width / depth) from 128 down to 3 (41x), every run on the same
1M tokens; Kaplan et al. (2020, Fig. 5) find the loss within a few percent over a wide
range of shapes; here the loss rises steadily from 1.98 (1 x 128) to 2.23 (12 x 37).

Variants: `:smoke` (two shapes, a few dozen steps).
"""

import ml_collections

from configs import base
from configs.scaling_sweep import base_config, size, smoke


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = base.parse_arg(arg, smoke=False)
  c = base_config()
  c.sweep.name = "scaling_shape"
  c.sweep.models = [size(1, 128, 4), size(2, 90, 2), size(3, 74, 2), size(4, 64, 2),
                    size(6, 52, 2), size(8, 46, 2), size(12, 37, 1)]
  c.sweep.tokens = [1_000_000]
  if args.smoke:
    smoke(c)
    c.sweep.models = [size(1, 32, 1), size(4, 16, 1)]
    c.sweep.tokens = [2000]
  return c

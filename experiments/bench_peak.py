"""Measures this machine's matmul peak (FLOP/s) per dtype and stores it for MFU.

  python -m experiments.bench_peak

Every training run reports MFU against these numbers (lm/train/mfu.py).
"""

from absl import app

from lm.train.mfu import CACHE, peak_flops


def main(argv):
  del argv
  for dtype in ("float32", "bfloat16"):
    print(f"{dtype:>9}: {peak_flops(dtype, remeasure=True) / 1e9:8.1f} GFLOP/s")
  print(f"stored in {CACHE}")


if __name__ == "__main__":
  app.run(main)

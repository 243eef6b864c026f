"""Sparse-attention FLOPs: block-sparse local and strided attention vs dense.

  python -m experiments.reproduce.sparse_flops [--seq_len=2048 --window=128 --stride=64]

Child et al. 2019 (Sparse Transformers) cut attention from T^2 scores to about T*sqrt(T)
with local (band) and strided patterns. Our block-sparse kernels
(lm/layers/sparse_attention.py) compute T*2w scores for a band of width w (blocks n-1 and
n for query block n) and s*(T/s)^2 = T^2/s for stride s, so the expected FLOPs ratios to
dense attention under the same mask are T/(2w) and s. FLOPs come from XLA's cost
analysis; the outputs must equal dense attention with the same mask.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.reproduce.common import hardware, write_result
from lm.layers import masks
from lm.layers.attention import dot_product_attention
from lm.layers.sparse_attention import local_attention, strided_attention


def _flops(fn, args) -> float:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def _seconds(fn, args) -> float:
  fn = jax.jit(fn)
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def measure(T: int, w: int, s: int, heads: int = 8, head_dim: int = 64) -> dict:
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((1, T, heads, head_dim)), jnp.float32)
             for _ in range(3))
  pos = jnp.arange(T)[None]
  causal = masks.causal_mask(pos, pos)
  pairs = {
      "local": (lambda q, k, v: dot_product_attention(q, k, v, causal & masks.local_mask(pos, pos, w)),
                lambda q, k, v: local_attention(q, k, v, causal, pos, w), T / (2 * w)),
      "strided": (lambda q, k, v: dot_product_attention(q, k, v,
                                                        causal & masks.strided_mask(pos, pos, s)),
                  lambda q, k, v: strided_attention(q, k, v, causal, pos, s), float(s)),
  }
  result = {"hardware": hardware(), "seq_len": T, "window": w, "stride": s, "heads": heads,
            "head_dim": head_dim}
  for name, (dense, sparse, expected) in pairs.items():
    args = (q, k, v)
    dense_flops, sparse_flops = _flops(dense, args), _flops(sparse, args)
    diff = float(jnp.max(jnp.abs(jax.jit(dense)(*args) - jax.jit(sparse)(*args))))
    result[name] = {"dense_flops": dense_flops, "sparse_flops": sparse_flops,
                    "flops_ratio": dense_flops / sparse_flops, "expected_ratio": expected,
                    "max_abs_diff": diff, "speedup": _seconds(dense, args) / _seconds(sparse, args)}
  return result


def _parse(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seq_len", type=int, default=2048, help="Sequence length.")
  parser.add_argument("--window", type=int, default=128, help="Local band width.")
  parser.add_argument("--stride", type=int, default=64, help="Strided pattern stride.")
  parser.add_argument("--out", type=str, default="", help="Results JSON (default results/sparse_attention.json).")
  return parser.parse_args(argv)


def main(argv=None):
  args = _parse(argv)
  result = measure(args.seq_len, args.window, args.stride)
  for name in ("local", "strided"):
    r = result[name]
    print(f"{name}: FLOPs ratio {r['flops_ratio']:.2f}x (expected {r['expected_ratio']:.0f}x), "
          f"speedup {r['speedup']:.1f}x, max |diff| {r['max_abs_diff']:.1e}")
  write_result("sparse_attention", result, args.out)


if __name__ == "__main__":
  main()

"""Block-sparse vs dense attention at long context: FLOPs, speed, agreement.

  python -m experiments.bench_attention [--seq_len=2048 --window=128 --stride=64]

Dense attention gets the very same mask (causal & band, or causal & stride) and
computes every score; the block-sparse kernels (lm/layers/sparse_attention.py) skip
the blocks that mask hides. FLOPs come from XLA's cost analysis of the compiled
functions; times are medians over repeated calls in this one process.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from lm.layers import masks
from lm.layers.attention import dot_product_attention
from lm.layers.sparse_attention import local_attention, strided_attention

_T = flags.DEFINE_integer("seq_len", 2048, "Sequence length.")
_WINDOW = flags.DEFINE_integer("window", 128, "Local band width.")
_STRIDE = flags.DEFINE_integer("stride", 64, "Strided pattern stride.")
_HEADS = flags.DEFINE_integer("heads", 8, "Attention heads.")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 64, "Head dim.")
_BATCH = flags.DEFINE_integer("batch", 1, "Batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed calls per function.")


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def _median_seconds(fn, args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def _compare(name, dense_fn, sparse_fn, args, repeats):
  dense, sparse = jax.jit(dense_fn), jax.jit(sparse_fn)
  dense_flops = _flops(dense.lower(*args).compile())
  sparse_flops = _flops(sparse.lower(*args).compile())
  err = float(jnp.max(jnp.abs(dense(*args) - sparse(*args))))
  t_dense = _median_seconds(dense, args, repeats)
  t_sparse = _median_seconds(sparse, args, repeats)
  print(f"{name:<8} dense {dense_flops / 1e9:7.2f} GFLOP {t_dense * 1e3:8.1f} ms | "
        f"block-sparse {sparse_flops / 1e9:6.2f} GFLOP {t_sparse * 1e3:7.1f} ms | "
        f"FLOPs ratio {dense_flops / sparse_flops:5.2f}x  speedup {t_dense / t_sparse:5.2f}x  "
        f"max |diff| {err:.1e}")
  return dense_flops / sparse_flops, t_dense / t_sparse, err


def main(argv):
  del argv
  B, T, N, H = _BATCH.value, _T.value, _HEADS.value, _HEAD_DIM.value
  w, s = _WINDOW.value, _STRIDE.value
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((B, T, N, H)), jnp.float32) for _ in range(3))
  pos = jnp.broadcast_to(jnp.arange(T)[None], (B, T))
  causal = masks.causal_mask(pos, pos)
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; B={B} T={T} heads={N} "
        f"head_dim={H} f32, forward pass")

  def dense_local(q, k, v):
    return dot_product_attention(q, k, v, causal & masks.local_mask(pos, pos, w))

  def sparse_local(q, k, v):
    return local_attention(q, k, v, causal, pos, w)

  def dense_strided(q, k, v):
    return dot_product_attention(q, k, v, causal & masks.strided_mask(pos, pos, s))

  def sparse_strided(q, k, v):
    return strided_attention(q, k, v, causal, pos, s)

  _compare(f"local w={w}", dense_local, sparse_local, (q, k, v), _REPEATS.value)
  _compare(f"strided s={s}", dense_strided, sparse_strided, (q, k, v), _REPEATS.value)

  def grad_of(fn):
    return jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) ** 2), argnums=(0, 1, 2))

  def first_grad(fn):
    return lambda q, k, v: grad_of(fn)(q, k, v)[0]

  _compare("local fwd+bwd", first_grad(dense_local), first_grad(sparse_local), (q, k, v),
           _REPEATS.value)


if __name__ == "__main__":
  app.run(main)

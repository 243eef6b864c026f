"""FP8 matmuls after DeepSeek-V3 (2024, sec. 3.3), simulated: E4M3 operands with
fine-grained scales and f32 accumulation.

Each operand is rounded to float8_e4m3fn after dividing by a per-tile scale that
maps the tile's largest magnitude to E4M3's largest finite value (448):
  activations (and output gradients) in 1 x 128 tiles along the contracted dimension,
  weights in 128 x 128 blocks.
Fine-grained tiles keep one outlier from flattening the precision of a whole tensor.
On CPU (and any device without FP8 dots) the rounded values are multiplied back by
their scales and the product runs in f32: the numerics of FP8 training, not its speed.
The backward pass quantises the incoming gradient the same way (1 x 128 tiles) and
reuses the quantised operands, as the paper's FP8 Wgrad/Dgrad do.

Legend: M rows, K contracted dim, N output dim, t tile width.
"""

import math

import jax
import jax.numpy as jnp
from jax import lax

from lm.layers.precision import dense_dot_general

E4M3 = jnp.float8_e4m3fn
E4M3_MAX = float(jnp.finfo(E4M3).max)  # 448
TILE = 128


def _tile(size: int) -> int:
  """The tile width along a dimension: 128, the whole dimension when it is smaller, or the
  largest common divisor with 128 when 128 does not divide it."""
  return size if size <= TILE else math.gcd(size, TILE)


def _round_scaled(x, amax):
  scale = jnp.where(amax > 0, amax / E4M3_MAX, 1.0)
  return (x / scale).astype(E4M3).astype(jnp.float32) * scale


def quantize_rows(x_MK):
  """1 x t tiles along the last dimension (activations, output gradients)."""
  M, K = x_MK.shape
  t = _tile(K)
  tiles = x_MK.astype(jnp.float32).reshape(M, K // t, t)
  amax = jnp.max(jnp.abs(tiles), axis=-1, keepdims=True)
  return _round_scaled(tiles, amax).reshape(M, K)


def quantize_blocks(w_KN):
  """t x t blocks (weights)."""
  K, N = w_KN.shape
  tk, tn = _tile(K), _tile(N)
  blocks = w_KN.astype(jnp.float32).reshape(K // tk, tk, N // tn, tn)
  amax = jnp.max(jnp.abs(blocks), axis=(1, 3), keepdims=True)
  return _round_scaled(blocks, amax).reshape(K, N)


@jax.custom_vjp
def fp8_matmul(x_MK, w_KN):
  return lax.dot(quantize_rows(x_MK), quantize_blocks(w_KN), preferred_element_type=jnp.float32)


def _fwd(x_MK, w_KN):
  xq, wq = quantize_rows(x_MK), quantize_blocks(w_KN)
  dtypes = (jnp.zeros((0,), x_MK.dtype), jnp.zeros((0,), w_KN.dtype))
  return lax.dot(xq, wq, preferred_element_type=jnp.float32), (xq, wq, dtypes)


def _bwd(res, g_MN):
  xq, wq, (x_like, w_like) = res
  gq = quantize_rows(g_MN)
  dx = lax.dot(gq, wq.T, preferred_element_type=jnp.float32)
  dw = lax.dot(xq.T, gq, preferred_element_type=jnp.float32)
  return dx.astype(x_like.dtype), dw.astype(w_like.dtype)


fp8_matmul.defvjp(_fwd, _bwd)


# Drop-in `dot_general` for Flax Dense/DenseGeneral layers.
fp8_dot_general = dense_dot_general(fp8_matmul)

"""Mixed-precision matrix multiplies: bf16 operands, f32 accumulation and output.

On CPUs with AVX512-BF16 (and on TPUs/GPUs) bf16 dots run about twice as fast as
f32. Parameters, activations between matmuls, norms and softmax stay f32; only the
matmul operands are rounded to bf16. The custom VJP keeps the backward dots in
bf16 too, and computes the weight gradient as a sum of per-chunk products, which
XLA's CPU backend runs much faster than one long transposed contraction.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

_F32 = jnp.float32
_BF16 = jnp.bfloat16


def _chunks(m: int) -> int:
  """How many equal pieces the contracted rows are split into for the weight grad."""
  return next(b for b in (16, 12, 8, 6, 4, 3, 2, 1) if m % b == 0 and m // b >= 64 or b == 1)


@jax.custom_vjp
def _matmul_bf16(x_MK, w_KN):
  return lax.dot(x_MK.astype(_BF16), w_KN.astype(_BF16), preferred_element_type=_F32)


def _matmul_fwd(x_MK, w_KN):
  x16, w16 = x_MK.astype(_BF16), w_KN.astype(_BF16)
  # Zero-size arrays carry the input dtypes (residuals must be arrays).
  dtypes = (jnp.zeros((0,), x_MK.dtype), jnp.zeros((0,), w_KN.dtype))
  return lax.dot(x16, w16, preferred_element_type=_F32), (x16, w16, dtypes)


def _matmul_bwd(res, g_MN):
  x16, w16, (x_like, w_like) = res
  g16 = g_MN.astype(_BF16)
  dx_MK = lax.dot_general(g16, w16, (((1,), (1,)), ((), ())), preferred_element_type=_F32)
  m = x16.shape[0]
  b = _chunks(m)
  dw_KN = jnp.einsum("bmk,bmn->kn", x16.reshape(b, m // b, -1), g16.reshape(b, m // b, -1),
                     preferred_element_type=_F32)
  return dx_MK.astype(x_like.dtype), dw_KN.astype(w_like.dtype)


_matmul_bf16.defvjp(_matmul_fwd, _matmul_bwd)


def dense_dot_general(matmul_MK_KN):
  """A drop-in `dot_general` for Flax Dense/DenseGeneral built from a 2-D matmul.

  Handles lhs-trailing x rhs-leading contractions (what Dense layers emit) by
  flattening to one (M, K) x (K, N) product; anything else falls back to lax.dot_general.
  """
  def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                  **kwargs):
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    n = len(lhs_contract)
    canonical = (not lhs_batch and not rhs_batch
                 and tuple(lhs_contract) == tuple(range(lhs.ndim - n, lhs.ndim))
                 and tuple(rhs_contract) == tuple(range(n)))
    if not canonical:
      return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                             preferred_element_type=preferred_element_type, **kwargs)
    batch_shape, out_shape = lhs.shape[:lhs.ndim - n], rhs.shape[n:]
    k = functools.reduce(lambda a, b: a * b, rhs.shape[:n], 1)
    y = matmul_MK_KN(lhs.reshape(-1, k), rhs.reshape(k, -1))
    return y.reshape(*batch_shape, *out_shape)

  return dot_general


bf16_dot_general = dense_dot_general(_matmul_bf16)


MATMUL_DTYPES = ("float32", "bfloat16", "fp8")


def dot_general_for(compute_dtype: str):
  """The dot_general a Dense layer should use for `model.matmul_dtype`."""
  if compute_dtype == "fp8":
    from lm.layers.fp8 import fp8_dot_general
    return fp8_dot_general
  return bf16_dot_general if compute_dtype == "bfloat16" else None

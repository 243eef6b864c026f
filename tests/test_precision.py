"""bf16 matmul operands (f32 accumulation) through the Dense-layer dot_general."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from lm.layers.precision import bf16_dot_general


def _bf16(x):
  return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


def test_dense_general_contraction_rounds_operands_and_accumulates_in_f32():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 3, 16)).astype(np.float32)  # (B, T, D)
  w = rng.standard_normal((16, 4, 8)).astype(np.float32)  # (D, N, H), as DenseGeneral's kernel
  dims = (((2,), (0,)), ((), ()))
  got = np.asarray(bf16_dot_general(jnp.asarray(x), jnp.asarray(w), dims))
  want = np.einsum("btd,dnh->btnh", _bf16(x), _bf16(w))
  assert got.dtype == np.float32 and got.shape == (2, 3, 4, 8)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert np.abs(got - np.einsum("btd,dnh->btnh", x, w)).max() > 1e-4  # really rounded


def test_gradients_are_bf16_products_of_rounded_operands():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((32, 16)).astype(np.float32)
  w = rng.standard_normal((16, 8)).astype(np.float32)
  g = rng.standard_normal((32, 8)).astype(np.float32)
  dims = (((1,), (0,)), ((), ()))
  _, vjp = jax.vjp(lambda a, b: bf16_dot_general(a, b, dims), jnp.asarray(x), jnp.asarray(w))
  dx, dw = vjp(jnp.asarray(g))
  np.testing.assert_allclose(np.asarray(dx), _bf16(g) @ _bf16(w).T, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(dw), _bf16(x).T @ _bf16(g), rtol=1e-5, atol=1e-5)


def test_batched_contractions_fall_back_to_f32():
  rng = np.random.default_rng(2)
  a = rng.standard_normal((3, 4, 5)).astype(np.float32)
  b = rng.standard_normal((3, 5, 6)).astype(np.float32)
  dims = (((2,), (1,)), ((0,), (0,)))
  got = np.asarray(bf16_dot_general(jnp.asarray(a), jnp.asarray(b), dims))
  np.testing.assert_allclose(got, np.einsum("bij,bjk->bik", a, b), rtol=1e-5, atol=1e-5)

"""Simulated FP8 (E4M3, DeepSeek-V3 tile scaling) against a NumPy reference."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from lm.layers import fp8

# Every finite E4M3 value, from the bit patterns (an independent table).
_ALL = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float64)
GRID = np.unique(_ALL[np.isfinite(_ALL)])


def _round_to_grid(v):
  """Nearest E4M3 value, ties to the even mantissa (the one with an even bit pattern)."""
  idx = np.clip(np.searchsorted(GRID, v), 1, len(GRID) - 1)
  lo, hi = GRID[idx - 1], GRID[idx]
  pick_hi = (hi - v) < (v - lo)
  tie = (hi - v) == (v - lo)
  hi_even = np.array([np.float64(h).astype(ml_dtypes.float8_e4m3fn).view(np.uint8) % 2 == 0
                      for h in hi.ravel()]).reshape(hi.shape)
  return np.where(pick_hi | (tie & hi_even), hi, lo)


def _ref_rows(x, tile):
  M, K = x.shape
  t = x.reshape(M, K // tile, tile).astype(np.float64)
  scale = np.abs(t).max(-1, keepdims=True) / 448.0
  scale[scale == 0] = 1.0
  return (_round_to_grid(t / scale) * scale).reshape(M, K)


def test_e4m3_max_is_448():
  assert fp8.E4M3_MAX == 448.0 == GRID.max()


def test_row_tiles_match_reference_and_are_independent():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((4, 256)).astype(np.float32)
  x[0, 3] = 1e6  # an outlier in tile 0 of row 0 only: its neighbours fall below E4M3
  got = np.asarray(fp8.quantize_rows(jnp.asarray(x)))
  np.testing.assert_allclose(got, _ref_rows(x, 128), rtol=1e-6)
  # The outlier flattens its own tile; the second tile of row 0 keeps full precision.
  assert np.abs(got[0, 128:] - x[0, 128:]).max() < 0.07 * np.abs(x[0, 128:]).max()
  assert np.abs(got[0, :128] - x[0, :128]).max() > 0.5
  # Each tile's largest magnitude is exact (it maps to 448).
  np.testing.assert_allclose(np.abs(got).reshape(4, 2, 128).max(-1),
                             np.abs(x).reshape(4, 2, 128).max(-1), rtol=1e-6)


def test_weight_blocks_match_reference():
  rng = np.random.default_rng(1)
  w = rng.standard_normal((256, 384)).astype(np.float32)
  got = np.asarray(fp8.quantize_blocks(jnp.asarray(w)))
  ref = np.empty_like(w, dtype=np.float64)
  for i in range(2):
    for j in range(3):
      block = w[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]
      ref[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] = _ref_rows(block.reshape(1, -1),
                                                                     block.size).reshape(128, 128)
  np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_matmul_and_gradients_use_quantised_operands():
  rng = np.random.default_rng(2)
  x = rng.standard_normal((8, 128)).astype(np.float32)
  w = (0.05 * rng.standard_normal((128, 256))).astype(np.float32)
  g = rng.standard_normal((8, 256)).astype(np.float32)
  y, vjp = jax.vjp(fp8.fp8_matmul, jnp.asarray(x), jnp.asarray(w))
  xq, wq, gq = _ref_rows(x, 128), np.asarray(fp8.quantize_blocks(jnp.asarray(w))), \
      _ref_rows(g, 128)
  np.testing.assert_allclose(np.asarray(y), xq @ wq, rtol=1e-4, atol=1e-4)
  dx, dw = vjp(jnp.asarray(g))
  np.testing.assert_allclose(np.asarray(dx), gq @ wq.T, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(dw), xq.T @ gq, rtol=1e-4, atol=1e-4)
  # E4M3 has 3 mantissa bits: the product is within a few percent of the f32 one.
  rel = np.linalg.norm(np.asarray(y) - x @ w) / np.linalg.norm(x @ w)
  assert 1e-3 < rel < 0.05


@pytest.mark.parametrize("size,tile", [(64, 64), (128, 128), (384, 128), (200, 8)])
def test_tile_widths(size, tile):
  assert fp8._tile(size) == tile

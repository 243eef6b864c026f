"""Positional encodings against closed forms and frozen reference implementations."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.layers import positions

# --- sinusoidal ------------------------------------------------------------------------


def sinusoidal_reference(P, D, base=10000.0):
  """Vaswani et al. 2017, section 3.5: PE(p, 2i) = sin(p / base^(2i/D)), PE(p, 2i+1) = cos."""
  pe = np.zeros((P, D))
  for p in range(P):
    for i in range(D // 2):
      angle = p / base ** (2 * i / D)
      pe[p, 2 * i] = math.sin(angle)
      pe[p, 2 * i + 1] = math.cos(angle)
  return pe


@pytest.mark.parametrize("D,base", [(8, 10000.0), (6, 100.0)])
def test_sinusoidal_matches_closed_form(D, base):
  P = 40
  pos = jnp.arange(P)[None]
  got = np.asarray(positions.sinusoidal_embedding(pos, D, base))
  assert got.shape == (1, P, D)
  np.testing.assert_allclose(got[0], sinusoidal_reference(P, D, base), atol=2e-5)


def test_sinusoidal_hand_values_and_arbitrary_positions():
  got = np.asarray(positions.sinusoidal_embedding(jnp.array([[0, 1], [3, 0]]), 4))
  # Position 0: sin 0 = 0, cos 0 = 1 on every frequency.
  np.testing.assert_allclose(got[0, 0], [0, 1, 0, 1], atol=1e-7)
  np.testing.assert_allclose(got[1, 1], [0, 1, 0, 1], atol=1e-7)
  # D = 4: frequencies 1 and 1/100.
  np.testing.assert_allclose(got[0, 1], [math.sin(1), math.cos(1), math.sin(0.01),
                                         math.cos(0.01)], atol=1e-6)
  np.testing.assert_allclose(got[1, 0], [math.sin(3), math.cos(3), math.sin(0.03),
                                         math.cos(0.03)], atol=1e-6)


def test_sinusoidal_odd_dim_rejected():
  with pytest.raises(ValueError, match="even"):
    positions.sinusoidal_embedding(jnp.arange(3)[None], 5)


# --- RoPE ------------------------------------------------------------------------------


def rope_reference(x_BTNH, pos_BT, base=10000.0):
  """Frozen loop reference: pair (x[i], x[i + H/2]) rotated by angle p * base^(-2i/H)."""
  x = np.asarray(x_BTNH, np.float64)
  B, T, N, H = x.shape
  half = H // 2
  out = np.zeros_like(x)
  for b in range(B):
    for t in range(T):
      p = float(pos_BT[b][t])
      for n in range(N):
        for i in range(half):
          a = p * base ** (-2 * i / H)
          x1, x2 = x[b, t, n, i], x[b, t, n, i + half]
          out[b, t, n, i] = x1 * math.cos(a) - x2 * math.sin(a)
          out[b, t, n, i + half] = x2 * math.cos(a) + x1 * math.sin(a)
  return out


@pytest.mark.parametrize("base", [10000.0, 50.0])
def test_rope_matches_loop_reference(base):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 5, 3, 8)).astype(np.float32)
  pos = np.array([[0, 1, 2, 3, 4], [7, 3, 0, 19, 2]])
  got = np.asarray(positions.apply_rope(jnp.asarray(x), jnp.asarray(pos), base))
  np.testing.assert_allclose(got, rope_reference(x, pos, base), atol=2e-5)


def test_rope_base_changes_the_rotation():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((1, 3, 1, 8)), jnp.float32)
  pos = jnp.array([[1, 5, 9]])
  a = np.asarray(positions.apply_rope(x, pos, 10000.0))
  b = np.asarray(positions.apply_rope(x, pos, 100.0))
  assert np.abs(a - b).max() > 1e-2
  # Position 0 is the identity whatever the base.
  np.testing.assert_allclose(np.asarray(positions.apply_rope(x, jnp.zeros((1, 3), int), 7.0)),
                             np.asarray(x), atol=1e-7)


def test_rope_odd_head_dim_rejected():
  with pytest.raises(ValueError, match="even"):
    positions.apply_rope(jnp.zeros((1, 2, 1, 5)), jnp.zeros((1, 2), int))


@pytest.mark.parametrize("base", [10000.0, 30.0])
def test_rope_score_depends_only_on_relative_position(base):
  rng = np.random.default_rng(2)
  H = 8
  q = jnp.asarray(rng.standard_normal((1, 1, 1, H)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((1, 1, 1, H)), jnp.float32)

  @jax.jit
  def score(m, n):
    qm = positions.apply_rope(q, jnp.full((1, 1), m), base)
    kn = positions.apply_rope(k, jnp.full((1, 1), n), base)
    return jnp.sum(qm * kn)

  diffs = {}
  for d in (0, 1, 2, 5):
    diffs[d] = [float(score(m, m - d)) for m in (d, d + 1, d + 7, d + 23)]
    np.testing.assert_allclose(diffs[d], diffs[d][0], atol=1e-4, rtol=1e-4)
  # Swapping the roles (negative difference) is a different function of the distance.
  neg = [float(score(m, m + 3)) for m in (0, 4, 11)]
  np.testing.assert_allclose(neg, neg[0], atol=1e-4, rtol=1e-4)
  values = [v[0] for v in diffs.values()] + [neg[0]]
  for i in range(len(values)):
    for j in range(i):
      assert abs(values[i] - values[j]) > 1e-3, (values, i, j)
  # The unrotated dot product is the score at distance 0.
  np.testing.assert_allclose(diffs[0][0], float(jnp.sum(q * k)), rtol=1e-5)


# --- ALiBi -----------------------------------------------------------------------------


def press_get_slopes(n):
  """Frozen copy of get_slopes from Press et al.'s reference code (ofirpress/attention_with_
  linear_biases, fairseq/models/transformer.py)."""
  def get_slopes_power_of_2(n):
    start = (2 ** (-2 ** -(math.log2(n) - 3)))
    ratio = start
    return [start * ratio ** i for i in range(n)]

  if math.log2(n).is_integer():
    return get_slopes_power_of_2(n)
  closest_power_of_2 = 2 ** math.floor(math.log2(n))
  return (get_slopes_power_of_2(closest_power_of_2)
          + press_get_slopes(2 * closest_power_of_2)[0::2][:n - closest_power_of_2])


@pytest.mark.parametrize("n", [1, 2, 6, 8, 12, 16])
def test_alibi_slopes_match_press_reference(n):
  got = np.asarray(positions.alibi_slopes(n))
  assert got.shape == (n,)
  np.testing.assert_allclose(got, press_get_slopes(n), rtol=1e-6)


def test_alibi_slopes_published_values_for_8_heads():
  # Press et al. 2022, section 3: "For 8 heads, the slopes are 1/2, 1/4, ..., 1/256".
  np.testing.assert_allclose(np.asarray(positions.alibi_slopes(8)),
                             [1 / 2 ** k for k in range(1, 9)], rtol=1e-7)


def test_alibi_slopes_hand_values_for_12_heads():
  # 8 slopes of 8 heads, then every other slope of 16 heads (2^-0.5, 2^-1.5, ...).
  want = [2.0 ** -k for k in range(1, 9)] + [2.0 ** -(k + 0.5) for k in range(4)]
  np.testing.assert_allclose(np.asarray(positions.alibi_slopes(12)), want, rtol=1e-6)


def test_alibi_bias_is_minus_slope_times_distance():
  N = 4
  q_pos = np.array([[0, 1, 2], [5, 6, 7]])
  k_pos = np.array([[0, 1, 2, 3], [0, 2, 4, 6]])
  got = np.asarray(positions.alibi_bias(jnp.asarray(q_pos), jnp.asarray(k_pos), N))
  assert got.shape == (2, N, 3, 4)
  slopes = press_get_slopes(N)
  want = np.zeros((2, N, 3, 4))
  for b in range(2):
    for n in range(N):
      for t in range(3):
        for s in range(4):
          want[b, n, t, s] = -slopes[n] * abs(q_pos[b, t] - k_pos[b, s])
  np.testing.assert_allclose(got, want, rtol=1e-6)


# --- T5 relative position buckets ------------------------------------------------------


def t5_bucket_reference(relative_position, bidirectional=True, num_buckets=32,
                        max_distance=128):
  """Frozen pure-Python copy of Mesh TensorFlow's _relative_position_bucket (used by T5),
  one scalar at a time."""
  ret = 0
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    ret += int(n < 0) * num_buckets
    n = abs(n)
  else:
    n = max(n, 0)
  # now n is in the range [0, inf)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  if is_small:
    return ret + n
  val_if_large = max_exact + int(
      math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact))
  val_if_large = min(val_if_large, num_buckets - 1)
  return ret + val_if_large


@pytest.mark.parametrize("bidirectional", [True, False])
def test_t5_buckets_match_reference(bidirectional):
  rel = np.arange(-300, 301)
  got = np.asarray(positions.relative_position_bucket(jnp.asarray(rel)[None, None],
                                                      bidirectional, 32, 128))[0, 0]
  want = np.array([t5_bucket_reference(int(r), bidirectional, 32, 128) for r in rel])
  mismatch = np.nonzero(got != want)[0]
  assert mismatch.size == 0, [(int(rel[i]), int(got[i]), int(want[i])) for i in mismatch]


def test_t5_buckets_other_sizes_match_reference():
  rel = np.arange(-70, 71)
  for bidirectional in (True, False):
    got = np.asarray(positions.relative_position_bucket(jnp.asarray(rel), bidirectional, 16,
                                                        40))
    want = [t5_bucket_reference(int(r), bidirectional, 16, 40) for r in rel]
    np.testing.assert_array_equal(got, want)


def test_t5_buckets_hand_values():
  rel = jnp.array([0, -1, -7, -8, -300, 1, 7, 300])
  # Causal: keys after the query (rel > 0) all fall in bucket 0; exact below 16; last bucket 31.
  np.testing.assert_array_equal(
      np.asarray(positions.relative_position_bucket(rel, False)), [0, 1, 7, 8, 31, 0, 0, 0])
  # Bidirectional: 16 buckets per side, exact below 8, keys after the query offset by 16.
  np.testing.assert_array_equal(
      np.asarray(positions.relative_position_bucket(rel, True)), [0, 1, 7, 8, 15, 17, 23, 31])


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_bias_gathers_table_by_bucket(bidirectional):
  N, K = 3, 32
  module = positions.RelativePositionBias(N, bidirectional=bidirectional, num_buckets=K,
                                          max_distance=128)
  q_pos = np.array([[0, 5, 40], [200, 1, 17]])
  k_pos = np.array([[0, 1, 2, 3, 150], [0, 30, 17, 16, 300]])
  variables = jax.eval_shape(lambda: nn.meta.unbox(
      module.init(jax.random.key(0), jnp.asarray(q_pos), jnp.asarray(k_pos))))
  assert variables["params"]["embedding"].shape == (K, N)
  table = np.arange(K)[:, None] * 10.0 + np.arange(N)[None, :]  # value = 10 * bucket + head
  got = np.asarray(module.apply({"params": {"embedding": jnp.asarray(table, jnp.float32)}},
                                jnp.asarray(q_pos), jnp.asarray(k_pos)))
  assert got.shape == (2, N, 3, 5)
  want = np.zeros(got.shape)
  for b in range(2):
    for t in range(3):
      for s in range(5):
        bucket = t5_bucket_reference(int(k_pos[b, s] - q_pos[b, t]), bidirectional, K, 128)
        for n in range(N):
          want[b, n, t, s] = table[bucket, n]
  np.testing.assert_array_equal(got, want)

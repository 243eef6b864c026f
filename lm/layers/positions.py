"""Positional encodings. Legend: B batch, T query length, S key length, D model dim,
N heads, H head dim.

Three ways to tell attention where tokens are:
- added to the token embeddings: learned absolute (GPT-2) and sinusoidal
  (Vaswani et al. 2017);
- rotated into queries and keys: RoPE (Su et al. 2021), so q·k depends on m - n only;
- added to the attention logits: ALiBi (Press et al. 2022) and T5's learned relative
  position buckets (Raffel et al. 2020). These are "bias functions" `(q_pos_BT,
  k_pos_BS) -> bias_BNTS` that attention evaluates on whichever (query, key) blocks
  it computes, which keeps block-sparse attention sparse.

All take explicit positions, so a KV cache just passes `cache_index + arange(T)`.
"""

import dataclasses
import math

import flax.linen as nn
import jax.numpy as jnp

from lm.layers import init

POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "t5", "none")


class LearnedPositions(nn.Module):
  """A trained table of `max_len` position vectors added to the token embeddings."""
  max_len: int
  embed_dim: int

  @nn.compact
  def __call__(self, positions_BT):
    table = self.param("embedding", init.normal(init.DEFAULT_STDDEV, (None, "embed")),
                       (self.max_len, self.embed_dim))
    return jnp.take(table, positions_BT, axis=0)


def sinusoidal_embedding(positions_BT, dim: int, base: float = 10000.0):
  """PE[p, 2i] = sin(p / base^(2i/D)), PE[p, 2i+1] = cos(p / base^(2i/D))."""
  if dim % 2:
    raise ValueError(f"sinusoidal positions need an even embed_dim, got {dim}")
  inv_freq_F = base ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
  angles_BTF = positions_BT[..., None].astype(jnp.float32) * inv_freq_F
  # Interleave so even channels hold sin and odd channels cos, as in the paper.
  return jnp.stack([jnp.sin(angles_BTF), jnp.cos(angles_BTF)], axis=-1).reshape(
      *positions_BT.shape, dim)


ROPE_SCALINGS = ("none", "linear", "ntk", "yarn")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Context extension of RoPE by `factor` beyond the `original_max_len` it was trained at.

  linear  position interpolation (Chen et al. 2023): every frequency / factor, i.e.
          position p is rotated as p / factor would be.
  ntk     NTK-aware (bloc97 2023): base' = base * factor^(H / (H - 2)); high frequencies
          stay almost as trained, the lowest is interpolated by the full factor.
  yarn    YaRN (Peng et al. 2023, eq. 17-19): per-frequency ramp on r = L / wavelength:
          r < beta_slow interpolated (/ factor), r > beta_fast kept, linear in between;
          q and k are scaled by 0.1 ln(factor) + 1 (the attention temperature).
  """
  kind: str = "none"
  factor: float = 1.0
  original_max_len: int = 0  # yarn: the training context length L
  beta_fast: float = 32.0
  beta_slow: float = 1.0

  def __post_init__(self):
    if self.kind not in ROPE_SCALINGS:
      raise ValueError(f"rope scaling {self.kind!r}; known: {ROPE_SCALINGS}")
    if self.factor < 1.0:
      raise ValueError(f"rope scaling factor must be >= 1, got {self.factor}")
    if self.kind == "yarn" and (self.original_max_len <= 0 or
                                not 0 < self.beta_slow < self.beta_fast):
      raise ValueError("yarn needs original_max_len > 0 and 0 < beta_slow < beta_fast")


def rope_frequencies(head_dim: int, base: float = 10000.0, scaling: RopeScaling | None = None):
  """(inverse frequencies theta_i for i < H/2, scale applied to q and k)."""
  inv_freq_F = base ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  s = scaling or RopeScaling()
  if s.kind == "linear":
    return inv_freq_F / s.factor, 1.0
  if s.kind == "ntk":
    ntk_base = base * s.factor ** (head_dim / (head_dim - 2))
    return ntk_base ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim), 1.0
  if s.kind == "yarn":
    r_F = s.original_max_len * inv_freq_F / (2 * math.pi)  # turns within the trained context
    keep_F = jnp.clip((r_F - s.beta_slow) / (s.beta_fast - s.beta_slow), 0.0, 1.0)
    inv_freq_F = (1 - keep_F) * inv_freq_F / s.factor + keep_F * inv_freq_F
    return inv_freq_F, 0.1 * math.log(s.factor) + 1.0
  return inv_freq_F, 1.0


def apply_rope(x_BTNH, positions_BT, base: float = 10000.0, scaling: RopeScaling | None = None):
  """Rotates each pair (x[i], x[i + H/2]) by angle p * base^(-2i/H) (GPT-NeoX/LLaMA layout).

  Rotating q at position m and k at position n makes q·k a function of (m - n).
  `scaling` changes the frequencies for context extension (RopeScaling).
  """
  H = x_BTNH.shape[-1]
  if H % 2:
    raise ValueError(f"RoPE needs an even head_dim, got {H}")
  inv_freq_F, mscale = rope_frequencies(H, base, scaling)
  angles_BTF = positions_BT[..., None].astype(jnp.float32) * inv_freq_F
  cos_BT1F = mscale * jnp.cos(angles_BTF)[:, :, None]
  sin_BT1F = mscale * jnp.sin(angles_BTF)[:, :, None]
  x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos_BT1F - x2 * sin_BT1F, x2 * cos_BT1F + x1 * sin_BT1F], axis=-1)
  return out.astype(x_BTNH.dtype)


def alibi_slopes(num_heads: int) -> jnp.ndarray:
  """Head-specific slopes: the geometric sequence 2^(-8/n), 2^(-16/n), ... of Press et al.

  For a head count that is not a power of two, the paper takes the slopes of the nearest
  lower power of two and fills up with every other slope of twice that many heads.
  """
  def power_of_two(n):
    start = 2.0 ** (-8.0 / n)
    return [start ** (i + 1) for i in range(n)]
  n = 2 ** math.floor(math.log2(num_heads))
  slopes = power_of_two(n)
  if n < num_heads:
    slopes += power_of_two(2 * n)[0::2][:num_heads - n]
  return jnp.asarray(slopes, jnp.float32)


def alibi_bias(q_pos_BT, k_pos_BS, num_heads: int):
  """-slope_h * |i - j|: a linear penalty on distance (future keys are masked when causal)."""
  dist_BTS = jnp.abs(q_pos_BT[:, :, None] - k_pos_BS[:, None, :]).astype(jnp.float32)
  return -alibi_slopes(num_heads)[None, :, None, None] * dist_BTS[:, None]


def relative_position_bucket(relative_BTS, bidirectional: bool, num_buckets: int = 32,
                             max_distance: int = 128):
  """T5's buckets for relative position k - q: exact for small distances, log-spaced up to
  `max_distance`, then one bucket for everything farther. Bidirectional models give
  the half of the buckets to keys after the query; causal models see only keys before.
  """
  n = -relative_BTS  # > 0: key before the query
  bucket = jnp.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    bucket = bucket + (n < 0).astype(n.dtype) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  # max(n, 1) keeps log finite where is_small already picks the exact bucket.
  log_ratio = jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact) / math.log(
      max_distance / max_exact)
  large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(n.dtype)
  large = jnp.minimum(large, num_buckets - 1)
  return bucket + jnp.where(is_small, n, large)


class RelativePositionBias(nn.Module):
  """T5's learned scalar per (bucket, head), added to the attention logits.

  Call it as a bias function: `(q_pos_BT, k_pos_BS) -> bias_BNTS`. T5 computes it once
  and shares it across all layers of a stack.
  """
  num_heads: int
  bidirectional: bool
  num_buckets: int = 32
  max_distance: int = 128

  @nn.compact
  def __call__(self, q_pos_BT, k_pos_BS):
    table_KN = self.param("embedding", init.normal(init.DEFAULT_STDDEV, (None, "heads")),
                          (self.num_buckets, self.num_heads))
    relative_BTS = k_pos_BS[:, None, :] - q_pos_BT[:, :, None]
    bucket_BTS = relative_position_bucket(relative_BTS, self.bidirectional, self.num_buckets,
                                          self.max_distance)
    return jnp.transpose(jnp.take(table_KN, bucket_BTS, axis=0), (0, 3, 1, 2))

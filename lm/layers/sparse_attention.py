"""Block-sparse attention for the Sparse Transformer patterns GPT-3 uses.

Legend: B batch, T length, N query heads, K key/value heads, H head dim, b block
width, nb number of blocks, M = T / stride.

GPT-3 alternates dense layers with "locally banded sparse" ones (Brown et al. 2020,
after Child et al. 2019). The patterns, as masks, live in lm/layers/masks.py; here
they are computed without touching the blocks they hide, so the cost really falls:

- local (window w): query i sees keys i-w < j <= i. With blocks of width b = w,
  query block n needs only key blocks n-1 and n: T * 2w scores instead of T^2.
- strided (stride s): query i sees keys j <= i with (i - j) % s == 0, i.e. only its
  own residue class mod s: s independent causal attentions of length T/s, T^2/s scores.

Both rearrange the blocks into the batch axis and call the same dense kernel, with the
caller's mask and bias evaluated on those blocks only, so they equal dense attention
under `mask & local_mask` / `mask & strided_mask` exactly (up to float rounding),
provided positions grow by one per token within each document (packed rows may restart
them, as long as the caller's mask keeps documents apart).
"""

import jax.numpy as jnp

from lm.layers import masks as masks_lib

PATTERNS = ("dense", "local", "strided")
# Per-layer cycles a model config may name; layer i uses cycle[i % len(cycle)].
LAYOUTS = {
    "dense": ("dense",),
    "local": ("local",),
    "strided": ("strided",),
    "alternating_local": ("dense", "local"),  # GPT-3
    "local_strided": ("local", "strided"),  # Sparse Transformer's factorised attention
}


def layer_patterns(layout: str, num_layers: int) -> list[str]:
  if layout not in LAYOUTS:
    raise ValueError(f"attention_pattern {layout!r}; known: {sorted(LAYOUTS)}")
  cycle = LAYOUTS[layout]
  return [cycle[i % len(cycle)] for i in range(num_layers)]


def _pad_length(x, length: int, axis: int, front: int = 0, value=0):
  """Pads `front` entries before and as many as needed after to reach `length`."""
  widths = [(0, 0)] * x.ndim
  widths[axis] = (front, length - front - x.shape[axis])
  return jnp.pad(x, widths, constant_values=value)


def _full_batch(pos_BT, mask_B1TT, batch: int):
  """Batch-1 positions and masks broadcast, as the dense kernel allows."""
  pos_BT = jnp.broadcast_to(pos_BT, (batch, pos_BT.shape[1]))
  return pos_BT, jnp.broadcast_to(mask_B1TT, (batch, *mask_B1TT.shape[1:]))


def local_attention(q_BTNH, k_BTKH, v_BTKH, mask_B1TT, pos_BT, window: int, bias_fn=None,
                    **kernel_kw):
  """Causal banded attention (window w) over key blocks n-1 and n of each query block n."""
  from lm.layers.attention import dot_product_attention
  B, T, N, H = q_BTNH.shape
  pos_BT, mask_B1TT = _full_batch(pos_BT, mask_B1TT, B)
  b = window
  nb = -(-T // b)
  Tp = nb * b
  # Queries: (B*nb, b). Keys: one zero block in front, then block n-1 and n side by side.
  q_Xb = _pad_length(q_BTNH, Tp, 1).reshape(B * nb, b, N, H)
  pos_q_Xb = _pad_length(pos_BT, Tp, 1).reshape(B * nb, b)

  def band(x_BT, value=0):
    x_blocks = _pad_length(x_BT, Tp + b, 1, front=b, value=value)
    x_blocks = x_blocks.reshape(B, nb + 1, b, *x_BT.shape[2:])
    return jnp.concatenate([x_blocks[:, :-1], x_blocks[:, 1:]], axis=2).reshape(
        B * nb, 2 * b, *x_BT.shape[2:])

  k_X2b, v_X2b = band(k_BTKH), band(v_BTKH)
  pos_k_X2b = band(pos_BT, value=-1)
  # The caller's mask on the same blocks: diagonal (n, n) and (n, n+1) of the padded grid.
  m = _pad_length(_pad_length(mask_B1TT, Tp, 2), Tp + b, 3, front=b, value=False)
  m = m.reshape(B, m.shape[1], nb, b, nb + 1, b)
  prev_B1bbn = jnp.diagonal(m, offset=0, axis1=2, axis2=4)
  curr_B1bbn = jnp.diagonal(m, offset=1, axis1=2, axis2=4)
  mask_X1b2b = jnp.concatenate([prev_B1bbn, curr_B1bbn], axis=3)  # (B, 1, b, 2b, nb)
  mask_X1b2b = jnp.moveaxis(mask_X1b2b, 4, 1).reshape(B * nb, m.shape[1], b, 2 * b)
  mask_X1b2b = mask_X1b2b & masks_lib.local_mask(pos_q_Xb, pos_k_X2b, window)
  bias = None if bias_fn is None else bias_fn(pos_q_Xb, pos_k_X2b)
  out_XbNH = dot_product_attention(q_Xb, k_X2b, v_X2b, mask_X1b2b, bias, **kernel_kw)
  return out_XbNH.reshape(B, Tp, N, H)[:, :T]


def strided_attention(q_BTNH, k_BTKH, v_BTKH, mask_B1TT, pos_BT, stride: int, bias_fn=None,
                      **kernel_kw):
  """Strided attention as `stride` independent attentions, one per residue class mod s."""
  from lm.layers.attention import dot_product_attention
  B, T, N, H = q_BTNH.shape
  pos_BT, mask_B1TT = _full_batch(pos_BT, mask_B1TT, B)
  s = stride
  M = -(-T // s)
  Tp = M * s

  def by_residue(x_BT):  # (B, T, ...) -> (B*s, M, ...): row r holds positions r, r+s, ...
    x = _pad_length(x_BT, Tp, 1).reshape(B, M, s, *x_BT.shape[2:])
    return jnp.swapaxes(x, 1, 2).reshape(B * s, M, *x_BT.shape[2:])

  q_XM, k_XM, v_XM, pos_XM = by_residue(q_BTNH), by_residue(k_BTKH), by_residue(v_BTKH), \
      by_residue(pos_BT)
  m = _pad_length(_pad_length(mask_B1TT, Tp, 2), Tp, 3, value=False)
  m = m.reshape(B, m.shape[1], M, s, M, s)
  m = jnp.diagonal(m, axis1=3, axis2=5)  # (B, 1, M, M, s): same residue for query and key
  mask_X1MM = jnp.moveaxis(m, 4, 1).reshape(B * s, m.shape[1], M, M)
  mask_X1MM = mask_X1MM & masks_lib.strided_mask(pos_XM, pos_XM, stride)
  bias = None if bias_fn is None else bias_fn(pos_XM, pos_XM)
  out_XMNH = dot_product_attention(q_XM, k_XM, v_XM, mask_X1MM, bias, **kernel_kw)
  out = jnp.swapaxes(out_XMNH.reshape(B, s, M, N, H), 1, 2).reshape(B, Tp, N, H)
  return out[:, :T]

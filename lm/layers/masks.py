"""Attention masks as boolean arrays: True where a query may attend to a key.

Shapes: B batch, T query length, S key length. Every builder returns `mask_B1TS`
(broadcast over heads); combine them with `&`. They are built from token
positions, validity flags and segment ids, so the same code serves full forward
passes, packed batches and KV-cache decoding (where queries sit at positions
`index .. index+T-1` and keys are the cache slots `0 .. S-1`).
"""

import jax
import jax.numpy as jnp


def causal_mask(q_pos_BT: jnp.ndarray, k_pos_BS: jnp.ndarray) -> jnp.ndarray:
  """Query at position i sees keys at positions <= i (decoder self-attention)."""
  return k_pos_BS[:, None, None, :] <= q_pos_BT[:, None, :, None]


def padding_mask(q_valid_BT: jnp.ndarray, k_valid_BS: jnp.ndarray) -> jnp.ndarray:
  """Bidirectional attention among real tokens: both query and key must be valid.

  Also the encoder-decoder cross mask: decoder tokens (queries) x encoder tokens (keys).
  """
  return q_valid_BT[:, None, :, None] & k_valid_BS[:, None, None, :]


def valid_keys_mask(k_valid_BS: jnp.ndarray) -> jnp.ndarray:
  """Hides keys that are padding or cache slots not yet written; all queries kept."""
  return k_valid_BS[:, None, None, :]


def segment_mask(q_seg_BT: jnp.ndarray, k_seg_BS: jnp.ndarray) -> jnp.ndarray:
  """Packed sequences: attend only within the same document; segment id 0 is padding."""
  same = q_seg_BT[:, None, :, None] == k_seg_BS[:, None, None, :]
  return same & (q_seg_BT[:, None, :, None] != 0) & (k_seg_BS[:, None, None, :] != 0)


def prefix_lm_mask(q_pos_BT: jnp.ndarray, k_pos_BS: jnp.ndarray,
                   prefix_len_B: jnp.ndarray) -> jnp.ndarray:
  """Bidirectional over each row's first `prefix_len` positions, causal after (T5's prefix LM).

  A key inside the prefix is visible to every query; past the prefix the usual causal rule.
  """
  in_prefix_B1S = k_pos_BS[:, None, :] < prefix_len_B[:, None, None]
  return causal_mask(q_pos_BT, k_pos_BS) | in_prefix_B1S[:, :, None, :]


def cross_mask(dec_valid_BT: jnp.ndarray, enc_valid_BS: jnp.ndarray) -> jnp.ndarray:
  """Encoder-decoder attention: every real decoder token sees every real encoder token."""
  return padding_mask(dec_valid_BT, enc_valid_BS)


def local_mask(q_pos_BT: jnp.ndarray, k_pos_BS: jnp.ndarray, window: int) -> jnp.ndarray:
  """Causal band (Sparse Transformer / GPT-3 local layers): 0 <= i - j < window."""
  d = q_pos_BT[:, None, :, None] - k_pos_BS[:, None, None, :]
  return (d >= 0) & (d < window)


def strided_mask(q_pos_BT: jnp.ndarray, k_pos_BS: jnp.ndarray, stride: int) -> jnp.ndarray:
  """Sparse Transformer's strided pattern: keys j <= i with (i - j) a multiple of stride."""
  d = q_pos_BT[:, None, :, None] - k_pos_BS[:, None, None, :]
  return (d >= 0) & (d % stride == 0)


# --- from token ids -------------------------------------------------------------------------

def valid_from_tokens(tokens_BT: jnp.ndarray, pad_id: int = 0) -> jnp.ndarray:
  return tokens_BT != pad_id


def segment_ids_from_eos(tokens_BT: jnp.ndarray, eos_id: int, pad_id: int | None = None):
  """Documents packed in one row, each ended by `eos_id`: ids 1, 2, ... (0 for padding).

  The EOS token belongs to the document it ends.
  """
  ends_before_BT = jnp.cumsum(tokens_BT == eos_id, axis=1) - (tokens_BT == eos_id)
  seg_BT = ends_before_BT + 1
  if pad_id is not None:
    seg_BT = jnp.where(tokens_BT == pad_id, 0, seg_BT)
  return seg_BT.astype(jnp.int32)


def positions_from_segments(seg_BT: jnp.ndarray) -> jnp.ndarray:
  """Positions that restart at 0 at each new document of a packed row."""
  idx_BT = jnp.broadcast_to(jnp.arange(seg_BT.shape[1]), seg_BT.shape)
  starts_BT = jnp.concatenate([jnp.ones_like(seg_BT[:, :1], bool),
                               seg_BT[:, 1:] != seg_BT[:, :-1]], axis=1)
  start_idx_BT = jax.lax.cummax(jnp.where(starts_BT, idx_BT, 0), axis=1)
  return (idx_BT - start_idx_BT).astype(jnp.int32)

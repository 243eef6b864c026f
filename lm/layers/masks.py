"""Attention masks as boolean arrays: True where a query may attend to a key.

Shapes: B batch, T query length, S key length. Masks broadcast over heads as
`mask_B1TS`. Built from positions so the same code serves full forward passes and
KV-cache decoding (where queries sit at positions `index .. index+T-1`).
"""

import jax.numpy as jnp


def causal_mask(q_pos_BT: jnp.ndarray, k_pos_BS: jnp.ndarray) -> jnp.ndarray:
  """Query at position i sees keys at positions <= i."""
  return (k_pos_BS[:, None, None, :] <= q_pos_BT[:, None, :, None])


def valid_keys_mask(k_valid_BS: jnp.ndarray) -> jnp.ndarray:
  """Masks out keys that are padding or not yet written to a cache."""
  return k_valid_BS[:, None, None, :]

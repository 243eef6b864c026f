"""Multi-head dot-product attention with an optional KV cache.

Legend: B batch, T query length, S key length (cache length when decoding),
D model dim, N query heads, H head dim.

One code path serves training (no cache) and decoding: with a cache, the new
keys/values are written at `cache_index` and queries attend over the whole cache,
with the mask hiding slots that are not yet filled.
"""

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.layers import init
from lm.layers.precision import dot_general_for


class KVCache(NamedTuple):
  k_BSNH: jnp.ndarray
  v_BSNH: jnp.ndarray

  @classmethod
  def zeros(cls, batch: int, length: int, num_heads: int, head_dim: int, dtype=jnp.float32):
    shape = (batch, length, num_heads, head_dim)
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def dot_product_attention(q_BTNH, k_BSNH, v_BSNH, mask_B1TS, dropout_fn=None):
  """softmax(q k^T / sqrt(H) + mask) v, written as explicit einsums (fast on CPU)."""
  scale = q_BTNH.shape[-1] ** -0.5
  logits_BNTS = jnp.einsum("btnh,bsnh->bnts", q_BTNH * scale, k_BSNH)
  logits_BNTS = jnp.where(mask_B1TS, logits_BNTS, jnp.finfo(logits_BNTS.dtype).min)
  probs_BNTS = jax.nn.softmax(logits_BNTS, axis=-1)
  if dropout_fn is not None:
    probs_BNTS = dropout_fn(probs_BNTS)
  return jnp.einsum("bnts,bsnh->btnh", probs_BNTS, v_BSNH)


class MultiHeadAttention(nn.Module):
  num_heads: int
  head_dim: int
  num_layers_for_init: int = 1  # scales the output projection init (GPT-2)
  dropout_rate: float = 0.0
  use_bias: bool = True
  matmul_dtype: str = "float32"  # bfloat16: bf16 operands, f32 accumulation

  @nn.compact
  def __call__(self, x_BTD, mask_B1TS, *, cache: KVCache | None = None,
               cache_index=None, deterministic: bool = True):
    d_model = x_BTD.shape[-1]
    proj = lambda name: nn.DenseGeneral(
        (self.num_heads, self.head_dim), use_bias=self.use_bias,
        dot_general=dot_general_for(self.matmul_dtype),
        kernel_init=init.normal(init.DEFAULT_STDDEV, ("embed", "heads", "head_dim")),
        bias_init=init.zeros(("heads", "head_dim")), name=name)
    q_BTNH, k_BTNH, v_BTNH = proj("query")(x_BTD), proj("key")(x_BTD), proj("value")(x_BTD)

    if cache is not None:
      k_BSNH = jax.lax.dynamic_update_slice_in_dim(cache.k_BSNH, k_BTNH, cache_index, axis=1)
      v_BSNH = jax.lax.dynamic_update_slice_in_dim(cache.v_BSNH, v_BTNH, cache_index, axis=1)
      cache = KVCache(k_BSNH, v_BSNH)
    else:
      k_BSNH, v_BSNH = k_BTNH, v_BTNH

    dropout_fn = None
    if self.dropout_rate > 0 and not deterministic:
      dropout_fn = nn.Dropout(self.dropout_rate, deterministic=False)
    out_BTNH = dot_product_attention(q_BTNH, k_BSNH, v_BSNH, mask_B1TS, dropout_fn)
    out_stddev = init.DEFAULT_STDDEV / (2 * self.num_layers_for_init) ** 0.5
    y_BTD = nn.DenseGeneral(
        d_model, axis=(-2, -1), use_bias=self.use_bias,
        dot_general=dot_general_for(self.matmul_dtype),
        kernel_init=init.normal(out_stddev, ("heads", "head_dim", "embed")),
        bias_init=init.zeros(("embed",)), name="out")(out_BTNH)
    return y_BTD, cache

"""Multi-head latent attention (DeepSeek-V2/V3, arXiv:2405.04434 sec. 2.1) with a latent KV cache.

Legend: B batch, T query length, S key length (cache length when decoding), D model dim,
N heads, H per-head dim (content part of queries/keys, and values), C latent dim d_c,
R decoupled RoPE dim, P query latent dim d_c'.

Keys and values are jointly compressed into one latent c_kv = RMSNorm(W_dkv x) of C << 2NH
numbers per token; per-head keys and values are up-projections of it. RoPE cannot be applied
to keys that are recomputed from the latent (it would not commute with the up-projection),
so position enters through a separate small key k_rope = RoPE(W_kr x) of R dims *shared by
all heads*, concatenated to every head's content key; queries get a matching per-head RoPE
part. Queries may also be compressed (c_q = RMSNorm(W_dq x), rank P). The cache holds only
c_kv and k_rope: (C + R) numbers per token and layer, against 2NH for MHA and 2KH for GQA
(`kv_cache_bytes_per_token`). Decoding up-projects the cached latent at every step (the
"absorbed" variant, which folds W_uk into the query and W_uv into the output, is not done).
"""

import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.layers import init
from lm.layers.positions import apply_rope
from lm.layers.precision import dot_general_for


@dataclasses.dataclass(frozen=True)
class MLAConfig:
  num_heads: int
  head_dim: int  # content dim of each query/key head and of each value head
  kv_rank: int = 32  # C = d_c
  q_rank: int = 0  # P = d_c' (0: queries straight from x)
  rope_dim: int = 16  # R (even)
  rope_base: float = 10000.0
  rope_scaling: Any = None  # an lm.layers.positions.RopeScaling (context extension)
  dropout: float = 0.0
  matmul_dtype: str = "float32"
  num_layers_for_init: int = 1

  def __post_init__(self):
    if self.kv_rank <= 0 or self.q_rank < 0 or self.rope_dim <= 0 or self.rope_dim % 2:
      raise ValueError(f"mla needs kv_rank > 0, q_rank >= 0 and an even rope_dim > 0, got "
                       f"{self.kv_rank}, {self.q_rank}, {self.rope_dim}")


class MLACache(NamedTuple):
  latent_BSC: jnp.ndarray
  k_rope_BSR: jnp.ndarray

  @classmethod
  def zeros(cls, batch: int, length: int, kv_rank: int, rope_dim: int, dtype=jnp.float32):
    return cls(jnp.zeros((batch, length, kv_rank), dtype),
               jnp.zeros((batch, length, rope_dim), dtype))


def kv_cache_bytes_per_token(gpt_config, bytes_per_number: int = 4) -> int:
  """Cache bytes one token costs across all layers: MLA (C + R), else 2 K H (MHA, GQA, MQA)."""
  c = gpt_config
  if getattr(c, "attention", "mha") == "mla":
    per_layer = c.mla_kv_rank + c.mla_rope_dim
  else:
    per_layer = 2 * (c.num_kv_heads or c.num_heads) * c.head_dim
  return per_layer * c.num_layers * bytes_per_number


class MLA(nn.Module):
  config: MLAConfig

  def _dense(self, features, names, name, stddev=init.DEFAULT_STDDEV, axis=-1):
    return nn.DenseGeneral(features, axis=axis, use_bias=False,
                           dot_general=dot_general_for(self.config.matmul_dtype),
                           kernel_init=init.normal(stddev, names), name=name)

  @staticmethod
  def _norm(name):
    return nn.RMSNorm(epsilon=1e-6, scale_init=init.ones((None,)), name=name)

  @nn.compact
  def __call__(self, x_BTD, mask_B1TS, *, q_pos_BT, bias_fn=None, cache: MLACache | None = None,
               cache_index=None, deterministic: bool = True):
    c = self.config
    N, H, R = c.num_heads, c.head_dim, c.rope_dim
    B, T, D = x_BTD.shape
    q_src = x_BTD
    if c.q_rank:
      q_src = self._norm("q_norm")(self._dense(c.q_rank, ("embed", None), "q_down")(x_BTD))
    q_names = (("embed",) if not c.q_rank else (None,)) + ("heads", "head_dim")
    q_BTNH = self._dense((N, H), q_names, "q_content")(q_src)
    q_rope_BTNR = apply_rope(self._dense((N, R), q_names, "q_rope")(q_src), q_pos_BT, c.rope_base,
                             c.rope_scaling)

    latent_BTC = self._norm("kv_norm")(self._dense(c.kv_rank, ("embed", None), "kv_down")(x_BTD))
    k_rope_BTR = apply_rope(self._dense((1, R), ("embed", None, None), "k_rope")(x_BTD),
                            q_pos_BT, c.rope_base, c.rope_scaling)[:, :, 0]
    if cache is not None:
      latent_BSC = jax.lax.dynamic_update_slice_in_dim(cache.latent_BSC, latent_BTC,
                                                       cache_index, axis=1)
      k_rope_BSR = jax.lax.dynamic_update_slice_in_dim(cache.k_rope_BSR, k_rope_BTR,
                                                       cache_index, axis=1)
      cache = MLACache(latent_BSC, k_rope_BSR)
      S = latent_BSC.shape[1]
      k_pos_BS = jnp.broadcast_to(jnp.arange(S)[None], (B, S))
    else:
      latent_BSC, k_rope_BSR, k_pos_BS = latent_BTC, k_rope_BTR, q_pos_BT
    k_BSNH = self._dense((N, H), (None, "heads", "head_dim"), "k_up")(latent_BSC)
    v_BSNH = self._dense((N, H), (None, "heads", "head_dim"), "v_up")(latent_BSC)

    scale = (H + R) ** -0.5
    logits_BNTS = (jnp.einsum("btnh,bsnh->bnts", q_BTNH, k_BSNH)
                   + jnp.einsum("btnr,bsr->bnts", q_rope_BTNR, k_rope_BSR)) * scale
    if bias_fn is not None:
      logits_BNTS = logits_BNTS + bias_fn(q_pos_BT, k_pos_BS)
    logits_BNTS = jnp.where(mask_B1TS, logits_BNTS, jnp.finfo(logits_BNTS.dtype).min)
    probs_BNTS = jax.nn.softmax(logits_BNTS, axis=-1)
    if c.dropout > 0 and not deterministic:
      probs_BNTS = nn.Dropout(c.dropout, deterministic=False)(probs_BNTS)
    out_BTNH = jnp.einsum("bnts,bsnh->btnh", probs_BNTS, v_BSNH)
    out_stddev = init.DEFAULT_STDDEV / (2 * c.num_layers_for_init) ** 0.5
    y_BTD = self._dense(D, ("heads", "head_dim", "embed"), "out", out_stddev,
                        axis=(-2, -1))(out_BTNH)
    return y_BTD, cache

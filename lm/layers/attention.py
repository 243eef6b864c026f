"""Multi-head attention (MHA, GQA, MQA; self and cross) with an optional KV cache.

Legend: B batch, T query length, S key length (cache length when decoding), D model
dim, N query heads, K key/value heads (N = K * G), G queries per KV head, H head dim.

One code path serves training and decoding: with a cache, the new keys/values are
written at `cache_index` and queries attend over the whole cache, the mask hiding
slots not yet written. Options, each from its paper:
  num_kv_heads  K < N shares each key/value head among N/K query heads (GQA, Ainslie
                et al. 2023); K = 1 is multi-query attention (Shazeer 2019).
  qk_norm       RMS-normalises queries and keys per head before the dot product
                (Dehghani et al. 2023), which keeps logits bounded.
  logit_softcap c * tanh(logits / c) (Gemma 2), applied after position biases.
  rope_base     > 0 rotates queries and keys by position (RoPE) in self-attention.
  pattern       dense, or the Sparse Transformer's local / strided patterns computed
                block-sparsely (lm/layers/sparse_attention.py).

Cross-attention keys/values depend on the encoder output only, so decoding projects them
once per source: a cross-attention call sows its `KVCache(k, v)` into the collection
`CROSS_KV` (when the caller makes it mutable), and a later call given that `KVCache` as
`kv_BSD` skips the key/value projections (lm/decoding.py).
"""

from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.layers import init, sparse_attention
from lm.layers import masks as masks_lib
from lm.layers.peft import LoRA, prepend_prefix
from lm.layers.positions import RopeScaling, apply_rope
from lm.layers.precision import dot_general_for

BiasFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]  # (q_pos_BT, k_pos_BS) -> B N T S
CROSS_KV = "cross_kv"  # collection of the cross-attention keys/values a decode step sows


class KVCache(NamedTuple):
  k_BSKH: jnp.ndarray
  v_BSKH: jnp.ndarray

  @classmethod
  def zeros(cls, batch: int, length: int, num_kv_heads: int, head_dim: int,
            dtype=jnp.float32):
    shape = (batch, length, num_kv_heads, head_dim)
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def dot_product_attention(q_BTNH, k_BSKH, v_BSKH, mask_B1TS, bias_BNTS=None, *,
                          softcap: float = 0.0, dropout_fn=None):
  """softmax(q k^T / sqrt(H) + bias, masked) v, as explicit einsums (fast on CPU).

  Query head n uses key/value head n // G, so K = N is standard multi-head attention.
  A query row with no visible key gets a uniform average instead of NaN.
  """
  B, T, N, H = q_BTNH.shape
  S, K = k_BSKH.shape[1], k_BSKH.shape[2]
  if N % K:
    raise ValueError(f"{N} query heads cannot share {K} key/value heads")
  G = N // K
  # With G = 1 (MHA) the group axis is dropped: XLA:CPU's fused softmax-backward
  # reduction over a 5-D array with a unit axis runs ~10x slower than over 4-D.
  q_, logits_, out_ = ("btkh", "bkts", "btkh") if G == 1 else ("btkgh", "bkgts", "btkgh")
  q_BTKGH = (q_BTNH * H ** -0.5).reshape((B, T, K, H) if G == 1 else (B, T, K, G, H))
  logits_BKGTS = jnp.einsum(f"{q_},bskh->{logits_}", q_BTKGH, k_BSKH)
  if bias_BNTS is not None:
    logits_BKGTS = logits_BKGTS + (bias_BNTS if G == 1 else
                                   bias_BNTS.reshape(bias_BNTS.shape[0], K, G, T, S))
  if softcap > 0:
    logits_BKGTS = softcap * jnp.tanh(logits_BKGTS / softcap)
  mask = mask_B1TS if G == 1 else mask_B1TS[:, :, None]
  logits_BKGTS = jnp.where(mask, logits_BKGTS, jnp.finfo(logits_BKGTS.dtype).min)
  probs_BKGTS = jax.nn.softmax(logits_BKGTS, axis=-1)
  if dropout_fn is not None:
    probs_BKGTS = dropout_fn(probs_BKGTS)
  out_BTKGH = jnp.einsum(f"{logits_},bskh->{out_}", probs_BKGTS, v_BSKH)
  return out_BTKGH.reshape(B, T, N, H)


class Attention(nn.Module):
  num_heads: int
  head_dim: int
  num_kv_heads: int = 0  # 0: as many as query heads (MHA); 1: MQA; else GQA
  num_layers_for_init: int = 1  # scales the output projection init (GPT-2)
  dropout_rate: float = 0.0
  use_bias: bool = True
  matmul_dtype: str = "float32"  # bfloat16: bf16 operands, f32 accumulation
  qk_norm: bool = False
  logit_softcap: float = 0.0  # 0 = off
  rope_base: float = 0.0  # 0 = no RoPE
  pattern: str = "dense"  # dense | local | strided
  window: int = 128  # local: each query sees itself and window - 1 earlier keys
  stride: int = 128  # strided: keys at distances 0, stride, 2 * stride, ...
  lora_rank: int = 0  # > 0: LoRA updates on `lora_targets` (lm/layers/peft.py)
  lora_alpha: float = 8.0
  lora_targets: tuple[str, ...] = ()  # of query, key, value, out
  rope_scaling: RopeScaling | None = None  # context extension (lm/layers/positions.py)

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  def _proj(self, heads: int, names: tuple[str, ...], name: str):
    dense = nn.DenseGeneral(
        (heads, self.head_dim), use_bias=self.use_bias,
        dot_general=dot_general_for(self.matmul_dtype),
        kernel_init=init.normal(init.DEFAULT_STDDEV, ("embed", *names)),
        bias_init=init.zeros(names), name=name)
    return self._with_lora(dense, name, (heads, self.head_dim), ("embed",), names)

  def _with_lora(self, dense, name, out_shape, in_names, out_names):
    if not self.lora_rank or name not in self.lora_targets:
      return dense
    lora = LoRA(self.lora_rank, self.lora_alpha, out_shape, in_names, out_names,
                name=f"lora_{name}")
    return lambda x: dense(x) + lora(x)

  @nn.compact
  def __call__(self, x_BTD, mask_B1TS, *, q_pos_BT, kv_BSD=None, k_pos_BS=None,
               bias_fn: BiasFn | None = None, cache: KVCache | None = None,
               cache_index=None, prefix_kv=None, deterministic: bool = True):
    """x_BTD: queries' inputs; kv_BSD: the sequence to attend to (None = self-attention),
    or its keys/values as sown earlier in `CROSS_KV` (a `KVCache`: not projected again).

    q_pos_BT / k_pos_BS are the positions RoPE, bias_fn and the sparse patterns use;
    k_pos_BS defaults to q_pos_BT (self-attention) or to the cache slots 0..S-1.
    prefix_kv = (k_PKH, v_PKH): keys/values every query also sees (prefix and prompt
    tuning), never cached, without positions or biases.
    """
    if self.pattern not in sparse_attention.PATTERNS:
      raise ValueError(f"attention pattern {self.pattern!r}; known: {sparse_attention.PATTERNS}")
    is_self = kv_BSD is None
    projected = isinstance(kv_BSD, KVCache)  # cross-attention keys/values from an earlier call
    kv_BSD = x_BTD if is_self else kv_BSD
    q_BTNH = self._proj(self.num_heads, ("heads", "head_dim"), "query")(x_BTD)
    if projected:
      k_BSKH, v_BSKH = kv_BSD
    else:
      k_BSKH = self._proj(self.kv_heads, ("kv_heads", "head_dim"), "key")(kv_BSD)
      v_BSKH = self._proj(self.kv_heads, ("kv_heads", "head_dim"), "value")(kv_BSD)
    if self.qk_norm:
      q_BTNH = nn.RMSNorm(epsilon=1e-6, scale_init=init.ones(("head_dim",)),
                          name="query_norm")(q_BTNH)
      if not projected:
        k_BSKH = nn.RMSNorm(epsilon=1e-6, scale_init=init.ones(("head_dim",)),
                            name="key_norm")(k_BSKH)
    if not is_self and not projected and not self.is_initializing():
      self.sow(CROSS_KV, "kv", KVCache(k_BSKH, v_BSKH))  # a no-op unless CROSS_KV is mutable
    if self.rope_base > 0 and is_self:
      q_BTNH = apply_rope(q_BTNH, q_pos_BT, self.rope_base, self.rope_scaling)
      k_BSKH = apply_rope(k_BSKH, q_pos_BT, self.rope_base,  # new keys sit where queries do
                          self.rope_scaling)
    q_BTNH = nn.with_logical_constraint(q_BTNH, ("batch", "length", "act_heads", "act_head_dim"))

    if cache is not None:
      if not is_self:
        raise ValueError("the KV cache is for self-attention; cross-attention takes its "
                         "projected keys/values as kv_BSD")
      k_BSKH = jax.lax.dynamic_update_slice_in_dim(cache.k_BSKH, k_BSKH, cache_index, axis=1)
      v_BSKH = jax.lax.dynamic_update_slice_in_dim(cache.v_BSKH, v_BSKH, cache_index, axis=1)
      cache = KVCache(k_BSKH, v_BSKH)
    if k_pos_BS is None:
      B, S = k_BSKH.shape[:2]
      k_pos_BS = (q_pos_BT if cache is None and is_self
                  else jnp.broadcast_to(jnp.arange(S)[None], (B, S)))
    k_BSKH = nn.with_logical_constraint(k_BSKH, ("batch", "length", "act_kv_heads", "act_head_dim"))

    dropout_fn = None
    if self.dropout_rate > 0 and not deterministic:
      dropout_fn = nn.Dropout(self.dropout_rate, deterministic=False)
    kw = dict(softcap=self.logit_softcap, dropout_fn=dropout_fn)
    width = {"local": self.window, "strided": self.stride}.get(self.pattern, 0)
    if width and cache is None and is_self and x_BTD.shape[1] > width and prefix_kv is None:
      # Block-sparse: only the (query, key) blocks the pattern can see are computed.
      block_fn = (sparse_attention.local_attention if self.pattern == "local"
                  else sparse_attention.strided_attention)
      out_BTNH = block_fn(q_BTNH, k_BSKH, v_BSKH, mask_B1TS, q_pos_BT, width, bias_fn, **kw)
    else:
      if self.pattern == "local":
        mask_B1TS = mask_B1TS & masks_lib.local_mask(q_pos_BT, k_pos_BS, self.window)
      elif self.pattern == "strided":
        mask_B1TS = mask_B1TS & masks_lib.strided_mask(q_pos_BT, k_pos_BS, self.stride)
      bias_BNTS = None if bias_fn is None else bias_fn(q_pos_BT, k_pos_BS)
      if prefix_kv is not None:
        k_BSKH, v_BSKH, mask_B1TS = prepend_prefix(k_BSKH, v_BSKH, mask_B1TS, prefix_kv)
        if bias_BNTS is not None:  # the prefix gets no position bias
          P = prefix_kv[0].shape[0]
          bias_BNTS = jnp.pad(bias_BNTS, [(0, 0)] * 3 + [(P, 0)])
      out_BTNH = dot_product_attention(q_BTNH, k_BSKH, v_BSKH, mask_B1TS, bias_BNTS, **kw)

    out_stddev = init.DEFAULT_STDDEV / (2 * self.num_layers_for_init) ** 0.5
    out = nn.DenseGeneral(
        x_BTD.shape[-1], axis=(-2, -1), use_bias=self.use_bias,
        dot_general=dot_general_for(self.matmul_dtype),
        kernel_init=init.normal(out_stddev, ("heads", "head_dim", "embed")),
        bias_init=init.zeros(("embed",)), name="out")
    y_BTD = self._with_lora(out, "out", (x_BTD.shape[-1],), ("heads", "head_dim"),
                            ("embed",))(out_BTNH)
    return y_BTD, cache

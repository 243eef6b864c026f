"""Decoder-only Transformer (GPT): tokens -> next-token logits.

Legend: B batch, T length, S cache length, D model dim, V vocab, L layers.
Pre-LayerNorm blocks, GELU MLP, learned absolute positions, tied input/output
embeddings. `decode` support: pass per-layer KV caches and the index to write at.
"""

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from lm.layers.attention import KVCache
from lm.layers.block import PreLNBlock
from lm.layers.embed import LearnedPositions, TokenEmbedding
from lm.layers.masks import causal_mask
from lm.layers.norms import layer_norm


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  vocab_size: int = 0  # 0: taken from the tokenizer when training starts
  num_layers: int = 4
  num_heads: int = 4
  embed_dim: int = 128
  mlp_dim: int = 512
  max_len: int = 64
  dropout: float = 0.0
  use_bias: bool = True
  tie_embeddings: bool = True
  matmul_dtype: str = "float32"  # "bfloat16": bf16 matmul operands, f32 everything else

  def __post_init__(self):
    if self.vocab_size < 0:
      raise ValueError(f"model.vocab_size must be >= 0, got {self.vocab_size}")
    if self.embed_dim % self.num_heads:
      raise ValueError(f"model.embed_dim={self.embed_dim} is not divisible by "
                       f"model.num_heads={self.num_heads}")
    if min(self.num_layers, self.num_heads, self.embed_dim, self.mlp_dim, self.max_len) <= 0:
      raise ValueError("model sizes (num_layers, num_heads, embed_dim, mlp_dim, max_len) "
                       "must be positive")
    if self.matmul_dtype not in ("float32", "bfloat16"):
      raise ValueError(f"model.matmul_dtype must be float32 or bfloat16, got {self.matmul_dtype!r}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads


class GPT(nn.Module):
  config: GPTConfig

  def init_cache(self, batch: int, length: int | None = None) -> list[KVCache]:
    c = self.config
    return [KVCache.zeros(batch, length or c.max_len, c.num_heads, c.head_dim)
            for _ in range(c.num_layers)]

  @nn.compact
  def __call__(self, tokens_BT, *, caches: list[KVCache] | None = None, cache_index=0,
               deterministic: bool = True):
    """Returns (logits_BTV, caches). Without caches, positions start at 0."""
    c = self.config
    positions_BT = cache_index + jnp.arange(tokens_BT.shape[1])[None, :]
    positions_BT = jnp.broadcast_to(positions_BT, tokens_BT.shape)
    key_len = caches[0].k_BSNH.shape[1] if caches is not None else tokens_BT.shape[1]
    key_positions_BS = jnp.broadcast_to(jnp.arange(key_len)[None, :],
                                        (tokens_BT.shape[0], key_len))
    mask_B1TS = causal_mask(positions_BT, key_positions_BS)

    embed = TokenEmbedding(c.vocab_size, c.embed_dim, name="token_embed")
    x_BTD = embed(tokens_BT) + LearnedPositions(c.max_len, c.embed_dim, name="pos_embed")(
        positions_BT)
    x_BTD = nn.Dropout(c.dropout, deterministic=deterministic)(x_BTD)
    x_BTD = nn.with_logical_constraint(x_BTD, ("batch", "length", "embed"))

    new_caches = []
    for i in range(c.num_layers):
      x_BTD, cache = PreLNBlock(c.num_heads, c.head_dim, c.mlp_dim, c.num_layers, c.dropout,
                                c.use_bias, c.matmul_dtype, name=f"block_{i}")(
          x_BTD, mask_B1TS, cache=None if caches is None else caches[i],
          cache_index=cache_index, deterministic=deterministic)
      new_caches.append(cache)

    x_BTD = layer_norm("ln_final", c.use_bias)(x_BTD)
    if c.tie_embeddings:
      logits_BTV = embed.attend(x_BTD)
    else:
      logits_BTV = nn.DenseGeneral(c.vocab_size, use_bias=False, name="lm_head")(x_BTD)
    logits_BTV = nn.with_logical_constraint(logits_BTV.astype(jnp.float32),
                                            ("batch", "length", "vocab"))
    return logits_BTV, (new_caches if caches is not None else None)

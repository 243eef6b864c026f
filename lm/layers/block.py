"""The pre-LayerNorm Transformer block shared by the model families.

x + Attn(LN(x)), then x + MLP(LN(x)); dropout on each residual branch.
"""

import flax.linen as nn

from lm.layers.attention import KVCache, MultiHeadAttention
from lm.layers.mlp import MLP
from lm.layers.norms import layer_norm


class PreLNBlock(nn.Module):
  num_heads: int
  head_dim: int
  mlp_dim: int
  num_layers_for_init: int
  dropout_rate: float = 0.0
  use_bias: bool = True
  matmul_dtype: str = "float32"

  @nn.compact
  def __call__(self, x_BTD, mask_B1TS, *, cache: KVCache | None = None,
               cache_index=None, deterministic: bool = True):
    residual_dropout = nn.Dropout(self.dropout_rate, deterministic=deterministic)
    h_BTD, cache = MultiHeadAttention(
        self.num_heads, self.head_dim, self.num_layers_for_init, self.dropout_rate,
        self.use_bias, self.matmul_dtype, name="attn")(
            layer_norm("ln_attn", self.use_bias)(x_BTD), mask_B1TS, cache=cache,
            cache_index=cache_index, deterministic=deterministic)
    x_BTD = x_BTD + residual_dropout(h_BTD)
    h_BTD = MLP(self.mlp_dim, self.num_layers_for_init, self.use_bias, self.matmul_dtype,
                name="mlp")(layer_norm("ln_mlp", self.use_bias)(x_BTD))
    x_BTD = x_BTD + residual_dropout(h_BTD)
    return nn.with_logical_constraint(x_BTD, ("batch", "length", "embed")), cache

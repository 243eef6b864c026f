"""The pre-norm Transformer block shared by the model families.

x + Attn(Norm(x)) [+ CrossAttn(Norm(x), encoded)] + MLP(Norm(x)), each residual branch
with dropout. Legend: B batch, T length, S encoder length, D model dim.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax

from lm.layers.attention import Attention, BiasFn, KVCache
from lm.layers.mla import MLA
from lm.layers.mlp import MLP
from lm.layers.moe import MoE
from lm.layers.norms import make_norm
from lm.layers.peft import Adapter


@dataclasses.dataclass(frozen=True)
class BlockConfig:
  """Everything one block needs; model families build it from their own config."""
  num_heads: int
  head_dim: int
  mlp_dim: int
  num_kv_heads: int = 0  # 0: num_heads (MHA)
  mlp: str = "gelu"  # gelu | swiglu | geglu
  norm: str = "layernorm"  # layernorm | rmsnorm
  dropout: float = 0.0
  use_bias: bool = True
  matmul_dtype: str = "float32"
  qk_norm: bool = False
  logit_softcap: float = 0.0
  rope_base: float = 0.0  # > 0: RoPE in self-attention
  pattern: str = "dense"  # dense | local | strided (this block's attention)
  window: int = 128
  stride: int = 128
  num_layers_for_init: int = 1  # residual projections start at 0.02 / sqrt(2 L)
  moe: Any = None  # an lm.layers.moe.MoEConfig: a mixture of experts replaces the MLP
  mla: Any = None  # an lm.layers.mla.MLAConfig: latent attention replaces self-attention
  # --- parameter-efficient fine-tuning (lm/layers/peft.py); 0 = off ---
  lora_rank: int = 0
  lora_alpha: float = 8.0
  lora_targets: tuple[str, ...] = ()
  adapter_dim: int = 0  # Houlsby adapters after the attention and MLP sublayers
  rope_scaling: Any = None  # an lm.layers.positions.RopeScaling (context extension)


class PreLNBlock(nn.Module):
  config: BlockConfig
  cross_attention: bool = False  # encoder-decoder decoders attend to the encoder output

  def _attention(self, pattern: str, name: str) -> Attention:
    c = self.config
    if c.mla is not None and pattern != "cross":
      return MLA(c.mla, name=name)
    return Attention(c.num_heads, c.head_dim, c.num_kv_heads, c.num_layers_for_init,
                     c.dropout, c.use_bias, c.matmul_dtype, c.qk_norm, c.logit_softcap,
                     c.rope_base if pattern != "cross" else 0.0,
                     "dense" if pattern == "cross" else pattern, c.window, c.stride,
                     lora_rank=c.lora_rank, lora_alpha=c.lora_alpha,
                     lora_targets=c.lora_targets, rope_scaling=c.rope_scaling, name=name)

  @nn.compact
  def __call__(self, x_BTD, mask_B1TS, bias_fn: BiasFn | None = None, *, positions_BT,
               cache: KVCache | None = None, cache_index=None, encoded_BSD=None,
               cross_mask_B1TS=None, prefix_kv=None, deterministic: bool = True):
    c = self.config
    residual_dropout = nn.Dropout(c.dropout, deterministic=deterministic)
    h_BTD, cache = self._attention(c.pattern, "attn")(
        make_norm(c.norm, "ln_attn", c.use_bias)(x_BTD), mask_B1TS, q_pos_BT=positions_BT,
        bias_fn=bias_fn, cache=cache, cache_index=cache_index, deterministic=deterministic,
        **({} if prefix_kv is None else {"prefix_kv": prefix_kv}))  # MLA takes no prefix
    if c.adapter_dim:
      h_BTD = Adapter(c.adapter_dim, name="adapter_attn")(h_BTD)
    x_BTD = x_BTD + residual_dropout(h_BTD)
    if self.cross_attention:
      h_BTD, _ = self._attention("cross", "cross_attn")(
          make_norm(c.norm, "ln_cross", c.use_bias)(x_BTD), cross_mask_B1TS,
          q_pos_BT=positions_BT, kv_BSD=encoded_BSD, deterministic=deterministic)
      x_BTD = x_BTD + residual_dropout(h_BTD)
    mlp = (MoE(c.moe, name="moe") if c.moe is not None else
           MLP(c.mlp_dim, c.num_layers_for_init, c.use_bias, c.matmul_dtype, c.mlp, name="mlp"))
    h_BTD = mlp(make_norm(c.norm, "ln_mlp", c.use_bias)(x_BTD))
    if c.adapter_dim:
      h_BTD = Adapter(c.adapter_dim, name="adapter_mlp")(h_BTD)
    x_BTD = x_BTD + residual_dropout(h_BTD)
    return nn.with_logical_constraint(x_BTD, ("batch", "length", "act_embed")), cache


# Activation rematerialisation (gradient checkpointing): what the backward pass may keep.
REMAT_POLICIES = {
    "none": None,  # keep everything (fastest, most memory)
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole block
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs
}


def block_class(remat: str = "none"):
  """PreLNBlock, wrapped in nn.remat with the named policy unless `remat` is "none"."""
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat {remat!r}; known: {sorted(REMAT_POLICIES)}")
  if remat == "none":
    return PreLNBlock
  # bias_fn (argument 3, counting self) is a function or module, not an array: static.
  return nn.remat(PreLNBlock, policy=REMAT_POLICIES[remat], static_argnums=(3,))

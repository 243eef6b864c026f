"""Decoder-only Transformer (GPT): tokens -> next-token logits.

Legend: B batch, T length, S cache length, D model dim, V vocab, L layers.
By default GPT-2's recipe: pre-LayerNorm blocks, GELU MLP, learned absolute positions,
tied input/output embeddings. Every layer-library option (positions, GQA/MQA, QK-norm,
soft-capping, RMSNorm, gated MLPs, sparse attention layouts) is a config field; see
docs/layers.md. Decoding: pass per-layer KV caches and the index to write at.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.layers import init
from lm.layers import masks as masks_lib
from lm.layers.attention import KVCache
from lm.layers.block import REMAT_POLICIES, BlockConfig, block_class
from lm.layers.embed import TokenEmbedding
from lm.layers.mla import MLACache, MLAConfig
from lm.layers.mlp import ACTIVATIONS
from lm.layers.moe import ROUTERS, MoEConfig
from lm.layers.norms import NORMS, make_norm
from lm.layers.peft import PEFTFields, PrefixKV
from lm.layers.positions import (
  POSITIONS,
  LearnedPositions,
  RelativePositionBias,
  RopeScaling,
  alibi_bias,
  sinusoidal_embedding,
)
from lm.layers.precision import MATMUL_DTYPES
from lm.layers.sparse_attention import LAYOUTS, layer_patterns
from lm.models.scan_layers import scanned_blocks, stack_caches


@dataclasses.dataclass(frozen=True)
class GPTConfig(PEFTFields):  # + LoRA / adapter / prefix / prompt fields (lm/layers/peft.py)
  vocab_size: int = 0  # 0: taken from the tokenizer when training starts
  num_layers: int = 4
  num_heads: int = 4
  embed_dim: int = 128
  mlp_dim: int = 512
  max_len: int = 64
  dropout: float = 0.0
  use_bias: bool = True
  tie_embeddings: bool = True
  matmul_dtype: str = "float32"  # bfloat16 | fp8 (simulated E4M3, lm/layers/fp8.py) operands
  # --- layer library choices (docs/layers.md) ---
  position: str = "learned"  # learned | sinusoidal | rope | alibi | t5 | none
  rope_base: float = 10000.0
  relative_buckets: int = 32  # t5: number of relative-position buckets
  relative_max_distance: int = 128  # t5: distances beyond share the last bucket
  num_kv_heads: int = 0  # 0: num_heads (MHA); 1: multi-query; divisor of num_heads: GQA
  qk_norm: bool = False
  logit_softcap: float = 0.0  # 0 = off
  norm: str = "layernorm"  # layernorm | rmsnorm
  mlp: str = "gelu"  # gelu | swiglu | geglu
  attention_pattern: str = "dense"  # dense | local | strided | alternating_local | local_strided
  attention_window: int = 32  # local layers: each token sees itself and window - 1 before
  attention_stride: int = 8  # strided layers: keys at distances 0, s, 2s, ...
  remat: str = "none"  # none | full | dots: recompute activations in the backward pass
  scan_layers: bool = False  # one nn.scan over stacked blocks: compile time flat in depth
  # --- DeepSeek-style layers (docs/deepseek.md) ---
  attention: str = "mha"  # mha (GQA/MQA via num_kv_heads) | mla (latent KV, lm/layers/mla.py)
  mla_kv_rank: int = 32  # mla: latent dim d_c of the joint key/value compression (cached)
  mla_q_rank: int = 0  # mla: query compression rank d_c' (0 = none)
  mla_rope_dim: int = 16  # mla: dim of the decoupled RoPE key shared by all heads (cached)
  moe_num_experts: int = 8  # mlp=moe (lm/layers/moe.py): routed experts
  moe_top_k: int = 2  # experts per token
  moe_expert_dim: int = 0  # hidden width of each expert; 0 = mlp_dim
  moe_num_shared: int = 0  # always-on shared experts of the same width
  moe_activation: str = "swiglu"  # the experts' MLP, and the dense layers' when moe_every > 1
  moe_router: str = "softmax"  # softmax | sigmoid affinities
  moe_normalize_gates: bool = True  # gates normalised over the chosen experts
  moe_capacity_factor: float = 0.0  # 0 = dropless; else drop beyond cf * tokens * k / experts
  moe_every: int = 1  # layers k-1, 2k-1, ... are MoE, the others dense MLPs
  moe_block_size: int = 32  # rows per expert block in the grouped expert matmul
  moe_first_dense: int = 0  # the first k layers keep a dense MLP (DeepSeek-V3: 3)
  mla_head_dim: int = 0  # mla: per-head query/key content and value dim; 0 = embed_dim // heads
  # --- long context: RoPE scaling (lm/layers/positions.py RopeScaling, docs/long_context.md) ---
  rope_scaling: str = "none"  # none | linear (position interpolation) | ntk | yarn
  rope_scaling_factor: float = 1.0  # new context / rope_original_max_len
  rope_original_max_len: int = 0  # the context RoPE was trained at (yarn's ramp needs it)

  def __post_init__(self):
    if self.vocab_size < 0:
      raise ValueError(f"model.vocab_size must be >= 0, got {self.vocab_size}")
    if self.embed_dim % self.num_heads:
      raise ValueError(f"model.embed_dim={self.embed_dim} is not divisible by "
                       f"model.num_heads={self.num_heads}")
    if min(self.num_layers, self.num_heads, self.embed_dim, self.mlp_dim, self.max_len) <= 0:
      raise ValueError("model sizes (num_layers, num_heads, embed_dim, mlp_dim, max_len) "
                       "must be positive")
    if self.matmul_dtype not in MATMUL_DTYPES:
      raise ValueError(f"model.matmul_dtype must be one of {MATMUL_DTYPES}, got "
                       f"{self.matmul_dtype!r}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
    choices = {"position": POSITIONS, "norm": NORMS, "mlp": tuple(ACTIVATIONS) + ("moe",),
               "attention": ("mha", "mla"), "moe_router": ROUTERS,
               "attention_pattern": tuple(LAYOUTS), "remat": tuple(REMAT_POLICIES)}
    for name, known in choices.items():
      if getattr(self, name) not in known:
        raise ValueError(f"model.{name}={getattr(self, name)!r}; choose one of {known}")
    if self.num_kv_heads < 0 or (self.num_kv_heads and self.num_heads % self.num_kv_heads):
      raise ValueError(f"model.num_kv_heads={self.num_kv_heads} must divide "
                       f"model.num_heads={self.num_heads} (0 = num_heads)")
    if self.position == "rope" and self.head_dim % 2:
      raise ValueError(f"position=rope needs an even head dim, got {self.head_dim}")
    if self.position == "sinusoidal" and self.embed_dim % 2:
      raise ValueError(f"position=sinusoidal needs an even embed_dim, got {self.embed_dim}")
    if min(self.attention_window, self.attention_stride, self.relative_buckets,
           self.relative_max_distance) <= 0 or self.rope_base <= 0 or self.logit_softcap < 0:
      raise ValueError("model.attention_window, attention_stride, relative_buckets, "
                       "relative_max_distance and rope_base must be positive, "
                       "logit_softcap >= 0")
    if self.mlp == "moe":
      if self.moe_every <= 0 or self.moe_activation not in ACTIVATIONS:
        raise ValueError(f"model.moe_every must be positive and model.moe_activation one of "
                         f"{tuple(ACTIVATIONS)}")
      self.moe_config()  # checks the MoE fields
    self.check_peft()
    if (self.prefix_len or self.prompt_len) and self.attention == "mla":
      raise ValueError("prefix and prompt tuning need attention=mha (MLA caches latents)")
    self.rope_scaling_config()  # checks the rope_scaling fields
    if self.rope_scaling != "none" and self.position != "rope" and self.attention != "mla":
      raise ValueError(f"model.rope_scaling={self.rope_scaling!r} needs position=rope (or "
                       f"attention=mla, whose decoupled RoPE key it scales)")
    if self.moe_first_dense < 0 or self.mla_head_dim < 0:
      raise ValueError("model.moe_first_dense and model.mla_head_dim must be >= 0")
    if self.attention == "mla":
      if self.attention_pattern != "dense":
        raise ValueError("model.attention=mla supports attention_pattern=dense only")
      self.mla_config()
    if self.scan_layers:
      self.check_scannable()

  def check_scannable(self):
    """scan_layers needs L identical blocks; name the first option that breaks that."""
    reasons = {
        "attention_pattern": self.attention_pattern not in ("dense", "local", "strided"),
        "mlp=moe (per-layer MoE statistics and balance-bias updates)": self.mlp == "moe",
        "prefix_len / prompt_len (per-layer prefixes)": bool(self.prefix_len or self.prompt_len),
        "position=t5 (one bias module shared by the layers)": self.position == "t5",
    }
    for what, broken in reasons.items():
      if broken:
        detail = (f"={self.attention_pattern!r} alternates layer kinds"
                  if what == "attention_pattern" else "")
        raise ValueError(f"model.scan_layers needs identical layers; {what}{detail} is not "
                         f"supported with it")

  def moe_config(self) -> MoEConfig:
    return MoEConfig(
        num_experts=self.moe_num_experts, top_k=self.moe_top_k,
        expert_dim=self.moe_expert_dim or self.mlp_dim, num_shared=self.moe_num_shared,
        activation=self.moe_activation, router=self.moe_router,
        normalize_gates=self.moe_normalize_gates, capacity_factor=self.moe_capacity_factor,
        block_size=self.moe_block_size, matmul_dtype=self.matmul_dtype,
        num_layers_for_init=self.num_layers)

  def mla_config(self) -> MLAConfig:
    return MLAConfig(
        num_heads=self.num_heads, head_dim=self.mla_head_dim or self.head_dim,
        kv_rank=self.mla_kv_rank,
        q_rank=self.mla_q_rank, rope_dim=self.mla_rope_dim, rope_base=self.rope_base,
        rope_scaling=self.rope_scaling_config(), dropout=self.dropout,
        matmul_dtype=self.matmul_dtype,
        num_layers_for_init=self.num_layers)

  def rope_scaling_config(self) -> RopeScaling | None:
    if self.rope_scaling == "none":
      return None
    return RopeScaling(self.rope_scaling, self.rope_scaling_factor, self.rope_original_max_len)

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads

  def block_config(self, pattern: str, layer: int = 0) -> BlockConfig:
    is_moe = self.mlp == "moe" and layer % self.moe_every == self.moe_every - 1
    is_moe = is_moe and layer >= self.moe_first_dense
    return BlockConfig(
        num_heads=self.num_heads, head_dim=self.head_dim, mlp_dim=self.mlp_dim,
        num_kv_heads=self.num_kv_heads,
        mlp=self.moe_activation if self.mlp == "moe" else self.mlp, norm=self.norm,
        dropout=self.dropout,
        use_bias=self.use_bias, matmul_dtype=self.matmul_dtype, qk_norm=self.qk_norm,
        logit_softcap=self.logit_softcap,
        rope_base=self.rope_base if self.position == "rope" else 0.0, pattern=pattern,
        window=self.attention_window, stride=self.attention_stride,
        num_layers_for_init=self.num_layers, moe=self.moe_config() if is_moe else None,
        mla=self.mla_config() if self.attention == "mla" else None,
        lora_rank=self.lora_rank, lora_alpha=self.lora_alpha,
        lora_targets=self.lora_target_tuple, adapter_dim=self.adapter_dim,
        rope_scaling=self.rope_scaling_config() if self.position == "rope" else None)


class GPT(nn.Module):
  config: GPTConfig

  def init_cache(self, batch: int, length: int | None = None) -> list[KVCache]:
    """One cache per layer; with scan_layers one cache whose leaves have a leading L axis."""
    c = self.config
    if c.attention == "mla":  # only the latent and the shared RoPE key (lm/layers/mla.py)
      caches = [MLACache.zeros(batch, length or c.max_len, c.mla_kv_rank, c.mla_rope_dim)
                for _ in range(c.num_layers)]
    else:
      caches = [KVCache.zeros(batch, length or c.max_len, c.num_kv_heads or c.num_heads,
                              c.head_dim) for _ in range(c.num_layers)]
    return stack_caches(caches) if c.scan_layers else caches

  def _add_positions(self, x_BTD, positions_BT, learned: LearnedPositions | None):
    c = self.config
    if learned is not None:
      return x_BTD + learned(positions_BT)
    if c.position == "sinusoidal":
      return x_BTD + sinusoidal_embedding(positions_BT, c.embed_dim)
    return x_BTD

  def _prompt_kv(self, embed, learned, blocks, bias_fn, deterministic: bool):
    """Soft-prompt tuning: the P learned embeddings at positions 0..P-1 run through the
    blocks; their keys/values are a per-layer prefix for the tokens (which sit at P..),
    the same as prepending them to the input, and cheap to reuse when decoding."""
    c = self.config
    P = c.prompt_len
    # Initialised from the embeddings of P random vocabulary tokens (Lester et al.).
    prompt_PD = self.param("soft_prompt", lambda key, shape: init.Logical(
        embed.embedding[jax.random.randint(key, (shape[0],), 0, c.vocab_size)],
        (None, "embed")), (P, c.embed_dim))
    positions_1P = jnp.arange(P)[None]
    x_1PD = self._add_positions(prompt_PD[None], positions_1P, learned)
    mask_11PP = masks_lib.causal_mask(positions_1P, positions_1P)
    kv = []
    for block in blocks:
      x_1PD, cache = block(x_1PD, mask_11PP, bias_fn, positions_BT=positions_1P,
                           cache=KVCache.zeros(1, P, c.num_kv_heads or c.num_heads, c.head_dim),
                           cache_index=0, deterministic=deterministic)
      kv.append((cache.k_BSKH[0], cache.v_BSKH[0]))
    return kv

  @nn.compact
  def __call__(self, tokens_BT, *, positions_BT=None, segment_ids_BT=None,
               caches: list[KVCache] | None = None, cache_index=0, deterministic: bool = True,
               return_hidden: bool = False):
    """Returns (logits_BTV, caches), or (final normed hidden_BTD, caches) with return_hidden.

    Positions default to `cache_index + 0..T-1`. `segment_ids_BT` (training on packed
    rows, no cache) keeps documents from attending to each other; pass positions that
    restart per document (`masks.positions_from_segments`) with it. With a soft prompt
    (prompt_len = P) every position is shifted by P: learned positions then cover
    max_len - P tokens (positions past the table read as NaN).
    """
    c = self.config
    B, T = tokens_BT.shape
    P = c.prompt_len
    if positions_BT is None:
      positions_BT = jnp.broadcast_to(cache_index + jnp.arange(T)[None, :], (B, T))
    positions_BT = positions_BT + P
    if caches is not None:
      # KVCache or MLACache leaves: B S ... per layer, L B S ... when scanned.
      key_len = jax.tree.leaves(caches)[0].shape[2 if c.scan_layers else 1]
      key_positions_BS = jnp.broadcast_to(P + jnp.arange(key_len)[None, :], (B, key_len))
    else:
      key_positions_BS = positions_BT
    mask_B1TS = masks_lib.causal_mask(positions_BT, key_positions_BS)
    if segment_ids_BT is not None:
      if caches is not None:
        raise ValueError("segment_ids are for packed training rows, not cached decoding")
      mask_B1TS = mask_B1TS & masks_lib.segment_mask(segment_ids_BT, segment_ids_BT)

    embed = TokenEmbedding(c.vocab_size, c.embed_dim, name="token_embed")
    learned = (LearnedPositions(c.max_len, c.embed_dim, name="pos_embed")
               if c.position == "learned" else None)
    x_BTD = self._add_positions(embed(tokens_BT), positions_BT, learned)
    bias_fn = None
    if c.position == "alibi":
      bias_fn = functools.partial(alibi_bias, num_heads=c.num_heads)
    elif c.position == "t5":
      bias_fn = RelativePositionBias(c.num_heads, bidirectional=False,
                                     num_buckets=c.relative_buckets,
                                     max_distance=c.relative_max_distance, name="rel_bias")
    x_BTD = nn.Dropout(c.dropout, deterministic=deterministic)(x_BTD)
    x_BTD = nn.with_logical_constraint(x_BTD, ("batch", "length", "act_embed"))

    if c.scan_layers:  # check_scannable guarantees identical layers and no prefixes
      x_BTD, new_caches = scanned_blocks(
          c.block_config(c.attention_pattern), c.num_layers, c.remat, bias_fn, deterministic)(
          x_BTD, caches, mask_B1TS, positions_BT, cache_index)
      return self._head(embed, x_BTD, new_caches, return_hidden)

    block = block_class(c.remat)
    blocks = [block(c.block_config(pattern, i), name=f"block_{i}")
              for i, pattern in enumerate(layer_patterns(c.attention_pattern, c.num_layers))]
    prefix_kv = [None] * c.num_layers
    if c.prefix_len:
      prefix_kv = PrefixKV(c.prefix_len, c.num_layers, c.num_kv_heads or c.num_heads,
                           c.head_dim, c.prefix_hidden, name="prefix")()
    if P:
      prompt_kv = self._prompt_kv(embed, learned, blocks, bias_fn, deterministic)
      prefix_kv = [kv if prefix is None else tuple(jnp.concatenate([a, b]) for a, b in
                                                   zip(prefix, kv, strict=True))
                   for prefix, kv in zip(prefix_kv, prompt_kv, strict=True)]

    new_caches = []
    for i, block_i in enumerate(blocks):
      x_BTD, cache = block_i(
          x_BTD, mask_B1TS, bias_fn, positions_BT=positions_BT,
          cache=None if caches is None else caches[i], cache_index=cache_index,
          prefix_kv=prefix_kv[i], deterministic=deterministic)
      new_caches.append(cache)
    return self._head(embed, x_BTD, new_caches if caches is not None else None, return_hidden)

  def _head(self, embed, x_BTD, new_caches, return_hidden: bool):
    c = self.config
    # Multi-token prediction (lm/tasks/mtp_lm.py) reads the last hidden state; a no-op
    # unless the caller makes "intermediates" mutable.
    self.sow("intermediates", "final_hidden_BTD", x_BTD)
    x_BTD = make_norm(c.norm, "ln_final", c.use_bias)(x_BTD)
    if return_hidden:  # features for classification heads and probes
      return x_BTD, new_caches
    if c.tie_embeddings:
      logits_BTV = embed.attend(x_BTD)
    else:
      # Flax's default init, with logical names so the sharding rules can split it.
      logits_BTV = nn.DenseGeneral(
          c.vocab_size, use_bias=False, name="lm_head",
          kernel_init=init.with_names(nn.initializers.lecun_normal(), ("embed", "vocab")))(x_BTD)
    logits_BTV = nn.with_logical_constraint(logits_BTV.astype(jnp.float32),
                                            ("batch", "length", "act_vocab"))
    return logits_BTV, new_caches

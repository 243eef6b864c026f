"""Encoder-only Transformer (BERT): tokens -> contextual embeddings, MLM and NSP heads.

Legend: B batch, T length, D model dim, V vocab, F mlp dim, L layers, P predicted positions.
Devlin et al. 2019: token + learned position + segment (sentence A/B) embeddings, a
bidirectional block stack (every real token sees every real token; padding is hidden
by `valid_BT`), a tanh pooler on the first ([CLS]) token, a masked-LM head tied to
the token embeddings (dense + GELU + LayerNorm transform, then the embedding matrix and
an output bias) and a 2-way next-sentence head on the pooled output.

`norm_position="post"` is BERT as published (and as Hugging Face checkpoints are):
LayerNorm after each residual sum and on the embeddings, erf GELU, LayerNorm eps
1e-12. `"pre"` reuses the shared pre-LN block (lm/layers/block.py) with a final norm,
which trains more easily from scratch. Both build on lm/layers' Attention and MLP.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.layers import init
from lm.layers import masks as masks_lib
from lm.layers.attention import Attention
from lm.layers.block import BlockConfig, PreLNBlock
from lm.layers.embed import TokenEmbedding
from lm.layers.mlp import ACTIVATIONS, MLP
from lm.layers.peft import Adapter, PEFTFields, PrefixKV
from lm.layers.positions import LearnedPositions, alibi_bias

NORM_POSITIONS = ("post", "pre")
ROPE_BASE = 10000.0
POSITIONS = ("learned", "rope", "alibi")


@dataclasses.dataclass(frozen=True)
class BertConfig(PEFTFields):  # + LoRA / adapter / prefix fields (lm/layers/peft.py)
  vocab_size: int = 0  # 0: taken from the tokenizer when training starts
  num_layers: int = 4
  num_heads: int = 4
  embed_dim: int = 128
  mlp_dim: int = 512
  max_len: int = 128  # learned position table size (BERT-base: 512)
  type_vocab_size: int = 2  # segment (sentence A/B) embeddings
  dropout: float = 0.1  # embeddings, attention probabilities, residual branches
  use_bias: bool = True
  matmul_dtype: str = "float32"
  norm_position: str = "post"  # post (BERT, HF checkpoints) | pre (shared PreLNBlock)
  layer_norm_eps: float = 1e-12  # post-LN, embedding and head norms (pre-LN blocks use 1e-5)
  mlp: str = "gelu_exact"  # activation of the blocks and the MLM transform
  # learned (BERT: an absolute table added to the embeddings) | rope (RoFormer, ModernBERT)
  # | alibi (MosaicBERT): the relative ones give attention locality from the first step
  position: str = "learned"

  def __post_init__(self):
    if self.vocab_size < 0:
      raise ValueError(f"model.vocab_size must be >= 0, got {self.vocab_size}")
    if min(self.num_layers, self.num_heads, self.embed_dim, self.mlp_dim, self.max_len,
           self.type_vocab_size) <= 0:
      raise ValueError("model sizes (num_layers, num_heads, embed_dim, mlp_dim, max_len, "
                       "type_vocab_size) must be positive")
    if self.embed_dim % self.num_heads:
      raise ValueError(f"model.embed_dim={self.embed_dim} is not divisible by "
                       f"model.num_heads={self.num_heads}")
    if self.norm_position not in NORM_POSITIONS:
      raise ValueError(f"model.norm_position={self.norm_position!r}; choose one of "
                       f"{NORM_POSITIONS}")
    if self.position not in POSITIONS:
      raise ValueError(f"model.position={self.position!r}; choose one of {POSITIONS}")
    if self.mlp not in ("gelu", "gelu_exact"):
      raise ValueError(f"model.mlp={self.mlp!r}; BERT uses gelu_exact (erf) or gelu (tanh)")
    if self.matmul_dtype not in ("float32", "bfloat16"):
      raise ValueError(f"model.matmul_dtype must be float32 or bfloat16, got {self.matmul_dtype!r}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
    if self.layer_norm_eps <= 0:
      raise ValueError(f"model.layer_norm_eps must be > 0, got {self.layer_norm_eps}")
    self.check_peft()
    if self.prompt_len:
      raise ValueError("model.prompt_len: soft prompts are for the decoder family (gpt); "
                       "use prefix_len for the encoder")

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads

  @property
  def rope_base(self) -> float:
    return ROPE_BASE if self.position == "rope" else 0.0

  def block_config(self) -> BlockConfig:
    return BlockConfig(num_heads=self.num_heads, head_dim=self.head_dim, mlp_dim=self.mlp_dim,
                       mlp=self.mlp, dropout=self.dropout, use_bias=self.use_bias,
                       matmul_dtype=self.matmul_dtype, num_layers_for_init=self.num_layers,
                       rope_base=self.rope_base,
                       lora_rank=self.lora_rank, lora_alpha=self.lora_alpha,
                       lora_targets=self.lora_target_tuple, adapter_dim=self.adapter_dim)


def _layer_norm(c: BertConfig, name: str | None = None) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=c.layer_norm_eps, use_bias=c.use_bias, name=name,
                      scale_init=init.ones(("embed",)), bias_init=init.zeros(("embed",)))


def _dense(c: BertConfig, features: int, name: str | None = None) -> nn.Dense:
  return nn.Dense(features, use_bias=c.use_bias, name=name,
                  kernel_init=init.normal(init.DEFAULT_STDDEV, (None, "embed")),
                  bias_init=init.zeros(("embed",)))


class PostLNBlock(nn.Module):
  """BERT's block: x = LN(x + Attn(x)); x = LN(x + MLP(x)), dropout on each branch.

  Sub-module names match PreLNBlock's (attn, ln_attn, mlp, ln_mlp).
  """
  config: BertConfig

  @nn.compact
  def __call__(self, x_BTD, mask_B1TS, bias_fn=None, *, positions_BT, prefix_kv=None,
               deterministic: bool = True):
    c = self.config
    drop = nn.Dropout(c.dropout, deterministic=deterministic)
    h_BTD, _ = Attention(c.num_heads, c.head_dim, num_layers_for_init=c.num_layers,
                         dropout_rate=c.dropout, use_bias=c.use_bias,
                         matmul_dtype=c.matmul_dtype, rope_base=c.rope_base,
                         lora_rank=c.lora_rank, lora_alpha=c.lora_alpha,
                         lora_targets=c.lora_target_tuple, name="attn")(
        x_BTD, mask_B1TS, q_pos_BT=positions_BT, bias_fn=bias_fn, prefix_kv=prefix_kv,
        deterministic=deterministic)
    if c.adapter_dim:  # Houlsby: the adapter sits before the residual add and the norm
      h_BTD = Adapter(c.adapter_dim, name="adapter_attn")(h_BTD)
    x_BTD = _layer_norm(c, "ln_attn")(x_BTD + drop(h_BTD))
    h_BTD = MLP(c.mlp_dim, c.num_layers, c.use_bias, c.matmul_dtype, c.mlp, name="mlp")(x_BTD)
    if c.adapter_dim:
      h_BTD = Adapter(c.adapter_dim, name="adapter_mlp")(h_BTD)
    x_BTD = _layer_norm(c, "ln_mlp")(x_BTD + drop(h_BTD))
    return nn.with_logical_constraint(x_BTD, ("batch", "length", "act_embed"))


class MLMHead(nn.Module):
  """Transform (dense, GELU, LayerNorm), then the tied embedding matrix plus a bias."""
  config: BertConfig

  @nn.compact
  def __call__(self, hidden_BTD, attend):
    c = self.config
    h_BTD = ACTIVATIONS[c.mlp](_dense(c, c.embed_dim, "transform")(hidden_BTD))
    h_BTD = _layer_norm(c, "norm")(h_BTD)
    bias_V = self.param("bias", init.zeros(("vocab",)), (c.vocab_size,))
    logits_BTV = attend(h_BTD) + bias_V
    return nn.with_logical_constraint(logits_BTV.astype(jnp.float32),
                                      ("batch", "length", "act_vocab"))


class Bert(nn.Module):
  """`encode` -> (hidden_BTD, pooled_BD); `__call__` -> (mlm_logits_BTV, nsp_logits_B2)."""
  config: BertConfig

  def setup(self):
    c = self.config
    self.token_embed = TokenEmbedding(c.vocab_size, c.embed_dim)
    if c.position == "learned":
      self.pos_embed = LearnedPositions(c.max_len, c.embed_dim)
    self.segment_embed = TokenEmbedding(c.type_vocab_size, c.embed_dim)
    if c.norm_position == "post":
      self.ln_embed = _layer_norm(c)
      self.blocks = [PostLNBlock(c) for _ in range(c.num_layers)]
    else:
      self.blocks = [PreLNBlock(c.block_config()) for _ in range(c.num_layers)]
      self.ln_final = _layer_norm(c)
    self.embed_dropout = nn.Dropout(c.dropout)
    self.pooler = _dense(c, c.embed_dim)
    self.mlm_head = MLMHead(c)
    self.nsp_head = nn.Dense(2, kernel_init=init.normal(init.DEFAULT_STDDEV, ("embed", None)),
                             bias_init=init.zeros((None,)))
    if c.prefix_len:
      self.prefix = PrefixKV(c.prefix_len, c.num_layers, c.num_heads, c.head_dim,
                             c.prefix_hidden)

  def encode(self, tokens_BT, segments_BT=None, valid_BT=None, *, deterministic: bool = True):
    """Contextual embeddings (B, T, D) and the pooled [CLS] vector (B, D).

    `segments_BT` (default 0) picks sentence A/B embeddings; `valid_BT` (default all
    True) marks real tokens: padding neither attends nor is attended to.
    """
    c = self.config
    B, T = tokens_BT.shape
    if T > c.max_len:
      raise ValueError(f"sequence length {T} exceeds model.max_len={c.max_len}")
    if segments_BT is None:
      segments_BT = jnp.zeros_like(tokens_BT)
    if valid_BT is None:
      valid_BT = jnp.ones((B, T), bool)
    positions_BT = jnp.broadcast_to(jnp.arange(T)[None, :], (B, T))
    mask_B1TS = masks_lib.padding_mask(valid_BT, valid_BT)
    x_BTD = self.token_embed(tokens_BT) + self.segment_embed(segments_BT)
    if c.position == "learned":
      x_BTD = x_BTD + self.pos_embed(positions_BT)
    bias_fn = (functools.partial(alibi_bias, num_heads=c.num_heads) if c.position == "alibi"
               else None)
    if c.norm_position == "post":
      x_BTD = self.ln_embed(x_BTD)
    x_BTD = self.embed_dropout(x_BTD, deterministic=deterministic)
    x_BTD = nn.with_logical_constraint(x_BTD, ("batch", "length", "act_embed"))
    prefix_kv = self.prefix() if c.prefix_len else [None] * c.num_layers
    for block, kv in zip(self.blocks, prefix_kv, strict=True):
      if c.norm_position == "post":
        x_BTD = block(x_BTD, mask_B1TS, bias_fn, positions_BT=positions_BT, prefix_kv=kv,
                      deterministic=deterministic)
      else:
        x_BTD, _ = block(x_BTD, mask_B1TS, bias_fn, positions_BT=positions_BT, prefix_kv=kv,
                         deterministic=deterministic)
    if c.norm_position == "pre":
      x_BTD = self.ln_final(x_BTD)
    pooled_BD = jnp.tanh(self.pooler(x_BTD[:, 0]))
    return x_BTD, pooled_BD

  def mlm_logits(self, hidden_BTD):
    return self.mlm_head(hidden_BTD, self.token_embed.attend)

  def __call__(self, tokens_BT, segments_BT=None, valid_BT=None, *, mlm_positions_BP=None,
               deterministic: bool = True):
    """`mlm_positions_BP` (optional): the MLM head runs only at these P positions per row
    and the logits are (B, P, V); pretraining predicts ~15% of the tokens, so this skips
    most of the head's work (BERT's `masked_lm_positions`)."""
    hidden_BTD, pooled_BD = self.encode(tokens_BT, segments_BT, valid_BT,
                                        deterministic=deterministic)
    if mlm_positions_BP is not None:
      hidden_BTD = jnp.take_along_axis(hidden_BTD, mlm_positions_BP[..., None], axis=1)
    return self.mlm_logits(hidden_BTD), self.nsp_head(pooled_BD).astype(jnp.float32)


def mean_pool(hidden_BTD, valid_BT, normalize: bool = True):
  """Sentence-transformers pooling: the mean over real tokens, optionally L2-normalised."""
  w_BT1 = valid_BT.astype(hidden_BTD.dtype)[..., None]
  mean_BD = (hidden_BTD * w_BT1).sum(1) / jnp.maximum(w_BT1.sum(1), 1e-9)
  if normalize:
    mean_BD = mean_BD / jnp.maximum(jnp.linalg.norm(mean_BD, axis=-1, keepdims=True), 1e-12)
  return mean_BD


def init_params(model: Bert, seq_len: int, seed: int, boxed: bool = False):
  """All parameters (encoder, pooler, MLM and NSP heads).

  `boxed=True` keeps the logical axis names (what a Task returns: the trainer places and
  unboxes them); otherwise plain arrays.
  """
  dummy = jnp.zeros((1, seq_len), jnp.int32)
  if boxed:
    return model.init(jax.random.key(seed), dummy)["params"]
  init_fn = jax.jit(lambda rng: nn.meta.unbox(model.init(rng, dummy)["params"]))
  return init_fn(jax.random.key(seed))

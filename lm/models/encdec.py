"""Encoder-decoder Transformer (T5 / BART): source tokens -> target-token logits.

Legend: B batch, S source (encoder) length, T target (decoder) length, C decoder cache
length, D model dim, V vocab.

A bidirectional encoder stack and a causal decoder stack of the shared
`lm.layers.block.PreLNBlock`; decoder blocks also cross-attend to the encoder output.
One token embedding serves the encoder, the decoder and (tied) the output projection.
Positions (docs/layers.md): `t5` is T5's learned relative-position bias, one table per
stack shared by its layers (bidirectional buckets in the encoder, causal in the
decoder); `learned` is BART's absolute tables (one per stack); also sinusoidal, RoPE,
ALiBi, none. Token id `pad_id` (0) is padding: encoder keys at padding are hidden from
the encoder's self-attention and from cross-attention. The decoder starts from
`decoder_start_id` (T5's convention: the pad id), so the decoder inputs are the targets
shifted right by one (`shift_right`).

Decoding: `encode` once, then `decode` one token at a time with `init_cache()`'s
per-layer self-attention KV caches, writing at `cache_index` (lm/decoding.py). The
cross-attention keys/values depend on the source only: the first decode step, applied
with the `CROSS_KV` collection mutable, sows them (`cross_kv_of` reads them out per
layer), and later steps take that list in place of the encoder output, so the
projections run once per source.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.layers import masks as masks_lib
from lm.layers.attention import CROSS_KV, KVCache
from lm.layers.block import BlockConfig, PreLNBlock
from lm.layers.embed import TokenEmbedding
from lm.layers.mlp import ACTIVATIONS
from lm.layers.norms import NORMS, make_norm
from lm.layers.positions import (
  POSITIONS,
  LearnedPositions,
  RelativePositionBias,
  alibi_bias,
  sinusoidal_embedding,
)


@dataclasses.dataclass(frozen=True)
class EncDecConfig:
  vocab_size: int = 0  # 0: taken from the tokenizer when training starts
  num_encoder_layers: int = 2
  num_decoder_layers: int = 2
  num_heads: int = 4
  embed_dim: int = 128
  mlp_dim: int = 512
  max_len: int = 128  # longest source (learned positions; sizes the dummy init input)
  max_target_len: int = 128  # longest target: decoder positions and the KV cache length
  dropout: float = 0.0
  use_bias: bool = True
  matmul_dtype: str = "float32"  # "bfloat16": bf16 matmul operands, f32 everything else
  position: str = "t5"  # t5 (relative buckets) | learned (BART) | sinusoidal | rope | alibi | none
  rope_base: float = 10000.0
  relative_buckets: int = 32
  relative_max_distance: int = 128
  num_kv_heads: int = 0  # 0: num_heads (MHA); 1: multi-query; divisor of num_heads: GQA
  norm: str = "layernorm"  # layernorm | rmsnorm (T5)
  mlp: str = "gelu"  # gelu | gelu_exact | swiglu | geglu (T5 v1.1)
  pad_id: int = 0
  decoder_start_id: int = 0  # T5 starts the decoder from the pad token

  def __post_init__(self):
    if self.vocab_size < 0:
      raise ValueError(f"model.vocab_size must be >= 0, got {self.vocab_size}")
    sizes = (self.num_encoder_layers, self.num_decoder_layers, self.num_heads, self.embed_dim,
             self.mlp_dim, self.max_len, self.max_target_len)
    if min(sizes) <= 0:
      raise ValueError("model sizes (num_encoder_layers, num_decoder_layers, num_heads, "
                       "embed_dim, mlp_dim, max_len, max_target_len) must be positive")
    if self.embed_dim % self.num_heads:
      raise ValueError(f"model.embed_dim={self.embed_dim} is not divisible by "
                       f"model.num_heads={self.num_heads}")
    if self.matmul_dtype not in ("float32", "bfloat16"):
      raise ValueError(f"model.matmul_dtype must be float32 or bfloat16, got {self.matmul_dtype!r}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
    choices = {"position": POSITIONS, "norm": NORMS, "mlp": tuple(ACTIVATIONS)}
    for name, known in choices.items():
      if getattr(self, name) not in known:
        raise ValueError(f"model.{name}={getattr(self, name)!r}; choose one of {known}")
    if self.num_kv_heads < 0 or (self.num_kv_heads and self.num_heads % self.num_kv_heads):
      raise ValueError(f"model.num_kv_heads={self.num_kv_heads} must divide "
                       f"model.num_heads={self.num_heads} (0 = num_heads)")
    if (self.position == "rope" and self.head_dim % 2) or (
        self.position == "sinusoidal" and self.embed_dim % 2):
      raise ValueError(f"position={self.position} needs even head_dim / embed_dim")
    if min(self.relative_buckets, self.relative_max_distance) <= 0 or self.rope_base <= 0:
      raise ValueError("model.relative_buckets, relative_max_distance and rope_base must be "
                       "positive")

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads

  def block_config(self, num_layers: int) -> BlockConfig:
    return BlockConfig(
        num_heads=self.num_heads, head_dim=self.head_dim, mlp_dim=self.mlp_dim,
        num_kv_heads=self.num_kv_heads, mlp=self.mlp, norm=self.norm, dropout=self.dropout,
        use_bias=self.use_bias, matmul_dtype=self.matmul_dtype,
        rope_base=self.rope_base if self.position == "rope" else 0.0,
        num_layers_for_init=num_layers)


def shift_right(targets_BT, start_id: int = 0):
  """Decoder inputs: the start token, then the targets up to the second-to-last."""
  start_B1 = jnp.full_like(targets_BT[:, :1], start_id)
  return jnp.concatenate([start_B1, targets_BT[:, :-1]], axis=1)


def _positions(batch: int, length: int, offset=0):
  return jnp.broadcast_to(offset + jnp.arange(length)[None, :], (batch, length))


class EncoderDecoder(nn.Module):
  config: EncDecConfig

  def setup(self):
    c = self.config
    self.embed = TokenEmbedding(c.vocab_size, c.embed_dim)
    if c.position == "learned":  # BART: a table per stack
      self.enc_pos = LearnedPositions(c.max_len, c.embed_dim)
      self.dec_pos = LearnedPositions(c.max_target_len, c.embed_dim)
    if c.position == "t5":  # T5: one bias table per stack, shared by its layers
      kw = dict(num_buckets=c.relative_buckets, max_distance=c.relative_max_distance)
      self.enc_rel_bias = RelativePositionBias(c.num_heads, bidirectional=True, **kw)
      self.dec_rel_bias = RelativePositionBias(c.num_heads, bidirectional=False, **kw)
    self.encoder_blocks = [PreLNBlock(c.block_config(c.num_encoder_layers))
                           for _ in range(c.num_encoder_layers)]
    self.decoder_blocks = [PreLNBlock(c.block_config(c.num_decoder_layers), cross_attention=True)
                           for _ in range(c.num_decoder_layers)]
    self.encoder_norm = make_norm(c.norm, None, c.use_bias)
    self.decoder_norm = make_norm(c.norm, None, c.use_bias)
    self.embed_dropout = nn.Dropout(c.dropout)

  def _bias_fn(self, stack: str):
    c = self.config
    if c.position == "t5":
      return self.enc_rel_bias if stack == "encoder" else self.dec_rel_bias
    if c.position == "alibi":
      return functools.partial(alibi_bias, num_heads=c.num_heads)
    return None

  def _embed(self, tokens_BT, positions_BT, stack: str, deterministic: bool):
    c = self.config
    x_BTD = self.embed(tokens_BT)
    if c.position == "learned":
      x_BTD = x_BTD + (self.enc_pos if stack == "encoder" else self.dec_pos)(positions_BT)
    elif c.position == "sinusoidal":
      x_BTD = x_BTD + sinusoidal_embedding(positions_BT, c.embed_dim)
    x_BTD = self.embed_dropout(x_BTD, deterministic=deterministic)
    return nn.with_logical_constraint(x_BTD, ("batch", "length", "act_embed"))

  def encode(self, inputs_BS, *, deterministic: bool = True):
    """Contextual embeddings (B, S, D) of the source; every real token sees every other."""
    B, S = inputs_BS.shape
    valid_BS = masks_lib.valid_from_tokens(inputs_BS, self.config.pad_id)
    mask_B1SS = masks_lib.padding_mask(valid_BS, valid_BS)
    positions_BS = _positions(B, S)
    x_BSD = self._embed(inputs_BS, positions_BS, "encoder", deterministic)
    for block in self.encoder_blocks:
      x_BSD, _ = block(x_BSD, mask_B1SS, positions_BT=positions_BS,
                       bias_fn=self._bias_fn("encoder"), deterministic=deterministic)
    return self.encoder_norm(x_BSD)

  def decode(self, decoder_inputs_BT, encoded_BSD, inputs_BS, *,
             caches: list[KVCache] | None = None, cache_index=0, deterministic: bool = True):
    """Returns (logits_BTV, caches). `inputs_BS` (the source ids) marks encoder padding
    (None: no padding). `encoded_BSD` is the encoder output, or the per-layer
    cross-attention keys/values an earlier step sowed (`cross_kv_of`).

    Decoder positions are `cache_index + 0..T-1`; with caches, queries attend over the
    cache slots written so far (the causal mask hides the rest).
    """
    B, T = decoder_inputs_BT.shape
    projected = isinstance(encoded_BSD, (list, tuple))
    S = encoded_BSD[0].k_BSKH.shape[1] if projected else encoded_BSD.shape[1]
    positions_BT = _positions(B, T, cache_index)
    if caches is not None:
      key_positions_BC = _positions(B, caches[0].k_BSKH.shape[1])
    else:
      key_positions_BC = positions_BT
    self_mask_B1TC = masks_lib.causal_mask(positions_BT, key_positions_BC)
    if inputs_BS is None:  # encoded positions that are all real, e.g. image patches (vit.py)
      cross_mask_B1TS = jnp.ones((B, 1, 1, S), bool)
    else:
      cross_mask_B1TS = masks_lib.valid_keys_mask(
          masks_lib.valid_from_tokens(inputs_BS, self.config.pad_id))
    x_BTD = self._embed(decoder_inputs_BT, positions_BT, "decoder", deterministic)
    new_caches = []
    for i, block in enumerate(self.decoder_blocks):
      x_BTD, cache = block(x_BTD, self_mask_B1TC, positions_BT=positions_BT,
                           bias_fn=self._bias_fn("decoder"),
                           cache=None if caches is None else caches[i], cache_index=cache_index,
                           encoded_BSD=encoded_BSD[i] if projected else encoded_BSD,
                           cross_mask_B1TS=cross_mask_B1TS,
                           deterministic=deterministic)
      new_caches.append(cache)
    x_BTD = self.decoder_norm(x_BTD)
    logits_BTV = self.embed.attend(x_BTD).astype(jnp.float32)
    logits_BTV = nn.with_logical_constraint(logits_BTV, ("batch", "length", "act_vocab"))
    return logits_BTV, (new_caches if caches is not None else None)

  def __call__(self, inputs_BS, decoder_inputs_BT, *, deterministic: bool = True):
    """Teacher-forced logits (B, T, V) of the targets given the source."""
    encoded_BSD = self.encode(inputs_BS, deterministic=deterministic)
    logits_BTV, _ = self.decode(decoder_inputs_BT, encoded_BSD, inputs_BS,
                                deterministic=deterministic)
    return logits_BTV

  def init_cache(self, batch: int, length: int | None = None) -> list[KVCache]:
    c = self.config
    return [KVCache.zeros(batch, length or c.max_target_len, c.num_kv_heads or c.num_heads,
                          c.head_dim) for _ in range(c.num_decoder_layers)]


def cross_kv_of(sown) -> list[KVCache]:
  """The cross-attention `KVCache` of every decoder layer, in layer order, from the
  variables a `decode` call returned with `CROSS_KV` mutable (also when the decoder sits
  inside another module, as in lm/models/vit.py)."""
  found = {}

  def visit(tree):
    for name, sub in tree.items():
      if name.startswith("decoder_blocks_"):
        found[int(name.rsplit("_", 1)[1])] = sub["cross_attn"]["kv"][0]
      elif hasattr(sub, "items"):
        visit(sub)

  visit(sown[CROSS_KV])
  return [found[i] for i in range(len(found))]


def init_params(model: EncoderDecoder, seed: int, source_len: int | None = None,
                target_len: int | None = None):
  """Params as `model.init` makes them: boxed with logical axis names (the trainer places
  and unboxes them; `nn.meta.unbox` gives plain arrays). Shapes do not depend on the
  dummy lengths."""
  c = model.config
  src = jnp.zeros((1, source_len or c.max_len), jnp.int32)
  tgt = jnp.zeros((1, target_len or c.max_target_len), jnp.int32)
  return model.init(jax.random.key(seed), src, tgt)["params"]

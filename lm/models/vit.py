"""Vision Transformer (ViT, Dosovitskiy et al. 2021): images -> patch tokens -> features.

Legend: B batch, H/W image height/width, C channels, p patch side, N patches (+1 with
[CLS]), P patch pixels (p * p * C), D model dim, K classes.

An image is cut into non-overlapping p x p patches; each flattened patch is projected
to D by one dense layer (a stride-p convolution written as reshape + matmul). Positions
are a learned table or fixed 2-D sinusoids (half the channels encode the row, half the
column). The tokens then pass through the shared bidirectional pre-LN blocks
(lm/layers/block.py): every patch sees every patch. Pooling: the [CLS] token's output,
or the mean over patch outputs. Pixels come in as 0..255 and are scaled to [-1, 1].
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.layers import init
from lm.layers.attention import KVCache
from lm.layers.block import BlockConfig, PreLNBlock
from lm.layers.mlp import ACTIVATIONS
from lm.layers.norms import NORMS, make_norm
from lm.layers.positions import LearnedPositions, sinusoidal_embedding
from lm.layers.precision import MATMUL_DTYPES
from lm.models.encdec import EncDecConfig, EncoderDecoder

POOLS = ("cls", "mean")
VIT_POSITIONS = ("learned", "sinusoidal")


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  image_size: int = 32
  patch_size: int = 4
  channels: int = 3
  num_layers: int = 4
  num_heads: int = 4
  embed_dim: int = 128
  mlp_dim: int = 512
  pool: str = "cls"  # cls | mean
  position: str = "learned"  # learned | sinusoidal (2-D)
  dropout: float = 0.0
  norm: str = "layernorm"
  mlp: str = "gelu"
  use_bias: bool = True
  matmul_dtype: str = "float32"
  num_classes: int = 0  # > 0: a linear head on the pooled features gives class logits

  def __post_init__(self):
    sizes = (self.image_size, self.patch_size, self.channels, self.num_layers, self.num_heads,
             self.embed_dim, self.mlp_dim)
    if min(sizes) <= 0 or self.num_classes < 0:
      raise ValueError("ViT sizes (image_size, patch_size, channels, num_layers, num_heads, "
                       "embed_dim, mlp_dim) must be positive and num_classes >= 0")
    if self.image_size % self.patch_size:
      raise ValueError(f"image_size={self.image_size} is not a multiple of "
                       f"patch_size={self.patch_size}")
    if self.embed_dim % self.num_heads:
      raise ValueError(f"embed_dim={self.embed_dim} is not divisible by "
                       f"num_heads={self.num_heads}")
    if self.position == "sinusoidal" and self.embed_dim % 4:
      raise ValueError(f"2-D sinusoidal positions need embed_dim % 4 == 0, got {self.embed_dim}")
    choices = {"pool": POOLS, "position": VIT_POSITIONS, "norm": NORMS,
               "mlp": tuple(ACTIVATIONS), "matmul_dtype": MATMUL_DTYPES}
    for name, known in choices.items():
      if getattr(self, name) not in known:
        raise ValueError(f"{name}={getattr(self, name)!r}; choose one of {known}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid ** 2

  @property
  def num_tokens(self) -> int:
    return self.num_patches + (self.pool == "cls")

  def block_config(self) -> BlockConfig:
    return BlockConfig(num_heads=self.num_heads, head_dim=self.embed_dim // self.num_heads,
                       mlp_dim=self.mlp_dim, mlp=self.mlp, norm=self.norm, dropout=self.dropout,
                       use_bias=self.use_bias, matmul_dtype=self.matmul_dtype,
                       num_layers_for_init=self.num_layers)


def patchify(images_BHWC, patch_size: int):
  """(B, H, W, C) -> (B, N, p*p*C): patches in row-major order, each flattened (row, col, c)."""
  B, H, W, C = images_BHWC.shape
  p = patch_size
  x = images_BHWC.reshape(B, H // p, p, W // p, p, C)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(B, (H // p) * (W // p), p * p * C)


def sinusoidal_2d(grid: int, dim: int):
  """(grid*grid, dim): row-major patches; the first dim/2 channels encode the row."""
  rows, cols = jnp.meshgrid(jnp.arange(grid), jnp.arange(grid), indexing="ij")
  return jnp.concatenate([sinusoidal_embedding(rows.reshape(1, -1), dim // 2),
                          sinusoidal_embedding(cols.reshape(1, -1), dim // 2)], axis=-1)[0]


class ViT(nn.Module):
  """Returns (pooled_BD, or logits_BK with num_classes > 0; tokens_BND after the final norm)."""
  config: ViTConfig

  @nn.compact
  def __call__(self, images_BHWC, *, deterministic: bool = True):
    c = self.config
    if images_BHWC.shape[1:] != (c.image_size, c.image_size, c.channels):
      raise ValueError(f"images must be (B, {c.image_size}, {c.image_size}, {c.channels}), "
                       f"got {images_BHWC.shape}")
    pixels_BHWC = images_BHWC.astype(jnp.float32) / 127.5 - 1.0
    patches_BNP = patchify(pixels_BHWC, c.patch_size)
    x_BND = nn.Dense(c.embed_dim, use_bias=c.use_bias, name="patch_embed",
                     kernel_init=init.normal(patches_BNP.shape[-1] ** -0.5, (None, "embed")),
                     bias_init=init.zeros(("embed",)))(patches_BNP)
    B = x_BND.shape[0]
    if c.pool == "cls":
      cls_11D = self.param("cls", init.zeros((None, None, "embed")), (1, 1, c.embed_dim))
      x_BND = jnp.concatenate([jnp.broadcast_to(cls_11D, (B, 1, c.embed_dim)), x_BND], axis=1)
    N = x_BND.shape[1]
    positions_BN = jnp.broadcast_to(jnp.arange(N)[None, :], (B, N))
    if c.position == "learned":
      x_BND = x_BND + LearnedPositions(N, c.embed_dim, name="pos_embed")(positions_BN)
    else:  # the [CLS] token has no place on the grid: it gets no position signal
      table_ND = sinusoidal_2d(c.grid, c.embed_dim)
      if c.pool == "cls":
        table_ND = jnp.concatenate([jnp.zeros((1, c.embed_dim)), table_ND], axis=0)
      x_BND = x_BND + table_ND[None]
    x_BND = nn.Dropout(c.dropout, deterministic=deterministic)(x_BND)
    x_BND = nn.with_logical_constraint(x_BND, ("batch", "length", "act_embed"))
    mask_B1NN = jnp.ones((B, 1, N, N), bool)  # bidirectional: every patch sees every patch
    for i in range(c.num_layers):
      x_BND, _ = PreLNBlock(c.block_config(), name=f"block_{i}")(
          x_BND, mask_B1NN, positions_BT=positions_BN, deterministic=deterministic)
    x_BND = make_norm(c.norm, "ln_final", c.use_bias)(x_BND)
    pooled_BD = x_BND[:, 0] if c.pool == "cls" else x_BND.mean(axis=1)
    if c.num_classes:
      pooled_BD = nn.Dense(c.num_classes, name="head", kernel_init=init.zeros(("embed", None)),
                           bias_init=init.zeros((None,)))(pooled_BD)
    return pooled_BD, x_BND


# ------------------------------------------------------------------ image captioning
# The ViT as the encoder of the encoder-decoder family: its patch tokens are what the
# text decoder of lm/models/encdec.py cross-attends to (every patch is real, so no
# padding mask). The interface is EncoderDecoder's (`encode`, `decode` with KV caches,
# `init_cache`), so lm/decoding.py's greedy and beam search run on it unchanged.


@dataclasses.dataclass(frozen=True)
class CaptionConfig:
  vocab_size: int = 0  # 0: taken from the tokenizer
  image_size: int = 32
  patch_size: int = 4
  channels: int = 3
  num_encoder_layers: int = 4  # ViT blocks
  num_decoder_layers: int = 2  # text decoder blocks (causal self-attention + cross-attention)
  num_heads: int = 4
  embed_dim: int = 128
  mlp_dim: int = 512
  max_target_len: int = 12  # longest caption, EOS included
  pool: str = "mean"  # the ViT's; "cls" adds a [CLS] token the decoder also sees
  position: str = "learned"  # ViT patch positions: learned | sinusoidal (2-D)
  decoder_position: str = "learned"  # the decoder's (lm/models/encdec.py): learned | t5 | ...
  dropout: float = 0.0
  pad_id: int = 0
  decoder_start_id: int = 0  # T5's convention: the decoder starts from the pad id

  def __post_init__(self):
    self.vit_config()  # each half checks its own fields
    self.decoder_config()

  def vit_config(self) -> ViTConfig:
    return ViTConfig(image_size=self.image_size, patch_size=self.patch_size,
                     channels=self.channels, num_layers=self.num_encoder_layers,
                     num_heads=self.num_heads, embed_dim=self.embed_dim, mlp_dim=self.mlp_dim,
                     pool=self.pool, position=self.position, dropout=self.dropout)

  def decoder_config(self):
    return EncDecConfig(vocab_size=self.vocab_size, num_encoder_layers=1,  # encoder unused
                        num_decoder_layers=self.num_decoder_layers, num_heads=self.num_heads,
                        embed_dim=self.embed_dim, mlp_dim=self.mlp_dim,
                        max_len=self.vit_config().num_tokens, max_target_len=self.max_target_len,
                        dropout=self.dropout, position=self.decoder_position,
                        pad_id=self.pad_id, decoder_start_id=self.decoder_start_id)


class ImageCaptioner(nn.Module):
  """Images (B, H, W, C) -> caption logits; a ViT encoder and the encoder-decoder's decoder."""
  config: CaptionConfig

  def setup(self):
    self.encoder = ViT(self.config.vit_config())
    self.text = EncoderDecoder(self.config.decoder_config())  # only its decoder is used

  def encode(self, images_BHWC, *, deterministic: bool = True):
    """Patch tokens (B, N, D) for the decoder to cross-attend to."""
    return self.encoder(images_BHWC, deterministic=deterministic)[1]

  def decode(self, decoder_inputs_BT, encoded_BND, images_BHWC=None, *, caches=None,
             cache_index=0, deterministic: bool = True):
    """Returns (logits_BTV, caches); the images are not needed (no padding to mask)."""
    del images_BHWC
    return self.text.decode(decoder_inputs_BT, encoded_BND, None, caches=caches,
                            cache_index=cache_index, deterministic=deterministic)

  def __call__(self, images_BHWC, decoder_inputs_BT, *, deterministic: bool = True):
    """Teacher-forced logits (B, T, V) of the caption given the image."""
    encoded_BND = self.encode(images_BHWC, deterministic=deterministic)
    return self.decode(decoder_inputs_BT, encoded_BND, deterministic=deterministic)[0]

  def init_cache(self, batch: int, length: int | None = None):
    c = self.config
    return [KVCache.zeros(batch, length or c.max_target_len, c.num_heads,
                          c.embed_dim // c.num_heads) for _ in range(c.num_decoder_layers)]


def init_caption_params(model: ImageCaptioner, seed: int):
  """Boxed params (logical axis names kept); shapes need only the config."""
  c = model.config
  images = jnp.zeros((1, c.image_size, c.image_size, c.channels), jnp.uint8)
  return model.init(jax.random.key(seed), images,
                    jnp.zeros((1, c.max_target_len), jnp.int32))["params"]

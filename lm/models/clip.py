"""CLIP-style dual encoder (Radford et al. 2021): an image tower and a text tower trained so
matching image-caption pairs have the most similar embeddings in the batch.

Legend: B batch, H/W/C image, T text length, D model dim, E joint embedding dim.

Image tower: the ViT (lm/models/vit.py), pooled. Text tower: token + learned position
embeddings and the shared pre-LN blocks (lm/layers/block.py), either causal with the
output at the end-of-text token as the caption's feature (CLIP's choice) or
bidirectional with the mean over real tokens. Each tower ends in a linear projection to
E and L2 normalisation. The temperature is learned as log(1 / tau), initialised at
tau = 0.07 and clipped so the logit scale never exceeds 100, as in CLIP.

`contrastive_loss` is the objective: symmetric InfoNCE with in-batch negatives.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lm.layers import init
from lm.layers import masks as masks_lib
from lm.layers.block import BlockConfig, PreLNBlock
from lm.layers.embed import TokenEmbedding
from lm.layers.norms import make_norm
from lm.layers.positions import LearnedPositions
from lm.models.vit import ViT, ViTConfig

TEXT_ATTENTION = ("causal", "bidirectional")


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  vocab_size: int = 0  # 0: taken from the tokenizer
  max_len: int = 16  # longest caption, EOS included
  image_size: int = 32
  patch_size: int = 4
  channels: int = 3
  vision_layers: int = 4
  text_layers: int = 2
  num_heads: int = 4
  embed_dim: int = 128  # both towers' width
  mlp_dim: int = 512
  proj_dim: int = 64  # E, the joint embedding space
  pool: str = "cls"  # image tower: cls | mean
  position: str = "learned"  # image tower: learned | sinusoidal (2-D)
  text_attention: str = "causal"  # causal (end-of-text pooling) | bidirectional (mean)
  init_temperature: float = 0.07
  max_logit_scale: float = 100.0
  dropout: float = 0.0
  norm: str = "layernorm"
  mlp: str = "gelu"
  pad_id: int = 0
  eos_id: int = 1  # the end-of-text token the causal tower pools at

  def __post_init__(self):
    if self.vocab_size < 0:
      raise ValueError(f"model.vocab_size must be >= 0, got {self.vocab_size}")
    if min(self.max_len, self.text_layers, self.proj_dim) <= 0:
      raise ValueError("model.max_len, text_layers and proj_dim must be positive")
    if self.text_attention not in TEXT_ATTENTION:
      raise ValueError(f"model.text_attention={self.text_attention!r}; choose one of "
                       f"{TEXT_ATTENTION}")
    if not (self.init_temperature > 0 and 1.0 / self.init_temperature <= self.max_logit_scale):
      raise ValueError(f"need model.init_temperature > 0 and 1 / init_temperature <= "
                       f"max_logit_scale, got {self.init_temperature}, {self.max_logit_scale}")
    self.vit_config()  # checks the image tower's fields

  def vit_config(self) -> ViTConfig:
    return ViTConfig(image_size=self.image_size, patch_size=self.patch_size,
                     channels=self.channels, num_layers=self.vision_layers,
                     num_heads=self.num_heads, embed_dim=self.embed_dim, mlp_dim=self.mlp_dim,
                     pool=self.pool, position=self.position, dropout=self.dropout,
                     norm=self.norm, mlp=self.mlp)

  def text_block_config(self) -> BlockConfig:
    return BlockConfig(num_heads=self.num_heads, head_dim=self.embed_dim // self.num_heads,
                       mlp_dim=self.mlp_dim, mlp=self.mlp, norm=self.norm, dropout=self.dropout,
                       num_layers_for_init=self.text_layers)


def _projection(dim: int, name: str) -> nn.Dense:
  return nn.Dense(dim, use_bias=False, name=name,
                  kernel_init=init.normal(init.DEFAULT_STDDEV, ("embed", None)))


class TextEncoder(nn.Module):
  """Captions (B, T), 0 = padding, each ending in EOS -> features (B, D)."""
  config: CLIPConfig

  @nn.compact
  def __call__(self, tokens_BT, *, deterministic: bool = True):
    c = self.config
    B, T = tokens_BT.shape
    valid_BT = masks_lib.valid_from_tokens(tokens_BT, c.pad_id)
    positions_BT = jnp.broadcast_to(jnp.arange(T)[None, :], (B, T))
    if c.text_attention == "causal":
      mask_B1TT = masks_lib.causal_mask(positions_BT, positions_BT) & \
          masks_lib.valid_keys_mask(valid_BT)
    else:
      mask_B1TT = masks_lib.padding_mask(valid_BT, valid_BT)
    x_BTD = TokenEmbedding(c.vocab_size, c.embed_dim, name="token_embed")(tokens_BT)
    x_BTD = x_BTD + LearnedPositions(c.max_len, c.embed_dim, name="pos_embed")(positions_BT)
    x_BTD = nn.Dropout(c.dropout, deterministic=deterministic)(x_BTD)
    for i in range(c.text_layers):
      x_BTD, _ = PreLNBlock(c.text_block_config(), name=f"block_{i}")(
          x_BTD, mask_B1TT, positions_BT=positions_BT, deterministic=deterministic)
    x_BTD = make_norm(c.norm, "ln_final")(x_BTD)
    if c.text_attention == "causal":  # the end-of-text token has read the whole caption
      is_eos_BT = tokens_BT == c.eos_id
      last_B = jnp.where(is_eos_BT.any(axis=1), jnp.argmax(is_eos_BT, axis=1),
                         jnp.maximum(valid_BT.sum(axis=1) - 1, 0))  # no EOS: the last token
      return jnp.take_along_axis(x_BTD, last_B[:, None, None], axis=1)[:, 0]
    weights_BT1 = valid_BT[..., None].astype(x_BTD.dtype)
    return (x_BTD * weights_BT1).sum(1) / jnp.maximum(weights_BT1.sum(1), 1.0)


def _normalize(x_BE):
  return x_BE / jnp.sqrt(jnp.sum(x_BE ** 2, axis=-1, keepdims=True) + 1e-12)


class CLIP(nn.Module):
  config: CLIPConfig

  def setup(self):
    c = self.config
    self.vision = ViT(c.vit_config())
    self.text = TextEncoder(c)
    self.image_proj = _projection(c.proj_dim, "image_proj")
    self.text_proj = _projection(c.proj_dim, "text_proj")
    init_value = math.log(1.0 / c.init_temperature)
    self.log_scale = self.param("log_logit_scale",
                                init.with_names(nn.initializers.constant(init_value), ()), ())

  def encode_image(self, images_BHWC, *, deterministic: bool = True):
    pooled_BD, _ = self.vision(images_BHWC, deterministic=deterministic)
    return _normalize(self.image_proj(pooled_BD))

  def encode_text(self, tokens_BT, *, deterministic: bool = True):
    return _normalize(self.text_proj(self.text(tokens_BT, deterministic=deterministic)))

  def logit_scale(self):
    """exp(log scale), clipped at max_logit_scale (no gradient beyond it)."""
    return jnp.exp(jnp.minimum(self.log_scale, math.log(self.config.max_logit_scale)))

  def __call__(self, images_BHWC, tokens_BT, *, deterministic: bool = True):
    """(image embeddings (B, E), text embeddings (B, E), logit scale), unit-norm rows."""
    return (self.encode_image(images_BHWC, deterministic=deterministic),
            self.encode_text(tokens_BT, deterministic=deterministic), self.logit_scale())


def contrastive_loss(image_BE, text_BE, logit_scale, valid_B=None):
  """Symmetric InfoNCE with in-batch negatives: the mean of image->text and text->image
  cross-entropies over the similarity logits scale * image_i . text_j, where pair i's
  positive is j = i. Rows with `valid_B` False (padding) are neither anchors nor
  negatives. Returns (loss, metrics)."""
  B = image_BE.shape[0]
  valid_B = jnp.ones((B,), bool) if valid_B is None else valid_B
  logits_BB = logit_scale * image_BE @ text_BE.T
  logits_BB = jnp.where(valid_B[None, :] & valid_B[:, None], logits_BB, -1e9)
  labels_B = jnp.arange(B)
  i2t_B = optax.softmax_cross_entropy_with_integer_labels(logits_BB, labels_B)
  t2i_B = optax.softmax_cross_entropy_with_integer_labels(logits_BB.T, labels_B)
  weights_B = valid_B.astype(jnp.float32)
  num_pairs = weights_B.sum()
  loss = 0.5 * ((i2t_B + t2i_B) * weights_B).sum() / jnp.maximum(num_pairs, 1.0)
  i2t_hit_B = jnp.argmax(logits_BB, axis=1) == labels_B
  t2i_hit_B = jnp.argmax(logits_BB, axis=0) == labels_B
  return loss, {"loss": loss, "num_pairs": num_pairs,
                "i2t_accuracy": (i2t_hit_B * weights_B).sum() / jnp.maximum(num_pairs, 1.0),
                "t2i_accuracy": (t2i_hit_B * weights_B).sum() / jnp.maximum(num_pairs, 1.0),
                "logit_scale": logit_scale}


def init_params(model: CLIP, seed: int):
  """Boxed params (logical axis names kept) from dummy inputs; shapes need only the config."""
  c = model.config
  images = jnp.zeros((1, c.image_size, c.image_size, c.channels), jnp.uint8)
  tokens = jnp.ones((1, c.max_len), jnp.int32)
  return model.init(jax.random.key(seed), images, tokens)["params"]

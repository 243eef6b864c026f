"""Token embeddings. Legend: B batch, T length, D model dim, V vocab.

Position embeddings live in lm/layers/positions.py."""

import flax.linen as nn
import jax.numpy as jnp

from lm.layers import init


class TokenEmbedding(nn.Module):
  """Lookup table, reusable as the (tied) output projection via `attend`."""
  vocab_size: int
  embed_dim: int

  def setup(self):
    self.embedding = self.param(
        "embedding", init.normal(init.DEFAULT_STDDEV, ("vocab", "embed")),
        (self.vocab_size, self.embed_dim))

  def __call__(self, tokens_BT):
    return jnp.take(self.embedding, tokens_BT, axis=0)

  def attend(self, x_BTD):
    return jnp.einsum("btd,vd->btv", x_BTD, self.embedding)

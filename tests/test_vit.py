"""ViT (lm/models/vit.py): patch extraction against a naive loop, shapes, 2-D sinusoidal
positions against their closed form, bidirectional attention, logical axis names."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.layers.init import Logical
from lm.models.vit import ViT, ViTConfig, patchify, sinusoidal_2d


def test_patchify_matches_a_naive_loop():
  rng = np.random.default_rng(0)
  images = rng.standard_normal((2, 12, 12, 3)).astype(np.float32)
  p = 4
  expected = np.zeros((2, 9, p * p * 3), np.float32)
  for b in range(2):
    for i in range(3):  # patch row
      for j in range(3):  # patch column
        flat = []
        for dy in range(p):
          for dx in range(p):
            for ch in range(3):
              flat.append(images[b, i * p + dy, j * p + dx, ch])
        expected[b, i * 3 + j] = flat
  np.testing.assert_array_equal(np.asarray(patchify(jnp.asarray(images), p)), expected)


def test_sinusoidal_2d_closed_form():
  table = np.asarray(sinusoidal_2d(4, 8))  # 16 patches, 4 channels for rows, 4 for columns
  assert table.shape == (16, 8)
  for r in range(4):
    for c in range(4):
      row = table[r * 4 + c]
      # channel pairs (sin, cos) at frequencies 1 and 1/100 (base 10000, dim 4)
      np.testing.assert_allclose(row[:4], [np.sin(r), np.cos(r), np.sin(r / 100), np.cos(r / 100)],
                                 atol=1e-6)
      np.testing.assert_allclose(row[4:], [np.sin(c), np.cos(c), np.sin(c / 100), np.cos(c / 100)],
                                 atol=1e-6)


@pytest.mark.parametrize("pool,position,classes", [("cls", "learned", 0), ("mean", "sinusoidal", 0),
                                                   ("cls", "sinusoidal", 5)])
def test_shapes_and_logical_names(pool, position, classes):
  c = ViTConfig(image_size=16, patch_size=4, num_layers=1, num_heads=2, embed_dim=16,
                mlp_dim=32, pool=pool, position=position, num_classes=classes)
  model = ViT(c)
  images = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.uint8)
  boxed = jax.eval_shape(lambda x: model.init(jax.random.key(0), x)["params"], images)
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, Logical))
  assert leaves and all(isinstance(x, Logical) for x in leaves)  # every param is named
  pooled, tokens = jax.eval_shape(lambda p, x: model.apply({"params": p}, x),
                                  nn.meta.unbox(boxed), images)
  assert pooled.shape == (2, classes or 16)
  assert tokens.shape == (2, 16 + (pool == "cls"), 16) == (2, c.num_tokens, 16)


def test_attention_is_bidirectional():
  """The first patch's output depends on the last patch's pixels."""
  model = ViT(ViTConfig(image_size=8, patch_size=4, num_layers=1, num_heads=1, embed_dim=8,
                        mlp_dim=8, pool="mean"))
  images = jnp.asarray(np.random.default_rng(1).uniform(0, 255, (1, 8, 8, 3)), jnp.float32)
  shapes = jax.eval_shape(lambda x: nn.meta.unbox(model.init(jax.random.key(0), x)["params"]),
                          images)
  rng = np.random.default_rng(2)
  params = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype), shapes)
  w_D = jnp.arange(8.0)  # not a plain sum: the final LayerNorm's outputs sum to 0

  def first_patch(x):
    return (model.apply({"params": params}, x)[1][:, 0] * w_D).sum()
  grad = jax.jit(jax.grad(first_patch))(images)
  assert np.abs(np.asarray(grad[:, 4:, 4:])).sum() > 0


def test_bad_config():
  with pytest.raises(ValueError, match="multiple of patch_size"):
    ViTConfig(image_size=10, patch_size=4)
  with pytest.raises(ValueError, match="pool"):
    ViTConfig(pool="max")

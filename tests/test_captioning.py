"""Image captioning (lm/models/vit.py ImageCaptioner, lm/tasks/captioning.py).

References: cached one-token-at-a-time decoding against the full teacher-forced
forward; lm.decoding's greedy decode against a naive loop that re-runs the whole
decoder on the growing prefix; the decoder reads every patch of the image.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.data import shapes
from lm.decoding import greedy_decode
from lm.models.vit import CaptionConfig, ImageCaptioner

CONFIG = CaptionConfig(vocab_size=20, image_size=32, patch_size=8, num_encoder_layers=1,
                       num_decoder_layers=2, num_heads=2, embed_dim=16, mlp_dim=32,
                       max_target_len=8)


@pytest.fixture(scope="module")
def model_and_params():
  model = ImageCaptioner(CONFIG)
  images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.uint8)
  tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
  shapes_tree = jax.eval_shape(lambda i, t: nn.meta.unbox(model.init(jax.random.key(0), i, t)),
                               images, tokens)["params"]
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape), s.dtype),
                        shapes_tree)
  assert "encoder_blocks_0" not in params["text"]  # only the decoder half is built
  return model, params


@pytest.mark.slow  # the greedy test below covers the cache path end to end; this checks logits
def test_cached_decoding_matches_teacher_forcing(model_and_params):
  model, params = model_and_params
  images = jnp.asarray(shapes.eval_examples(0, 2, "val", 0.5)["images"])
  tokens = jnp.asarray(np.random.default_rng(1).integers(2, 20, (2, 8)), jnp.int32)
  full = jax.jit(lambda i, t: model.apply({"params": params}, i, t))(images, tokens)

  @jax.jit
  def step(token, encoded, caches, index):
    return model.apply({"params": params}, token, encoded, caches=caches, cache_index=index,
                       method="decode")
  encoded = jax.jit(lambda i: model.apply({"params": params}, i, method="encode"))(images)
  assert encoded.shape == (2, CONFIG.vit_config().num_tokens, 16)
  caches, outs = model.init_cache(2), []
  for t in range(8):
    logits, caches = step(tokens[:, t:t + 1], encoded, caches, t)
    outs.append(logits)
  np.testing.assert_allclose(np.concatenate(outs, 1), np.asarray(full), rtol=1e-4, atol=1e-4)


def test_greedy_decode_matches_a_naive_loop(model_and_params):
  model, params = model_and_params
  images = shapes.eval_examples(1, 3, "novel", 0.5)["images"]
  got = greedy_decode(model, params, images, max_len=8, eos_id=1)
  forward = jax.jit(lambda i, t: model.apply({"params": params}, i, t))
  prefix = np.zeros((3, 8), np.int32)  # start token 0, then the argmax so far
  expected = np.zeros((3, 8), np.int32)
  done = np.zeros(3, bool)
  for t in range(8):
    logits = np.asarray(forward(jnp.asarray(images), jnp.asarray(prefix)))
    nxt = np.where(done, 0, logits[:, t].argmax(-1))
    expected[:, t] = nxt
    done |= nxt == 1
    if t + 1 < 8:
      prefix[:, t + 1] = nxt
  np.testing.assert_array_equal(got, expected)


@pytest.mark.slow  # one more compile of the whole model (~10 s on a quiet 2-core CPU)
def test_the_caption_depends_on_every_part_of_the_image(model_and_params):
  model, params = model_and_params
  images = jnp.asarray(shapes.eval_examples(2, 1, "val", 1.0)["images"], jnp.float32)
  tokens = jnp.zeros((1, 8), jnp.int32)
  w = jnp.arange(20.0)

  def first_logits(x):
    return (model.apply({"params": params}, x, tokens)[:, 0] * w).sum()
  grad = np.abs(np.asarray(jax.jit(jax.grad(first_logits))(images)))[0]
  for i in range(0, 32, 8):  # every 8 x 8 patch reaches the first generated token
    for j in range(0, 32, 8):
      assert grad[i:i + 8, j:j + 8].sum() > 0

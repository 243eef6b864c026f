"""ViT image classification on shapes (lm/tasks/image_classify.py, family "vit").

References: cross-entropy and accuracy against NumPy on fixed logits; labels against
the rendered pixels; a few optimizer steps on a fixed batch lower the loss.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lm import config as config_lib
from lm.config import OptimConfig
from lm.data import shapes
from lm.errors import UserError
from lm.models.registry import build_model
from lm.models.vit import ViTConfig
from lm.tasks import image_classify as ic
from lm.train.optimizer import make_optimizer

TINY = ViTConfig(image_size=32, patch_size=8, num_layers=1, num_heads=2, embed_dim=32,
                 mlp_dim=64, num_classes=ic.NUM_CLASSES)


def test_loss_and_accuracy_match_numpy_with_padding_weights():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((6, 16)).astype(np.float32) * 3
  labels = rng.integers(0, 16, 6).astype(np.int32)
  labels[:2] = np.argmax(logits[:2], 1)  # two certain hits
  weights = np.array([1, 1, 1, 1, 0, 0], np.float32)  # the last two are padding
  loss, m = ic.classification_metrics(jnp.asarray(logits), jnp.asarray(labels),
                                      jnp.asarray(weights))
  log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  ce = -log_p[np.arange(6), labels]
  assert float(loss) == pytest.approx(ce[:4].mean(), rel=1e-5)
  assert float(m["accuracy"]) == pytest.approx((np.argmax(logits, 1) == labels)[:4].mean())
  assert float(m["num_images"]) == 4


def test_labels_agree_with_the_rendered_pixels():
  ex = ic.make_examples(np.random.default_rng(1), 64)
  assert set(ex["labels"]) == set(range(ic.NUM_CLASSES))  # every class, held-out pairs too
  palette = np.asarray(list(shapes.COLOURS.values()), float)
  for image, label in zip(ex["images"].astype(float), ex["labels"]):
    bright = image[image.max(-1) >= 30]  # the background noise stays below 30
    # every object pixel is within the +-20 jitter of the label's colour
    nearest = np.argmin(((bright[:, None] - palette[None]) ** 2).sum(-1), 1)
    assert (nearest == list(shapes.COLOURS).index(shapes.PAIRS[label][0])).all()
    assert len(bright) >= 12  # the object is drawn, and large enough to see


def test_eval_batches_cover_every_image_once():
  ex = ic.eval_examples(0, 10)
  batches = ic.eval_batches(ex["images"], ex["labels"], 4)
  assert [len(b["labels"]) for b in batches] == [4, 4, 4]
  assert sum(b["weights"].sum() for b in batches) == 10
  np.testing.assert_array_equal(np.concatenate([b["labels"] for b in batches])[:10],
                                ex["labels"])
  np.testing.assert_array_equal(ic.eval_examples(0, 10)["images"], ex["images"])


def test_train_stream_is_deterministic_and_resumable():
  it = iter(ic.train_dataset(4, seed=3).to_iter_dataset())
  next(it)
  state = it.get_state()
  second = next(it)
  again = iter(ic.train_dataset(4, seed=3).to_iter_dataset())
  again.set_state(state)
  np.testing.assert_array_equal(next(again)["images"], second["images"])


def test_config_checks_are_user_errors():
  d = {"family": "vit", "task": "image_classify", "data": {"path": ""},
       "model": {"num_classes": 10}}
  with pytest.raises(UserError, match="num_classes=10"):
    ic.build(config_lib.from_dict(d), "/nonexistent")
  with pytest.raises(UserError, match="needs model family 'vit'"):
    ic.build(config_lib.from_dict({**d, "family": "gpt", "model": {}}), "/nonexistent")


def test_a_few_steps_lower_the_loss():
  model = build_model("vit", TINY)
  params = nn.meta.unbox(jax.jit(lambda: ic.init_params(model, 0))())  # eager init is slow
  ex = ic.make_examples(np.random.default_rng(2), 32)
  batch = {"images": ex["images"], "labels": ex["labels"], "weights": np.ones(32, np.float32)}
  loss_fn = ic.classify_loss(model)
  tx = make_optimizer(OptimConfig(lr=3e-3, min_lr=3e-3, warmup_steps=0, weight_decay=0.0), 20)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt):
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch,
                                                               jax.random.key(0), True)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  losses = [float(step(params, opt)[2])]
  for _ in range(15):
    params, opt, loss = step(params, opt)
    losses.append(float(loss))  # the loss before this update
  assert losses[0] == pytest.approx(np.log(16), rel=1e-4)  # the zero-initialised head
  assert losses[-1] < losses[0] - 0.3

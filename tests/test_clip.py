"""CLIP (lm/models/clip.py, lm/tasks/clip.py) and the shapes data (lm/data/shapes.py).

References: the contrastive loss against a per-pair Python loop; recall@k against a
hand-worked example; the captions against the rendered pixels; a few optimizer steps
on fixed pairs lower the loss.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lm.config import OptimConfig
from lm.data import shapes
from lm.models.clip import CLIP, CLIPConfig, contrastive_loss
from lm.tasks.clip import retrieval_recall
from lm.train.optimizer import make_optimizer

TINY = CLIPConfig(vocab_size=20, max_len=12, image_size=32, patch_size=8, vision_layers=1,
                  text_layers=1, num_heads=2, embed_dim=32, mlp_dim=64, proj_dim=16, pool="mean",
                  init_temperature=0.2)


def _naive_loss(img, txt, scale, valid):
  """(1/2n) sum over valid i of [-log p(text i | image i) - log p(image i | text i)]."""
  idx = [i for i in range(len(img)) if valid[i]]
  total = 0.0
  for i in idx:
    s_img = [scale * float(np.dot(img[i], txt[j])) for j in idx]  # image i vs every text
    s_txt = [scale * float(np.dot(img[j], txt[i])) for j in idx]  # text i vs every image
    pos = idx.index(i)
    total -= s_img[pos] - math.log(sum(math.exp(v) for v in s_img))
    total -= s_txt[pos] - math.log(sum(math.exp(v) for v in s_txt))
  return total / (2 * len(idx))


@pytest.mark.parametrize("masked", [False, True])
def test_contrastive_loss_matches_a_per_pair_loop(masked):
  rng = np.random.default_rng(0)
  img = rng.standard_normal((6, 4))
  txt = rng.standard_normal((6, 4))
  img /= np.linalg.norm(img, axis=1, keepdims=True)
  txt /= np.linalg.norm(txt, axis=1, keepdims=True)
  valid = np.array([True, True, False, True, True, False]) if masked else np.ones(6, bool)
  loss, metrics = contrastive_loss(jnp.asarray(img, jnp.float32), jnp.asarray(txt, jnp.float32),
                                   7.0, jnp.asarray(valid))
  assert float(loss) == pytest.approx(_naive_loss(img, txt, 7.0, valid), rel=1e-5)
  assert float(metrics["num_pairs"]) == valid.sum()
  sims = img @ txt.T
  hits = [np.argmax(np.where(valid, sims[i], -np.inf)) == i for i in range(6) if valid[i]]
  assert float(metrics["i2t_accuracy"]) == pytest.approx(np.mean(hits))


def test_retrieval_recall_hand_worked():
  # image 0 is closest to text 1, whose caption equals caption 0: a hit at k = 1.
  # image 1 ranks texts 2, 0, 1: its own caption ("x") is text 0 or 1, at rank 2.
  img = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
  txt = np.array([[0.9, 0.1], [1.0, 0.0], [0.0, 1.0]])
  captions = ["x", "x", "y"]
  r = retrieval_recall(img, txt, captions, ks=(1, 2))
  # i2t: image 0 -> text 1 ("x") hit; image 1 -> text 2 ("y") miss, top 2 adds text 0 (x) hit;
  # image 2 ("y") -> text 0 or 1 miss at 1 (0.7 vs 0.7*0.9+0.7*0.1 = 0.7 tie); text 2 at 3.
  assert r["i2t_recall@1"] == pytest.approx(1 / 3)
  assert r["i2t_recall@2"] == pytest.approx(2 / 3)
  # t2i: text 0 -> image 0 or 2 (0.9 vs 0.7): image 0 ("x") hit; text 1 -> image 0 hit;
  # text 2 -> image 1 ("x") miss, then image 2 ("y") hit at 2.
  assert r["t2i_recall@1"] == pytest.approx(2 / 3)
  assert r["t2i_recall@2"] == pytest.approx(1.0)


def test_captions_describe_the_pixels_and_held_out_pairs_stay_out():
  rng = np.random.default_rng(3)
  for split in ("train", "novel"):
    for _ in range(40):
      scene = shapes.sample_scene(rng, split, 0.3)
      image = shapes.render(scene, rng).astype(int)
      pairs = {(o.colour, o.shape) for o in scene.objects}
      assert bool(pairs & shapes.HELD_OUT) == (split == "novel")
      for obj in scene.objects:  # the object's centre pixel has (about) its colour
        y, x = int(obj.cy), int(obj.cx)
        assert np.abs(image[y, x] - shapes.COLOURS[obj.colour]).max() <= 20
      if len(scene.objects) == 2:
        a, b = scene.objects
        axis_a, axis_b = (a.cx, b.cx) if scene.relation in ("left of", "right of") else (a.cy, b.cy)
        assert (axis_a < axis_b) == (scene.relation in ("left of", "above"))
      words = scene.caption.split()
      assert words[:4] == ["a", scene.objects[0].size, scene.objects[0].colour,
                           scene.objects[0].shape]
  a = shapes.eval_examples(0, 8, "val", 0.5)
  b = shapes.eval_examples(0, 8, "val", 0.5)
  assert a["captions"] == b["captions"] and np.array_equal(a["images"], b["images"])


def test_text_tower_pools_the_end_of_text_token_and_the_scale_is_clipped():
  model = CLIP(TINY)
  tok = shapes.tokenizer()
  tokens = shapes.encode_captions(tok, ["a small red circle", "a large blue square above a "
                                        "small green cross"], 12)
  images = np.zeros((2, 32, 32, 3), np.uint8)
  shapes_tree = jax.eval_shape(lambda i, t: nn.meta.unbox(model.init(jax.random.key(0), i, t)),
                               images, tokens)["params"]
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype),
                        shapes_tree)
  params["log_logit_scale"] = jnp.float32(math.log(1 / 0.2))
  text = jax.jit(lambda p, t: model.apply({"params": p}, t, method="encode_text"))
  # Causal: the feature of "a small red circle </s>" does not depend on later tokens.
  altered = tokens.copy()
  altered[0, 6:] = 7
  np.testing.assert_allclose(np.asarray(text(params, tokens))[0],
                             np.asarray(text(params, altered))[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(text(params, tokens)), axis=1), 1.0,
                             rtol=1e-5)
  scale = lambda p: model.apply({"params": p}, method="logit_scale")  # noqa: E731
  assert float(scale(params)) == pytest.approx(1 / 0.2, rel=1e-5)
  big = dict(params, log_logit_scale=jnp.float32(math.log(1000.0)))
  assert float(scale(big)) == pytest.approx(100.0, rel=1e-5)


@pytest.mark.slow  # ~30 s of compiling and stepping on a quiet 2-core CPU
def test_a_few_steps_on_fixed_pairs_lower_the_loss():
  model = CLIP(TINY)
  ex = shapes.eval_examples(5, 16, "val", 0.25)
  tokens = shapes.encode_captions(shapes.tokenizer(), ex["captions"], 12)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), ex["images"], tokens))["params"]
  tx = make_optimizer(OptimConfig(lr=3e-3, min_lr=3e-3, warmup_steps=5, weight_decay=0.0), 30)

  @jax.jit
  def step(params, opt_state):
    def loss_fn(p):
      return contrastive_loss(*model.apply({"params": p}, ex["images"], tokens))[0]
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = tx.init(params)
  losses = []
  for _ in range(30):
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))
  assert losses[0] == pytest.approx(math.log(16), abs=0.5)  # near chance at init
  assert np.mean(losses[-3:]) < 0.7 * losses[0]

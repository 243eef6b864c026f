"""Image classification with a ViT on synthetic shapes (lm/data/shapes.py).

Every image shows one rendered object; its label is the object's colour-shape pair,
one of the 16 classes of `shapes.PAIRS` (class id = index, as for CLIP's zero-shot
classes). Unlike the caption tasks, training draws all 16 pairs: a classifier cannot
name a class it never saw, so the held-out compositions are not held out here. Sizes
(small, large), positions, colours and the background noise are jittered as in the
caption data.

The model is the "vit" family (lm/models/vit.py) with its linear head
(`model.num_classes`, filled in as 16 when left at 0). Batches are {images (B, 32, 32,
3) uint8, labels (B), weights (B)}; the loss is mean cross-entropy, and the trainer
evaluates it and the accuracy per image (`Task.eval_weights`) on a fixed validation
set. "tokens" per step, for tokens/s, are images. At the end, `final_metrics` splits
the validation accuracy by attribute: colour right, shape right, and small vs large
objects.

Legend: B batch, K classes.
"""

import dataclasses
import os

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lm import workdir as workdir_lib
from lm.data import shapes
from lm.errors import UserError
from lm.train.task import Task

NUM_CLASSES = len(shapes.PAIRS)
EVAL_WEIGHTS = {"loss": "num_images", "accuracy": "num_images"}
LABELS_FILE = "labels.txt"
_ENDLESS = 2**62


@dataclasses.dataclass(frozen=True)
class ImageClassifyConfig:
  num_eval: int = 512  # fixed validation images

  def __post_init__(self):
    if self.num_eval <= 0:
      raise UserError(f"task_config.num_eval must be positive, got {self.num_eval}")


def class_name(label: int) -> str:
  return " ".join(shapes.PAIRS[label])


def sample_object_scene(rng: np.random.Generator) -> shapes.Scene:
  """One object of any of the 16 colour-shape pairs, placed as shapes' single-object scenes."""
  colour, shape = shapes.PAIRS[rng.integers(NUM_CLASSES)]
  size = list(shapes.SIZES)[rng.integers(len(shapes.SIZES))]
  cy, cx = rng.uniform(10, 22, 2)
  return shapes.Scene((shapes.Obj(colour, shape, size, cy, cx),))


def make_examples(rng: np.random.Generator, count: int) -> dict:
  """images (N, 32, 32, 3) uint8, labels (N,) int32, small (N,) bool."""
  scenes = [sample_object_scene(rng) for _ in range(count)]
  return {"images": np.stack([shapes.render(s, rng) for s in scenes]),
          "labels": np.asarray([s.objects[0].label for s in scenes], np.int32),
          "small": np.asarray([s.objects[0].size == "small" for s in scenes])}


def eval_examples(seed: int, count: int) -> dict:
  """A fixed validation set, from its own stream (grain's training stream is separate)."""
  return make_examples(np.random.default_rng([seed, 101]), count)


def train_dataset(batch_size: int, seed: int):
  """Endless batches; batch i depends on (seed, i) only. A grain MapDataset: its iterator
  is checkpointable (`get_state` / `set_state`)."""

  def batch(_, rng: np.random.Generator) -> dict:
    ex = make_examples(rng, batch_size)
    return {"images": ex["images"], "labels": ex["labels"],
            "weights": np.ones(batch_size, np.float32)}

  return grain.MapDataset.range(_ENDLESS).random_map(batch, seed=seed)


def eval_batches(images, labels, batch_size: int) -> list[dict]:
  """Every image once; the last batch is filled with blank weight-0 images."""
  n = len(labels)
  pad = -n % batch_size
  images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
  labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
  weights = (np.arange(n + pad) < n).astype(np.float32)
  return [{"images": images[i:i + batch_size], "labels": labels[i:i + batch_size],
           "weights": weights[i:i + batch_size]} for i in range(0, n + pad, batch_size)]


def classification_metrics(logits_BK, labels_B, weights_B):
  """(loss, metrics): cross-entropy and accuracy averaged over images of weight > 0."""
  n = jnp.maximum(weights_B.sum(), 1.0)
  ce_B = optax.softmax_cross_entropy_with_integer_labels(logits_BK.astype(jnp.float32), labels_B)
  loss = (ce_B * weights_B).sum() / n
  accuracy = ((jnp.argmax(logits_BK, -1) == labels_B) * weights_B).sum() / n
  return loss, {"loss": loss, "accuracy": accuracy, "num_images": weights_B.sum()}


def classify_loss(model):
  def loss_fn(params, batch, rng, deterministic=False):
    logits_BK, _ = model.apply({"params": params}, batch["images"], deterministic=deterministic,
                               rngs={"dropout": rng})
    return classification_metrics(logits_BK, batch["labels"], batch["weights"])
  return loss_fn


def init_params(model, seed: int):
  """Boxed params (logical axis names kept); shapes need only the config."""
  c = model.config
  images = jnp.zeros((1, c.image_size, c.image_size, c.channels), jnp.uint8)
  return model.init(jax.random.key(seed), images)["params"]


def predict(model, params, batches: list[dict]) -> np.ndarray:
  """Predicted class ids of the real (weight > 0) images of `batches`, in order."""
  logits = jax.jit(lambda x: model.apply({"params": params}, x)[0])
  preds = [np.argmax(np.asarray(logits(b["images"])), -1)[b["weights"] > 0] for b in batches]
  return np.concatenate(preds)


def attribute_accuracies(preds, labels, small) -> dict:
  """Accuracy split by what the prediction gets right and by object size."""
  pairs = np.asarray(shapes.PAIRS)
  right = preds == labels
  return {"colour_accuracy": float((pairs[preds, 0] == pairs[labels, 0]).mean()),
          "shape_accuracy": float((pairs[preds, 1] == pairs[labels, 1]).mean()),
          "small_accuracy": float(right[small].mean()) if small.any() else float("nan"),
          "large_accuracy": float(right[~small].mean()) if (~small).any() else float("nan")}


def _with_classes(config):
  m = config.model
  if m.num_classes not in (0, NUM_CLASSES):
    raise UserError(f"model.num_classes={m.num_classes} but the shapes task has {NUM_CLASSES} "
                    f"colour-shape classes; leave it at 0 to fill it in")
  return dataclasses.replace(config, model=dataclasses.replace(m, num_classes=NUM_CLASSES))


def build(config, workdir: str):
  if config.family != "vit":
    raise UserError(f"task 'image_classify' needs model family 'vit', got {config.family!r}")
  m, tc, d = config.model, config.task_config, config.data
  if m.image_size != shapes.IMAGE_SIZE or m.channels != 3:
    raise UserError(f"the shapes images are {shapes.IMAGE_SIZE} x {shapes.IMAGE_SIZE} x 3; "
                    f"set model.image_size={shapes.IMAGE_SIZE} and model.channels=3")
  config = _with_classes(config)
  val = eval_examples(d.seed, tc.num_eval)
  val_batches = eval_batches(val["images"], val["labels"], d.eval_batch_size)
  tok = shapes.tokenizer()  # the class names' words; no text is modelled

  def final_metrics(model, params) -> dict:
    preds = predict(model, params, val_batches)
    out = attribute_accuracies(preds, val["labels"], val["small"])
    return {f"val_{k}": v for k, v in out.items()}

  def sample(model, params) -> str:
    preds = predict(model, params, eval_batches(val["images"][:4], val["labels"][:4], 4))
    lines = []
    for pred, label, small in zip(preds, val["labels"][:4], val["small"][:4]):
      truth = f"{'small' if small else 'large'} {class_name(label)}"
      lines.append(f"{truth} -> {class_name(pred)} {'=' if pred == label else '≠'}")
    return "\n".join(lines)

  def save_files(run_dir: str):
    tok.save(os.path.join(run_dir, workdir_lib.TOKENIZER))
    with open(os.path.join(run_dir, LABELS_FILE), "w") as f:
      f.write("\n".join(class_name(k) for k in range(NUM_CLASSES)) + "\n")

  task = Task(
      tokenizer=tok, train_iter=iter(train_dataset(d.batch_size, d.seed).to_iter_dataset()),
      eval_batches=val_batches, tokens_per_step=d.batch_size, make_loss=classify_loss,
      init_params=init_params, sample=sample, final_metrics=final_metrics,
      save_files=save_files, eval_weights=EVAL_WEIGHTS)
  return config, task

"""Contrastive image-text training (CLIP) on the synthetic shapes captions (lm/data/shapes.py).

Batches are {images (B, 32, 32, 3) uint8, tokens (B, T)} of freshly rendered training
scenes (seen colour-shape pairs only); the loss is `lm.models.clip.contrastive_loss`
(symmetric InfoNCE, in-batch negatives). The trainer's eval is that loss and the
in-batch top-1 accuracies on a fixed validation set. "tokens" per step, for tokens/s,
are image-caption pairs.

At the end (`final_metrics`), on fixed held-out sets:
- retrieval recall@1/@5, image->text and text->image, among `num_eval` pairs of new
  scenes from seen pairs (`val_*`) and of scenes that contain a held-out colour-shape
  pair (`novel_*`); a retrieved caption counts if its text equals the true one (two
  scenes can share a caption);
- zero-shot classification of single-object images into the 16 colour-shape classes by
  the most similar class prompt ("a {size} {colour} {shape}", averaged over sizes);
- a linear probe (lm.eval.probe) on the image tower's pooled features, fitted on
  single-object training images (seen pairs only, so it has never seen a held-out
  class) and scored on the same images as zero-shot.
"""

import dataclasses
import os

import jax
import numpy as np

from lm import workdir as workdir_lib
from lm.data import shapes
from lm.errors import UserError
from lm.eval.probe import fit_linear_probe
from lm.models.clip import contrastive_loss, init_params
from lm.tasks.causal_lm import with_vocab
from lm.train.task import Task


@dataclasses.dataclass(frozen=True)
class CLIPTaskConfig:
  single_fraction: float = 0.25  # share of one-object scenes (the rest have two)
  num_eval: int = 512  # pairs per held-out retrieval set (val, novel)
  num_class_eval: int = 256  # single-object images per split for zero-shot and the probe
  num_probe_train: int = 1024  # single-object training images the probe is fitted on
  probe_l2: float = 1e-3

  def __post_init__(self):
    if not 0.0 <= self.single_fraction <= 1.0:
      raise UserError(f"task_config.single_fraction must be in [0, 1], got "
                      f"{self.single_fraction}")
    if min(self.num_eval, self.num_class_eval, self.num_probe_train) <= 0 or self.probe_l2 < 0:
      raise UserError("task_config.num_eval, num_class_eval and num_probe_train must be "
                      "positive and probe_l2 >= 0")


def clip_loss(model):
  def loss_fn(params, batch, rng, deterministic=False):
    image_BE, text_BE, scale = model.apply({"params": params}, batch["images"], batch["tokens"],
                                           deterministic=deterministic, rngs={"dropout": rng})
    return contrastive_loss(image_BE, text_BE, scale, batch.get("valid"))
  return loss_fn


EVAL_WEIGHTS = {name: "num_pairs" for name in ("loss", "i2t_accuracy", "t2i_accuracy",
                                                "logit_scale")}


def retrieval_recall(image_NE, text_NE, captions, ks=(1, 5)) -> dict:
  """Recall@k both ways; a retrieved item is right if its caption text is the query's."""
  sims_NN = np.asarray(image_NE) @ np.asarray(text_NE).T
  same_NN = np.asarray(captions)[:, None] == np.asarray(captions)[None, :]
  out = {}
  for direction, s in (("i2t", sims_NN), ("t2i", sims_NN.T)):
    order_NN = np.argsort(-s, axis=1, kind="stable")
    for k in ks:
      hits = np.take_along_axis(same_NN, order_NN[:, :k], axis=1).any(axis=1)
      out[f"{direction}_recall@{k}"] = float(hits.mean())
  return out


def _batched(fn, x, batch_size: int):
  return np.concatenate([np.asarray(fn(x[i:i + batch_size])) for i in range(0, len(x),
                                                                            batch_size)])


def eval_batches(images, tokens, batch_size: int) -> list[dict]:
  """Fixed batches; the last is padded with rows marked invalid (no anchor, no negative)."""
  n = len(images)
  pad = -n % batch_size
  images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
  tokens = np.concatenate([tokens, np.zeros((pad, tokens.shape[1]), tokens.dtype)])
  valid = np.arange(n + pad) < n
  return [{"images": images[i:i + batch_size], "tokens": tokens[i:i + batch_size],
           "valid": valid[i:i + batch_size]} for i in range(0, n + pad, batch_size)]


def build(config, workdir: str):
  if config.family != "clip":
    raise UserError(f"task 'clip' needs model family 'clip', got {config.family!r}")
  tc, d = config.task_config, config.data
  tok = shapes.tokenizer()
  config = with_vocab(config, tok.vocab_size)
  text_len = config.model.max_len
  if text_len < shapes.MAX_CAPTION_WORDS + 1:
    raise UserError(f"model.max_len={text_len} is shorter than the longest caption "
                    f"({shapes.MAX_CAPTION_WORDS} words + EOS)")
  if config.model.image_size != shapes.IMAGE_SIZE or config.model.channels != 3:
    raise UserError(f"the shapes images are {shapes.IMAGE_SIZE} x {shapes.IMAGE_SIZE} x 3; "
                    f"set model.image_size={shapes.IMAGE_SIZE} and model.channels=3")
  val = shapes.eval_examples(d.seed, tc.num_eval, "val", tc.single_fraction)
  novel = shapes.eval_examples(d.seed, tc.num_eval, "novel", tc.single_fraction)
  encode = lambda captions: shapes.encode_captions(tok, captions, text_len)  # noqa: E731

  def embeddings(model, params):
    image = jax.jit(lambda x: model.apply({"params": params}, x, method="encode_image"))
    text = jax.jit(lambda x: model.apply({"params": params}, x, method="encode_text"))
    features = jax.jit(lambda x: model.apply({"params": params}, x,
                                             method=lambda m, x: m.vision(x)[0]))
    bs = d.eval_batch_size
    return (lambda x: _batched(image, x, bs), lambda x: _batched(text, x, bs),
            lambda x: _batched(features, x, bs))

  def final_metrics(model, params) -> dict:
    embed_image, embed_text, features = embeddings(model, params)
    out = {}
    for name, ex in (("val", val), ("novel", novel)):
      recall = retrieval_recall(embed_image(ex["images"]), embed_text(encode(ex["captions"])),
                                ex["captions"])
      out.update({f"{name}_{k}": v for k, v in recall.items()})
    prompts = shapes.class_prompts()
    prompt_text = embed_text(encode([p for per_class in prompts for p in per_class]))
    class_CE = prompt_text.reshape(len(prompts), -1, prompt_text.shape[-1]).mean(1)
    class_CE /= np.linalg.norm(class_CE, axis=-1, keepdims=True)
    probe_train = shapes.make_examples(np.random.default_rng([d.seed, 7]), tc.num_probe_train,
                                       "train", 1.0)
    train_x = features(probe_train["images"])
    for name in ("val", "novel"):
      ex = shapes.eval_examples(d.seed + 1, tc.num_class_eval, name, 1.0)
      zero_shot = np.argmax(embed_image(ex["images"]) @ class_CE.T, axis=1)
      out[f"{name}_zero_shot_accuracy"] = float((zero_shot == ex["labels"]).mean())
      probe = fit_linear_probe(train_x, probe_train["labels"], features(ex["images"]),
                               ex["labels"], len(shapes.PAIRS), l2=tc.probe_l2)
      out[f"{name}_probe_accuracy"] = probe["accuracy"]
    return out

  def sample(model, params) -> str:
    embed_image, embed_text, _ = embeddings(model, params)
    sims = embed_image(novel["images"][:4]) @ embed_text(encode(novel["captions"])).T
    lines = []
    for i, j in enumerate(np.argmax(sims, axis=1)):
      mark = "=" if novel["captions"][j] == novel["captions"][i] else "≠"
      lines.append(f"{novel['captions'][i]} -> retrieved: {novel['captions'][j]} {mark}")
    return "\n".join(lines)

  def save_files(run_dir: str):
    tok.save(os.path.join(run_dir, workdir_lib.TOKENIZER))

  train_iter = iter(shapes.train_dataset(d.batch_size, d.seed, tc.single_fraction,
                                         text_len).to_iter_dataset())
  task = Task(
      tokenizer=tok, train_iter=train_iter,
      eval_batches=eval_batches(val["images"], encode(val["captions"]), d.eval_batch_size),
      tokens_per_step=d.batch_size, make_loss=clip_loss,
      init_params=lambda model, seed: init_params(model, seed),
      sample=sample, final_metrics=final_metrics, save_files=save_files,
      eval_weights=EVAL_WEIGHTS)
  return config, task

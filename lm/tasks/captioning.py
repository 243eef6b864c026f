"""Image captioning (image -> text) on the synthetic shapes captions (lm/data/shapes.py).

The model is the "caption" family (lm/models/vit.py `ImageCaptioner`): a ViT encoder
whose patch tokens the encoder-decoder family's text decoder cross-attends to.
Batches are {inputs: images (B, 32, 32, 3) uint8, targets: caption ids + EOS (B, T)} of
freshly rendered training scenes (seen colour-shape pairs only); the loss, teacher-
forced cross-entropy with token and sequence accuracy, is the seq2seq task's
(`lm.tasks.seq2seq.seq2seq_loss`). At the end, `final_metrics` decodes fixed held-out
images greedily (lm/decoding.py) and reports exact match and token accuracy of the
generated captions on new scenes of seen pairs (`val_greedy_*`) and on scenes with a
held-out colour-shape pair (`novel_greedy_*`).
"""

import dataclasses
import os

import numpy as np

from lm import workdir as workdir_lib
from lm.data import shapes
from lm.errors import UserError
from lm.models.vit import init_caption_params
from lm.tasks.causal_lm import with_vocab
from lm.tasks.seq2seq import EVAL_WEIGHTS, generation_metrics, greedy_outputs, seq2seq_loss
from lm.train.task import Task


@dataclasses.dataclass(frozen=True)
class CaptioningConfig:
  single_fraction: float = 0.25  # share of one-object scenes (the rest have two)
  num_eval: int = 512  # held-out images per set (val, novel)

  def __post_init__(self):
    if not 0.0 <= self.single_fraction <= 1.0:
      raise UserError(f"task_config.single_fraction must be in [0, 1], got "
                      f"{self.single_fraction}")
    if self.num_eval <= 0:
      raise UserError(f"task_config.num_eval must be positive, got {self.num_eval}")


def eval_batches(images, targets, batch_size: int) -> list[dict]:
  """Fixed batches; the last is filled with blank images whose targets are all padding
  (weight 0 in the loss)."""
  pad = -len(images) % batch_size
  images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
  targets = np.concatenate([targets, np.zeros((pad, targets.shape[1]), targets.dtype)])
  return [{"inputs": images[i:i + batch_size], "targets": targets[i:i + batch_size]}
          for i in range(0, len(images), batch_size)]


def build(config, workdir: str):
  if config.family != "caption":
    raise UserError(f"task 'captioning' needs model family 'caption', got {config.family!r}")
  tc, d, m = config.task_config, config.data, config.model
  if m.max_target_len < shapes.MAX_CAPTION_WORDS + 1:
    raise UserError(f"model.max_target_len={m.max_target_len} is shorter than the longest "
                    f"caption ({shapes.MAX_CAPTION_WORDS} words + EOS)")
  if m.image_size != shapes.IMAGE_SIZE or m.channels != 3:
    raise UserError(f"the shapes images are {shapes.IMAGE_SIZE} x {shapes.IMAGE_SIZE} x 3; "
                    f"set model.image_size={shapes.IMAGE_SIZE} and model.channels=3")
  tok = shapes.tokenizer()
  config = with_vocab(config, tok.vocab_size)
  length = m.max_target_len
  sets = {}
  for name in ("val", "novel"):
    ex = shapes.eval_examples(d.seed, tc.num_eval, name, tc.single_fraction)
    sets[name] = (ex["images"], shapes.encode_captions(tok, ex["captions"], length))

  def final_metrics(model, params) -> dict:
    out = {}
    for name, (images, targets) in sets.items():
      preds = greedy_outputs(model, params, images, d.eval_batch_size, length)
      out.update(generation_metrics(preds, targets, f"{name}_greedy"))
    return out

  def sample(model, params) -> str:
    images, targets = sets["novel"]
    preds = greedy_outputs(model, params, images[:4], 4, length)
    lines = []
    for pred, target in zip(preds, targets[:4]):
      said, truth = shapes.caption_text(pred, tok), shapes.caption_text(target, tok)
      lines.append(f"{said} {'=' if said == truth else '≠'} {truth}")
    return "\n".join(lines)

  def save_files(run_dir: str):
    tok.save(os.path.join(run_dir, workdir_lib.TOKENIZER))

  train_iter = iter(shapes.train_dataset(d.batch_size, d.seed, tc.single_fraction, length,
                                         names=("inputs", "targets")).to_iter_dataset())
  task = Task(
      tokenizer=tok, train_iter=train_iter,
      eval_batches=eval_batches(*sets["val"], d.eval_batch_size),
      tokens_per_step=d.batch_size * length, make_loss=seq2seq_loss,
      init_params=init_caption_params, sample=sample, final_metrics=final_metrics,
      save_files=save_files, eval_weights=EVAL_WEIGHTS)
  return config, task

"""Knowledge distillation (Hinton et al. 2015) of a trained decoder into a smaller one.

The teacher is a trained causal-LM workdir (`task_config.teacher_workdir`); the student
(this run's `model`) trains on the same corpus windows as a causal LM would, on

  alpha * CE(student, next tokens) + (1 - alpha) * T^2 * KL(teacher_T || student_T)

per token (lm/post_training/losses.py). The teacher is frozen and only evaluated; the
student uses the teacher's tokenizer. Eval metrics: `loss` (the objective), `ce` (the
student's plain next-token cross-entropy, comparable to a causal_lm run's val_loss) and
`kl`. With alpha = 1 the gradient is exactly causal-LM training's.
"""

import dataclasses
import os
import shutil

import jax
import jax.numpy as jnp

from lm import workdir as workdir_lib
from lm.errors import UserError
from lm.post_training.losses import distillation_loss
from lm.post_training.policy import load_policy
from lm.tasks import causal_lm


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  teacher_workdir: str = ""  # a trained causal_lm run on the same corpus
  temperature: float = 2.0
  alpha: float = 0.5  # weight of the hard-label cross-entropy

  def __post_init__(self):
    if self.temperature <= 0 or not 0.0 <= self.alpha <= 1.0:
      raise UserError(f"task_config.temperature must be > 0 and alpha in [0, 1], got "
                      f"{self.temperature}, {self.alpha}")


def distill_loss(student, teacher, tc: DistillConfig):
  """The student's loss function; the teacher's params are constants of it."""
  teacher_params = teacher.params

  def loss_fn(params, batch, rng, deterministic=False):
    inputs_BT = batch["inputs"]
    logits_BTV, _ = student.apply({"params": params}, inputs_BT, deterministic=deterministic,
                                  rngs={"dropout": rng})
    teacher_BTV, _ = teacher.model.apply({"params": teacher_params}, inputs_BT)
    weights_BT = batch.get("weights")
    loss, metrics = distillation_loss(logits_BTV, jax.lax.stop_gradient(teacher_BTV),
                                      batch["targets"], weights_BT,
                                      temperature=tc.temperature, alpha=tc.alpha)
    num_tokens = weights_BT.sum() if weights_BT is not None else jnp.float32(inputs_BT.size)
    return loss, {"loss": loss, "ce": metrics["hard_loss"], "kl": metrics["kl"],
                  "num_tokens": num_tokens}

  return loss_fn


def build(config, workdir: str):
  tc = config.task_config
  if not tc.teacher_workdir:
    raise UserError("task_config.teacher_workdir is required: a trained causal_lm workdir, e.g. "
                    "python -m experiments.run --config=configs/shakespeare_char.py "
                    "--workdir=/tmp/teacher")
  teacher = load_policy(tc.teacher_workdir)
  if teacher.config.data.path != config.data.path:
    raise UserError(f"the teacher was trained on {teacher.config.data.path}, this run reads "
                    f"{config.data.path}: distil on the same corpus")
  if config.data.seq_len > teacher.model.config.max_len:
    raise UserError(f"data.seq_len={config.data.seq_len} exceeds the teacher's max_len="
                    f"{teacher.model.config.max_len}")
  own = os.path.join(workdir, workdir_lib.TOKENIZER)
  if not os.path.exists(own):  # the student speaks the teacher's vocabulary
    os.makedirs(workdir, exist_ok=True)
    shutil.copy(os.path.join(tc.teacher_workdir, workdir_lib.TOKENIZER), own)
  config, task = causal_lm.build(config, workdir)
  if config.model.vocab_size != teacher.model.config.vocab_size:
    raise UserError("student and teacher vocabularies differ")
  task.make_loss = lambda model: distill_loss(model, teacher, tc)
  return config, task

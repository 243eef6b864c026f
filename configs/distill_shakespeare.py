"""Knowledge distillation on tiny Shakespeare: a 2-layer, 64-dim student learns from a
trained 4-layer, 128-dim teacher (lm/tasks/distill.py).

Teacher (the default recipe, 0.8M params):
  python -m experiments.run --config=configs/shakespeare_char.py --workdir=/tmp/teacher
Student, distilled (T = 2, alpha = 0.5), and the same student from scratch on the same
windows (the `scratch` arg: a plain causal_lm run of the same model and steps):
  python -m experiments.run --config=configs/distill_shakespeare.py:teacher=/tmp/teacher \
      --workdir=/tmp/student_kd
  python -m experiments.run --config=configs/distill_shakespeare.py:scratch \
      --workdir=/tmp/student_scratch
Compare the distilled run's val_ce (next-token cross-entropy) with the scratch run's
val_loss; measured numbers in docs/post_training.md.

Args: smoke, teacher=DIR, scratch, steps=N, temperature=T, alpha=A.
"""

import ml_collections

from configs import base
from configs.shakespeare_char import recipe as lm_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = base.parse_arg(arg, smoke=False, teacher="", scratch=False, steps=1000,
                        temperature=2.0, alpha=0.5)
  c = lm_config("smoke" if args.smoke else None)
  c.model.num_layers = 2
  c.model.num_heads = 2
  c.model.embed_dim = 64
  c.model.mlp_dim = 256
  if not args.smoke:
    c.train.num_steps = args.steps
    c.train.eval_every = 250
  if not args.scratch:
    c.task = "distill"
    c.task_config = ml_collections.ConfigDict(dict(
        teacher_workdir=args.teacher, temperature=args.temperature, alpha=args.alpha))
  return c

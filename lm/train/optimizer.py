"""AdamW with warmup + cosine decay, global-norm clipping and decoupled weight decay."""

import jax
import optax

from lm.adapt.trainable import mask_optimizer
from lm.config import OptimConfig
from lm.train.ema import param_ema


def learning_rate_schedule(config: OptimConfig, num_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `lr`, then cosine decay to `min_lr` at `num_steps`."""
  warmup = min(config.warmup_steps, num_steps)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.lr, warmup_steps=warmup,
      decay_steps=max(num_steps, warmup + 1), end_value=config.min_lr)


def decay_mask(params):
  """Weight decay on matrices and embeddings only; biases and norm scales are exempt."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(config: OptimConfig, num_steps: int,
                   trainable: tuple[str, ...] = ()) -> optax.GradientTransformation:
  """`trainable`: regexes over parameter paths; only matches train (lm/adapt/trainable.py)."""
  parts = []
  if config.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(config.grad_clip))
  parts.append(optax.adamw(learning_rate_schedule(config, num_steps), b1=config.b1,
                           b2=config.b2, eps=config.eps, weight_decay=config.weight_decay,
                           mask=decay_mask))
  # Clipping and Adam see the trainable parameters only; the EMA averages all of them.
  parts = [mask_optimizer(optax.chain(*parts), trainable)]
  if config.ema_decay > 0:
    parts.append(param_ema(config.ema_decay))
  tx = optax.chain(*parts)
  if config.nonfinite == "skip":
    # Non-finite gradients leave params and optimizer state as they were (the loop
    # counts these steps and stops after max_nonfinite in a row).
    tx = optax.apply_if_finite(tx, max_consecutive_errors=config.max_nonfinite)
  return tx

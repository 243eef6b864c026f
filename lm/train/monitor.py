"""Watching the loss: non-finite steps (stop, or skip and count) and loss spikes.

With `optim.nonfinite="skip"` the optimizer is wrapped in `optax.apply_if_finite`,
which leaves params and optimizer state untouched on a step whose gradients are not
finite; this monitor then counts such steps instead of stopping, and stops only after
`optim.max_nonfinite` of them in a row. A spike is a finite loss more than
`threshold` standard deviations above the mean of the previous `window` steps; spikes
are counted and reported, not acted on.
"""

import collections

import numpy as np

from lm.errors import UserError


class TrainingDiverged(UserError):
  """The loss became NaN or infinite; the last good checkpoint is left untouched."""


class LossMonitor:
  def __init__(self, skip_nonfinite: bool = False, max_nonfinite: int = 10,
               window: int = 100, threshold: float = 6.0):
    self.skip_nonfinite, self.max_nonfinite = skip_nonfinite, max_nonfinite
    self.threshold = threshold
    self.recent = collections.deque(maxlen=window)
    self.nonfinite_steps = 0
    self.consecutive_nonfinite = 0
    self.spikes: list[int] = []

  def update(self, losses: np.ndarray, first_step: int, last_good_step: int | None):
    """Checks the losses of steps first_step+1 .. first_step+len(losses)."""
    for i, loss in enumerate(np.asarray(losses, np.float64)):
      step = first_step + i + 1
      if not np.isfinite(loss):
        self.nonfinite_steps += 1
        self.consecutive_nonfinite += 1
        if not self.skip_nonfinite or self.consecutive_nonfinite >= self.max_nonfinite:
          last = "none" if last_good_step is None else f"step {last_good_step}"
          why = ("" if not self.skip_nonfinite else
                 f" ({self.consecutive_nonfinite} non-finite steps in a row)")
          raise TrainingDiverged(f"loss became {loss} at step {step}{why}; stopped without "
                                 f"saving (last good checkpoint: {last})")
        continue
      self.consecutive_nonfinite = 0
      if len(self.recent) >= 20:
        mean, std = np.mean(self.recent), np.std(self.recent)
        if std > 0 and loss > mean + self.threshold * std:
          self.spikes.append(step)
      self.recent.append(loss)

  def counts(self) -> dict:
    return {"nonfinite_steps": self.nonfinite_steps, "loss_spikes": len(self.spikes)}

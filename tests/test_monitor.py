"""Non-finite losses (stop, or skip the update and count) and loss-spike detection."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.config import OptimConfig
from lm.train.monitor import LossMonitor, TrainingDiverged
from lm.train.optimizer import make_optimizer
from lm.train.state import create_train_state
from lm.train.step import train_step

NAN = float("nan")


def test_default_policy_stops_at_the_first_nonfinite_loss():
  monitor = LossMonitor()
  monitor.update(np.array([2.0, 1.9]), first_step=0, last_good_step=None)
  with pytest.raises(TrainingDiverged, match="loss became nan at step 4.*last good checkpoint: "
                                              "step 2"):
    monitor.update(np.array([1.8, NAN, 1.7]), first_step=2, last_good_step=2)


def test_skip_policy_counts_and_stops_after_too_many_in_a_row():
  monitor = LossMonitor(skip_nonfinite=True, max_nonfinite=3)
  monitor.update(np.array([2.0, NAN, 1.9, NAN, NAN, 1.8]), 0, None)
  assert monitor.counts() == {"nonfinite_steps": 3, "loss_spikes": 0}
  with pytest.raises(TrainingDiverged, match="3 non-finite steps in a row"):
    monitor.update(np.array([np.inf, NAN, NAN]), 6, None)


def test_spikes_are_losses_far_above_the_recent_window():
  rng = np.random.default_rng(0)
  losses = 2.0 + 0.01 * rng.standard_normal(60)
  losses[40] = 2.5  # 50 standard deviations up
  monitor = LossMonitor(threshold=6.0)
  monitor.update(losses, first_step=100, last_good_step=None)
  assert monitor.spikes == [141]


def test_skip_policy_leaves_params_and_optimizer_state_untouched():
  """A NaN gradient under optim.nonfinite=skip: no update; the next finite step applies."""
  tx = make_optimizer(OptimConfig(lr=0.1, warmup_steps=0, nonfinite="skip"), 10)
  params = {"w": jnp.array([1.0, -2.0])}
  state = create_train_state(params, tx)

  def loss_fn(p, batch, rng, deterministic=False):
    loss = jnp.sum((p["w"] - batch["target"]) ** 2) * batch["scale"]
    return loss, {"loss": loss}

  step = jax.jit(lambda s, b: train_step(s, b, jax.random.key(0), loss_fn=loss_fn, tx=tx))
  bad = {"target": jnp.zeros(2), "scale": jnp.array(NAN)}
  new, metrics = step(state, bad)
  assert np.isnan(metrics["loss"])
  np.testing.assert_array_equal(new.params["w"], params["w"])
  for a, b in zip(jax.tree.leaves(new.opt_state), jax.tree.leaves(state.opt_state)):
    if np.asarray(a).dtype.kind == "f":
      np.testing.assert_array_equal(a, b)
  good = {"target": jnp.zeros(2), "scale": jnp.array(1.0)}
  newer, _ = step(new, good)
  assert np.all(np.abs(newer.params["w"]) < np.abs(params["w"]))  # moved towards 0

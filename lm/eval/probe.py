"""Probing: how much of a label is linearly (or shallowly) decodable from frozen features.

`fit_linear_probe` trains a softmax-regression probe (or, with `hidden > 0`, a one-hidden-
layer MLP probe) on fixed feature vectors with full-batch L-BFGS and an L2 penalty, and
reports accuracy on held-out features. Features are standardised with the training
split's mean and std, so one `l2` works across feature scales. Legend: N train rows,
M val rows, F features, C classes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lm.errors import UserError


def _check(x_NF, y_N, name: str, num_classes: int):
  if x_NF.ndim != 2 or y_N.ndim != 1 or len(x_NF) != len(y_N) or len(y_N) == 0:
    raise UserError(f"probe {name} data: need features (N, F) and labels (N,), got "
                    f"{x_NF.shape} and {y_N.shape}")
  if y_N.min() < 0 or y_N.max() >= num_classes:
    raise UserError(f"probe {name} labels must lie in [0, {num_classes}), got "
                    f"[{y_N.min()}, {y_N.max()}]")


def _init(key, num_features: int, num_classes: int, hidden: int) -> dict:
  if hidden <= 0:
    return {"w": jnp.zeros((num_features, num_classes)), "b": jnp.zeros((num_classes,))}
  k1, k2 = jax.random.split(key)
  return {"w1": jax.random.normal(k1, (num_features, hidden)) / np.sqrt(num_features),
          "b1": jnp.zeros((hidden,)),
          "w": jax.random.normal(k2, (hidden, num_classes)) / np.sqrt(hidden),
          "b": jnp.zeros((num_classes,))}


def probe_logits(params: dict, x_NF):
  h = jax.nn.relu(x_NF @ params["w1"] + params["b1"]) if "w1" in params else x_NF
  return h @ params["w"] + params["b"]


def probe_objective(params: dict, x_NF, y_N, l2: float):
  """Mean cross-entropy + (l2 / 2) * sum of squared weights (biases are not penalised)."""
  logp_NC = jax.nn.log_softmax(probe_logits(params, x_NF))
  nll = -jnp.take_along_axis(logp_NC, y_N[:, None], axis=1).mean()
  penalty = sum(jnp.sum(v ** 2) for k, v in params.items() if k.startswith("w"))
  return nll + 0.5 * l2 * penalty


def fit_linear_probe(train_x_NF, train_y_N, val_x_MF, val_y_M, num_classes: int, *,
                     hidden: int = 0, l2: float = 1e-3, steps: int = 300, seed: int = 0) -> dict:
  """Fits the probe on (train_x, train_y); returns accuracies, losses and the parameters."""
  train_x_NF, val_x_MF = np.asarray(train_x_NF, np.float32), np.asarray(val_x_MF, np.float32)
  train_y_N, val_y_M = np.asarray(train_y_N, np.int32), np.asarray(val_y_M, np.int32)
  _check(train_x_NF, train_y_N, "train", num_classes)
  _check(val_x_MF, val_y_M, "val", num_classes)
  if val_x_MF.shape[1] != train_x_NF.shape[1]:
    raise UserError(f"probe val features have {val_x_MF.shape[1]} dims, train {train_x_NF.shape[1]}")
  mean_F = train_x_NF.mean(0)
  std_F = train_x_NF.std(0) + 1e-6
  x_NF = jnp.asarray((train_x_NF - mean_F) / std_F)
  v_MF = jnp.asarray((val_x_MF - mean_F) / std_F)
  y_N = jnp.asarray(train_y_N)

  def objective(p):
    return probe_objective(p, x_NF, y_N, l2)

  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(objective)

  @jax.jit
  def run(params):
    def body(carry, _):
      params, state = carry
      value, grad = value_and_grad(params, state=state)
      updates, state = solver.update(grad, state, params, value=value, grad=grad,
                                     value_fn=objective)
      return (optax.apply_updates(params, updates), state), value
    (params, _), values = jax.lax.scan(body, (params, solver.init(params)), None, length=steps)
    return params, values

  params, values = run(_init(jax.random.PRNGKey(seed), x_NF.shape[1], num_classes, hidden))
  train_pred = np.asarray(jnp.argmax(probe_logits(params, x_NF), -1))
  val_logits = probe_logits(params, v_MF)
  val_pred = np.asarray(jnp.argmax(val_logits, -1))
  val_nll = -jnp.take_along_axis(jax.nn.log_softmax(val_logits), jnp.asarray(val_y_M)[:, None],
                                 axis=1).mean()
  return {"accuracy": float((val_pred == val_y_M).mean()),
          "train_accuracy": float((train_pred == train_y_N).mean()),
          "val_loss": float(val_nll), "objective": float(values[-1]),
          "params": jax.tree.map(np.asarray, params), "mean": mean_F, "std": std_F}

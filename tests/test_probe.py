"""The probe against an independent fit: scipy's L-BFGS on a NumPy softmax regression."""

import numpy as np
import pytest
import scipy.optimize
import scipy.special

from lm.errors import UserError
from lm.eval.probe import fit_linear_probe


def _numpy_objective(theta, x, y, num_classes, l2):
  F = x.shape[1]
  w, b = theta[:F * num_classes].reshape(F, num_classes), theta[F * num_classes:]
  logp = scipy.special.log_softmax(x @ w + b, axis=1)
  return -logp[np.arange(len(y)), y].mean() + 0.5 * l2 * np.sum(w ** 2)


def _blobs(rng, n, num_classes=3, dims=5, spread=1.5):
  centers = rng.normal(size=(num_classes, dims)) * spread
  y = rng.integers(0, num_classes, n)
  return centers[y] + rng.normal(size=(n, dims)), y


def test_linear_probe_reaches_scipy_minimum():
  rng = np.random.default_rng(0)
  x, y = _blobs(rng, 200)
  l2 = 1e-2
  out = fit_linear_probe(x, y, x[:50], y[:50], 3, l2=l2, steps=200)
  xs = (x - x.mean(0)) / (x.std(0) + 1e-6)  # the probe standardises with train statistics
  ref = scipy.optimize.minimize(_numpy_objective, np.zeros(5 * 3 + 3), args=(xs, y, 3, l2),
                                method="L-BFGS-B", options={"gtol": 1e-10, "maxiter": 5000})
  assert out["objective"] == pytest.approx(ref.fun, abs=1e-4)
  ours = _numpy_objective(np.concatenate([out["params"]["w"].ravel(), out["params"]["b"]]),
                          xs, y, 3, l2)
  assert ours == pytest.approx(ref.fun, abs=1e-4)


def test_probe_accuracy_on_held_out_blobs_and_chance_on_noise():
  rng = np.random.default_rng(1)
  x, y = _blobs(rng, 600, spread=4.0)
  assert fit_linear_probe(x[:400], y[:400], x[400:], y[400:], 3)["accuracy"] > 0.95
  noise = rng.normal(size=(600, 5))
  acc = fit_linear_probe(noise[:400], y[:400], noise[400:], y[400:], 3)["accuracy"]
  assert acc < 0.5  # 3 classes: chance is 1/3


def test_mlp_probe_solves_xor_that_a_linear_probe_cannot():
  rng = np.random.default_rng(2)
  x = rng.uniform(-1, 1, size=(800, 2))
  y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(int)
  linear = fit_linear_probe(x[:600], y[:600], x[600:], y[600:], 2)
  mlp = fit_linear_probe(x[:600], y[:600], x[600:], y[600:], 2, hidden=32, l2=1e-4, steps=500)
  assert linear["accuracy"] < 0.7 and mlp["accuracy"] > 0.9


def test_bad_shapes_and_labels_raise():
  x = np.zeros((4, 3))
  with pytest.raises(UserError, match="labels must lie"):
    fit_linear_probe(x, np.array([0, 1, 2, 5]), x, np.zeros(4, int), 3)
  with pytest.raises(UserError, match="need features"):
    fit_linear_probe(x, np.zeros(3, int), x, np.zeros(4, int), 3)

"""Fitting scaling laws: Huber (or least squares) on log-loss, L-BFGS from a grid of inits.

Hoffmann et al. (2022, D.2) minimise Σ Huber_δ(log L̂ − log L) with δ = 1e-3 using
L-BFGS started from every point of a grid, and keep the best local minimum. The
Huber loss with so small a δ behaves like an L1 loss on the log residuals, so a few
outlying runs (a diverged learning rate, an unlucky seed) move the fit far less than
they move least squares. Bootstrap resampling of the data points gives confidence
intervals for every constant.
"""

import dataclasses
import itertools

import numpy as np
import scipy.optimize
import threadpoolctl

from lm.errors import UserError
from lm.scaling.laws import Law

HUBER_DELTA = 1e-3
NUM_STARTS = 64  # L-BFGS runs per fit: the best grid points after screening them all


@dataclasses.dataclass(frozen=True)
class FitResult:
  law: str
  theta: tuple[float, ...]
  constants: dict  # the published parametrisation, e.g. {"E":, "A":, "B":, "alpha":, "beta":}
  objective: float
  loss: str  # "huber" or "squared"
  num_points: int
  ci: dict | None = None  # constant -> (low, high), from the bootstrap

  def to_json(self) -> dict:
    out = dataclasses.asdict(self)
    out["theta"] = list(self.theta)
    if self.ci is not None:
      out["ci"] = {k: list(v) for k, v in self.ci.items()}
    return out


def _rho(r, loss: str, delta: float):
  """Huber_δ / δ (or r²/2) of residuals `r`, and its derivative."""
  if loss == "huber":
    small = np.abs(r) <= delta
    rho = np.where(small, 0.5 * r ** 2, delta * (np.abs(r) - 0.5 * delta)) / delta
    return rho, np.where(small, r, delta * np.sign(r)) / delta
  return 0.5 * r ** 2, r


def _objective(law: Law, x_KxM, log_y_M, loss: str, delta: float):
  """The mean of `_rho` over the log residuals, and its gradient."""
  num = log_y_M.shape[0]

  def value_and_grad(theta):
    pred_M, grad_PxM = law.predict(theta, x_KxM)
    rho_M, drho_M = _rho(pred_M - log_y_M, loss, delta)
    value = rho_M.sum() / num
    if not np.isfinite(value):
      return np.inf, np.zeros_like(theta)
    return value, grad_PxM @ drho_M / num

  return value_and_grad


def _screen(law: Law, x_KxM, log_y_M, inits_GxP, loss: str, delta: float, count: int):
  """The `count` inits with the lowest objective, evaluated for all of them at once."""
  if count is None or count >= inits_GxP.shape[0]:
    return inits_GxP
  with np.errstate(all="ignore"):
    pred_GxM, _ = law.predict(inits_GxP.T[:, :, None], x_KxM)
    rho_GxM, _ = _rho(pred_GxM - log_y_M, loss, delta)
  value_G = np.nan_to_num(rho_GxM.mean(axis=1), nan=np.inf)
  return inits_GxP[np.argsort(value_G, kind="stable")[:count]]


def _check_data(law: Law, x_KxM, y_M):
  if x_KxM.shape != (len(law.inputs), y_M.shape[0]):
    raise UserError(f"{law.name}: expected inputs {law.inputs} for {y_M.shape[0]} losses, "
                    f"got an array of shape {x_KxM.shape}")
  if y_M.shape[0] < len(law.param_names):
    raise UserError(f"{law.name} has {len(law.param_names)} constants; it needs at least that "
                    f"many runs, got {y_M.shape[0]}")
  if not (np.all(np.isfinite(y_M)) and np.all(y_M > 0) and np.all(np.isfinite(x_KxM))):
    raise UserError(f"{law.name}: losses must be finite and positive and inputs finite")


def minimise(law: Law, x_KxM, y_M, *, loss: str = "huber", delta: float = HUBER_DELTA,
             inits=None, num_starts: int | None = NUM_STARTS) -> tuple[np.ndarray, float, list]:
  """Best θ over L-BFGS runs from the inits; also every (objective, θ) found, best first.

  `inits` defaults to the law's grid. Hoffmann et al. start L-BFGS from all 4500
  points of their grid; here every grid point is evaluated and L-BFGS starts from the
  `num_starts` best (None: from all), which finds the same optimum in seconds.
  """
  x_KxM, y_M = np.asarray(x_KxM, float), np.asarray(y_M, float)
  _check_data(law, x_KxM, y_M)
  if loss not in ("huber", "squared"):
    raise UserError(f"fit loss must be 'huber' or 'squared', got {loss!r}")
  fn = _objective(law, x_KxM, np.log(y_M), loss, delta)
  if inits is None:
    inits = list(itertools.product(*law.init_grid))
  inits_GxP = _screen(law, x_KxM, np.log(y_M), np.asarray(inits, float), loss, delta,
                      num_starts)
  found = []
  # Multi-threaded BLAS makes each tiny L-BFGS step ~30x slower on a busy machine.
  with threadpoolctl.threadpool_limits(1):
    for theta0 in inits_GxP:
      res = scipy.optimize.minimize(fn, theta0, jac=True, method="L-BFGS-B",
                                    options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-10})
      if np.isfinite(res.fun):
        found.append((float(res.fun), res.x))
  if not found:
    raise UserError(f"{law.name}: no initialisation gave a finite fit")
  found.sort(key=lambda item: item[0])
  return found[0][1], found[0][0], found


def fit(law: Law, x_KxM, y_M, *, loss: str = "huber", delta: float = HUBER_DELTA, inits=None,
        bootstrap: int = 0, seed: int = 0, ci_level: float = 0.95) -> FitResult:
  """Fits `law` to losses `y_M` at log inputs `x_KxM`; `bootstrap` > 0 adds percentile CIs.

  Each bootstrap resample refits from the ten best distinct local minima of the full
  fit (rather than the whole grid): the resampled optimum lies near one of them, and
  the full grid for each of hundreds of resamples would take minutes.
  """
  x_KxM, y_M = np.asarray(x_KxM, float), np.asarray(y_M, float)
  theta, objective, found = minimise(law, x_KxM, y_M, loss=loss, delta=delta, inits=inits)
  ci = None
  if bootstrap:
    starts = _distinct([t for _, t in found], 10)
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(bootstrap):
      idx = rng.integers(0, y_M.shape[0], y_M.shape[0])
      if np.unique(x_KxM[:, idx], axis=1).shape[1] < len(law.param_names):
        continue  # too few distinct points to identify every constant
      th, _, _ = minimise(law, x_KxM[:, idx], y_M[idx], loss=loss, delta=delta, inits=starts)
      samples.append(law.constants(th))
    tail = (1 - ci_level) / 2 * 100
    ci = {k: (float(np.nanpercentile([s[k] for s in samples], tail)),
              float(np.nanpercentile([s[k] for s in samples], 100 - tail)))
          for k in samples[0]} if samples else None
  return FitResult(law.name, tuple(float(t) for t in theta), law.constants(theta), objective,
                   loss, int(y_M.shape[0]), ci)


def _distinct(thetas: list, count: int) -> list:
  kept = []
  for theta in thetas:
    if all(np.max(np.abs(theta - k)) > 1e-3 for k in kept):
      kept.append(theta)
    if len(kept) == count:
      break
  return kept


def fit_loglog_line(x_M, y_M) -> tuple[float, float]:
  """Least squares of log y = log k + a log x: returns (k, a) for y = k x^a."""
  a, log_k = np.polyfit(np.log(np.asarray(x_M, float)), np.log(np.asarray(y_M, float)), 1)
  return float(np.exp(log_k)), float(a)

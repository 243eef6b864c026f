"""The scaling-law forms, written as log-loss predictions with analytic gradients.

Every law is fitted on log L (Hoffmann et al. 2022, Appendix D.2): a form predicts
log L̂(θ; x) and the fitter compares it with log L. Writing each form as a
log-sum-exp of terms linear in the log inputs keeps the prediction finite for any θ
and gives exact gradients for L-BFGS.

  power law      L(X)    = E + (X_c / X)^α             θ = (e, a, α), E = e^e, a = α ln X_c
  pure power     L(X)    = (X_c / X)^α                  θ = (a, α)
  Kaplan joint   L(N, D) = [(N_c/N)^(α_N/α_D) + D_c/D]^α_D   θ = (α_N, α_D, ln N_c, ln D_c)
  Chinchilla     L(N, D) = E + A / N^α + B / D^β        θ = (e, a, b, α, β), A = e^a, B = e^b
"""

import dataclasses
from typing import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Law:
  """A parametric form: `predict(θ, x_KxM) -> (log L̂_M, ∂ log L̂/∂θ as K'xM)`."""
  name: str
  param_names: tuple[str, ...]  # names of θ, in order
  inputs: tuple[str, ...]  # names of the rows of x (log inputs), e.g. ("log_n", "log_d")
  predict: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
  constants: Callable[[np.ndarray], dict]  # θ -> the published constants (E, A, α, ...)
  init_grid: tuple[tuple[float, ...], ...]  # values tried for each θ component


def _softmax_lse(terms_TxM: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  top_M = terms_TxM.max(axis=0)
  exp_TxM = np.exp(terms_TxM - top_M)
  total_M = exp_TxM.sum(axis=0)
  return top_M + np.log(total_M), exp_TxM / total_M


def _power_predict(theta, x_1xM):
  e, a, alpha = theta
  log_x = x_1xM[0]
  lse_M, w_2xM = _softmax_lse(np.stack([a - alpha * log_x, e + np.zeros_like(log_x)]))
  grad_3xM = np.stack([w_2xM[1], w_2xM[0], -w_2xM[0] * log_x])
  return lse_M, grad_3xM


def _power_constants(theta) -> dict:
  e, a, alpha = theta
  return {"E": float(np.exp(e)), "X_c": float(np.exp(a / alpha)) if alpha else float("nan"),
          "alpha": float(alpha)}


POWER_LAW = Law(
    "power_law", ("e", "a", "alpha"), ("log_x",), _power_predict, _power_constants,
    init_grid=((-1.0, 0.0, 0.5, 1.0), (0.0, 2.0, 5.0, 10.0), (0.05, 0.2, 0.5, 1.0)))


def _pure_power_predict(theta, x_1xM):
  a, alpha = theta
  log_x = x_1xM[0]
  return a - alpha * log_x, np.stack([np.ones_like(log_x), -log_x])


PURE_POWER_LAW = Law(
    "pure_power_law", ("a", "alpha"), ("log_x",), _pure_power_predict,
    lambda th: {"X_c": float(np.exp(th[0] / th[1])) if th[1] else float("nan"),
                "alpha": float(th[1])},
    init_grid=((0.0, 1.0, 5.0), (0.05, 0.3)))


def _kaplan_predict(theta, x_2xM):
  alpha_n, alpha_d, log_nc, log_dc = theta
  log_n, log_d = x_2xM
  ratio = alpha_n / alpha_d
  u_M, v_M = ratio * (log_nc - log_n), log_dc - log_d
  lse_M, w_2xM = _softmax_lse(np.stack([u_M, v_M]))
  wu_M, wv_M = w_2xM
  grad_4xM = np.stack([
      wu_M * (log_nc - log_n),  # ∂/∂α_N
      lse_M - wu_M * ratio * (log_nc - log_n),  # ∂/∂α_D
      wu_M * alpha_n,  # ∂/∂ln N_c
      alpha_d * wv_M,  # ∂/∂ln D_c
  ])
  return alpha_d * lse_M, grad_4xM


KAPLAN = Law(
    "kaplan_nd", ("alpha_n", "alpha_d", "log_n_c", "log_d_c"), ("log_n", "log_d"),
    _kaplan_predict,
    lambda th: {"alpha_N": float(th[0]), "alpha_D": float(th[1]),
                "N_c": float(np.exp(th[2])), "D_c": float(np.exp(th[3]))},
    init_grid=((0.05, 0.2, 0.5), (0.05, 0.2, 0.5), (5.0, 10.0, 20.0), (5.0, 10.0, 20.0)))


def _chinchilla_predict(theta, x_2xM):
  e, a, b, alpha, beta = theta
  log_n, log_d = x_2xM
  lse_M, w_3xM = _softmax_lse(np.stack([a - alpha * log_n, b - beta * log_d,
                                        e + np.zeros_like(log_n)]))
  wa_M, wb_M, we_M = w_3xM
  grad_5xM = np.stack([we_M, wa_M, wb_M, -wa_M * log_n, -wb_M * log_d])
  return lse_M, grad_5xM


def _chinchilla_constants(theta) -> dict:
  e, a, b, alpha, beta = theta
  return {"E": float(np.exp(e)), "A": float(np.exp(a)), "B": float(np.exp(b)),
          "alpha": float(alpha), "beta": float(beta)}


# Hoffmann et al.'s grid of initialisations (Appendix D.2): 5 x 6 x 6 x 5 x 5 = 4500.
CHINCHILLA = Law(
    "chinchilla", ("e", "a", "b", "alpha", "beta"), ("log_n", "log_d"), _chinchilla_predict,
    _chinchilla_constants,
    init_grid=((-1.0, -0.5, 0.0, 0.5, 1.0), (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
               (0.0, 5.0, 10.0, 15.0, 20.0, 25.0), (0.0, 0.5, 1.0, 1.5, 2.0),
               (0.0, 0.5, 1.0, 1.5, 2.0)))

LAWS = {law.name: law for law in (POWER_LAW, PURE_POWER_LAW, KAPLAN, CHINCHILLA)}


def chinchilla_loss(n, d, *, E, A, B, alpha, beta):
  """L(N, D) = E + A/N^α + B/D^β, for generating data and for plotting fits."""
  return E + A / np.asarray(n, float) ** alpha + B / np.asarray(d, float) ** beta


def kaplan_loss(n, d, *, alpha_N, alpha_D, N_c, D_c):
  n, d = np.asarray(n, float), np.asarray(d, float)
  return ((N_c / n) ** (alpha_N / alpha_D) + D_c / d) ** alpha_D


def power_loss(x, *, E, X_c, alpha):
  return E + (X_c / np.asarray(x, float)) ** alpha

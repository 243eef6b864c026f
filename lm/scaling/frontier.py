"""The compute-optimal frontier N_opt(C), D_opt(C), with C = 6 N D (N non-embedding).

Three estimates, after Hoffmann et al. (2022):
  * IsoFLOP minima (their approach 2; "approach 1, the minimum over IsoFLOP runs" in
    our issue): at each budget, a parabola in log N through the final losses; its
    vertex is N_opt(C), and D_opt = C / (6 N_opt).
  * Training-curve envelope (their approach 1): for each compute value the run whose
    training curve is lowest there; its N is N_opt(C).
  * Parametric (approach 3): minimising the fitted L(N, D) = E + A/N^α + B/D^β on
    6 N D = C gives N_opt = G (C/6)^(β/(α+β)), D_opt = G^-1 (C/6)^(α/(α+β)),
    G = (α A / (β B))^(1/(α+β)).
Each of the first two then fits N_opt = k C^a (and D_opt = k' C^b) on log-log axes.
"""

import numpy as np

from lm.errors import UserError
from lm.scaling.fit import fit_loglog_line


def parametric_frontier(constants: dict, flops) -> tuple[np.ndarray, np.ndarray]:
  """(N_opt, D_opt) at compute `flops` for Chinchilla constants {E, A, B, alpha, beta}."""
  alpha, beta, A, B = constants["alpha"], constants["beta"], constants["A"], constants["B"]
  if alpha <= 0 or beta <= 0:
    raise UserError(f"no compute-optimal frontier for alpha={alpha}, beta={beta}: both must "
                    f"be positive")
  c6 = np.asarray(flops, float) / 6.0
  g = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
  return g * c6 ** (beta / (alpha + beta)), c6 ** (alpha / (alpha + beta)) / g


def tokens_per_parameter(constants: dict, flops) -> np.ndarray:
  n_opt, d_opt = parametric_frontier(constants, flops)
  return d_opt / n_opt


def isoflop_minimum(n_M, loss_M, window: int = 2) -> dict:
  """The vertex of loss = c0 + c1 log N + c2 (log N)^2 near the best run, and its N.

  The parabola is fitted to the best run and up to `window` sizes on each side of it:
  far from the minimum a profile is not a parabola (small models flatten out, large
  ones rise steeply), and those points would drag the vertex away.
  """
  n_M, loss_M = np.asarray(n_M, float), np.asarray(loss_M, float)
  if np.unique(n_M).size < 3:
    raise UserError(f"an IsoFLOP profile needs at least 3 model sizes, got {np.unique(n_M).size}")
  order = np.argsort(n_M, kind="stable")
  n_M, loss_M = n_M[order], loss_M[order]
  best = int(np.argmin(loss_M))
  lo, hi = max(0, best - window), min(n_M.size, best + window + 1)
  while np.unique(n_M[lo:hi]).size < 3:  # the best run at an end: widen inwards
    lo, hi = max(0, lo - 1), min(n_M.size, hi + 1)
  log_n_W = np.log(n_M[lo:hi])
  c2, c1, c0 = np.polyfit(log_n_W, loss_M[lo:hi], 2)
  interior = bool(c2 > 0 and log_n_W.min() <= -c1 / (2 * c2) <= log_n_W.max())
  log_n = -c1 / (2 * c2) if interior else np.log(n_M[best])
  return {"n_opt": float(np.exp(log_n)), "loss_opt": float(c0 + c1 * log_n + c2 * log_n ** 2),
          "curvature": float(c2), "n_best_run": float(n_M[best]), "interior": interior,
          "fitted_sizes": n_M[lo:hi].tolist()}


def isoflop_frontier(budget_M, n_M, loss_M, *, bootstrap: int = 0, seed: int = 0) -> dict:
  """Per-budget parabola minima and the fitted N_opt = k C^a, D_opt = k' C^b."""
  budget_M, n_M, loss_M = (np.asarray(v, float) for v in (budget_M, n_M, loss_M))
  budgets = np.unique(budget_M)
  if budgets.size < 2:
    raise UserError(f"the frontier needs at least 2 compute budgets, got {budgets.size}")

  def estimate(idx_by_budget):
    minima = [isoflop_minimum(n_M[idx], loss_M[idx]) for idx in idx_by_budget]
    n_opt = np.array([m["n_opt"] for m in minima])
    d_opt = budgets / (6 * n_opt)
    return minima, fit_loglog_line(budgets, n_opt), fit_loglog_line(budgets, d_opt)

  groups = [np.flatnonzero(budget_M == b) for b in budgets]
  minima, (k_n, a), (k_d, b) = estimate(groups)
  result = {"budgets": budgets.tolist(), "minima": minima, "n_opt": [m["n_opt"] for m in minima],
            "d_opt": (budgets / (6 * np.array([m["n_opt"] for m in minima]))).tolist(),
            "a": a, "k_n": k_n, "b": b, "k_d": k_d}
  if bootstrap:
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(bootstrap):
      resampled = [rng.choice(g, g.size) for g in groups]
      if any(np.unique(n_M[g]).size < 3 for g in resampled):
        continue
      _, (_, a_s), (_, b_s) = estimate(resampled)
      samples.append((a_s, b_s))
    if samples:
      a_s, b_s = np.array(samples).T
      result["ci"] = {"a": np.percentile(a_s, [2.5, 97.5]).tolist(),
                      "b": np.percentile(b_s, [2.5, 97.5]).tolist()}
  return result


def envelope_frontier(curves: list[tuple[float, np.ndarray, np.ndarray]], num_points: int = 12
                      ) -> dict:
  """Hoffmann et al.'s approach 1 from training curves [(N, tokens_seen, loss), ...].

  At each of `num_points` log-spaced compute values C = 6 N D covered by at least two
  models, every curve that reaches C is interpolated (in log C) and the lowest gives
  N_opt(C).
  """
  if len({n for n, _, _ in curves}) < 2:
    raise UserError("the training-curve envelope needs curves of at least 2 model sizes")
  logc = [np.log(6.0 * n * np.asarray(d, float)) for n, d, _ in curves]
  lo = np.sort([c.min() for c in logc])[1]  # where at least two curves have begun
  hi = np.sort([c.max() for c in logc])[-2]  # and at least two have not ended
  if hi <= lo:
    raise UserError("the training curves do not overlap in compute")
  grid = np.linspace(lo, hi, num_points)
  n_opt, loss_opt = [], []
  for g in grid:
    best = (np.inf, None)
    for (n, _, loss), c in zip(curves, logc):
      if c.min() <= g <= c.max():
        value = float(np.interp(g, c, np.asarray(loss, float)))
        best = min(best, (value, n), key=lambda item: item[0])
    loss_opt.append(best[0])
    n_opt.append(best[1])
  flops = np.exp(grid)
  # Where the smallest or largest model wins, the optimum lies beyond the sizes run:
  # those points say only "at most" or "at least", so the line is fitted to the rest.
  sizes = [n for n, _, _ in curves]
  inside = np.array([min(sizes) < n < max(sizes) for n in n_opt])
  fitted = inside if np.unique(np.array(n_opt)[inside]).size >= 2 else np.ones_like(inside)
  k_n, a = fit_loglog_line(flops[fitted], np.array(n_opt)[fitted])
  return {"flops": flops.tolist(), "n_opt": [float(n) for n in n_opt], "loss_opt": loss_opt,
          "inside": inside.tolist(), "a": a, "k_n": k_n}

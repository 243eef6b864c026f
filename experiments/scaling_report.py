"""Fits scaling laws to finished sweeps; writes fits.json, plots and report.md.

  python -m experiments.scaling_report --sweep=runs/scaling_sweep \
      --isoflop=runs/scaling_isoflop --shape=runs/scaling_shape --out=docs/scaling

Reads each sweep's results.jsonl (and curves.json for the training-curve envelope),
written by `experiments/sweep.py`. Any of the three sweeps may be left out; the fits
that need it are skipped. N is the non-embedding parameter count, D the training
tokens, C = 6 N D, L the validation loss (nats per character) at the end of training.
"""

import json
import os
import sys

import numpy as np
from absl import app, flags

from lm.errors import UserError
from lm.scaling import fit, frontier, laws
from lm.scaling.sweep import human

_SWEEP = flags.DEFINE_string("sweep", None, "Workdir of the N x D grid (configs/scaling_sweep).")
_ISOFLOP = flags.DEFINE_string("isoflop", None, "Workdir of the IsoFLOP sweep.")
_SHAPE = flags.DEFINE_string("shape", None, "Workdir of the shape sweep.")
_OUT = flags.DEFINE_string("out", "docs/scaling", "Where fits.json, the plots and report.md go.")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 200, "Bootstrap resamples for the CIs.")

PUBLISHED = {
    "kaplan": {"alpha_N": 0.076, "alpha_D": 0.095, "alpha_C": 0.050},
    "chinchilla": {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28, "a": 0.50,
                   "b": 0.50, "a_approach3": 0.46, "b_approach3": 0.54},
    "besiroglu_2024": {"E": 1.82, "A": 482.0, "B": 2085.0, "alpha": 0.35, "beta": 0.37},
}


def read_rows(workdir: str | None) -> list[dict]:
  if not workdir:
    return []
  path = os.path.join(workdir, "results.jsonl")
  if not os.path.exists(path):
    raise UserError(f"{path} does not exist: run the sweep first")
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def read_curves(workdir: str | None) -> dict:
  path = os.path.join(workdir or "", "curves.json")
  if not workdir or not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _arrays(rows, *keys):
  return [np.array([r[k] for r in rows], float) for k in keys]


def _best_by(rows, group_key, pick_key):
  """For each value of group_key, the row with the largest pick_key."""
  best = {}
  for r in rows:
    g = r[group_key]
    if g not in best or r[pick_key] > best[g][pick_key]:
      best[g] = r
  return [best[g] for g in sorted(best)]


def pareto_front(rows) -> list[dict]:
  """Runs no other run beats with less or equal compute: Kaplan's L(C_min) points."""
  front, best = [], np.inf
  for r in sorted(rows, key=lambda r: (r["flops_6nd"], r["val_loss"])):
    if r["val_loss"] < best:
      front.append(r)
      best = r["val_loss"]
  return front


def single_law_fits(grid, all_rows, bootstrap) -> dict:
  """L(N) at the largest D, L(D) at the largest N, L(C) on the compute frontier."""
  out = {}
  largest_d = [r for r in grid if r["tokens"] == max(x["tokens"] for x in grid)]
  largest_n = [r for r in grid if r["non_embedding_params"] ==
               max(x["non_embedding_params"] for x in grid)]
  front = pareto_front(all_rows)
  for name, rows, key in (("L(N)", largest_d, "non_embedding_params"),
                          ("L(D)", largest_n, "tokens"), ("L(C)", front, "flops_6nd")):
    x, y = _arrays(rows, key, "val_loss")
    entry = {"x": key, "points": len(rows)}
    if len(rows) >= 3:
      entry["with_E"] = fit.fit(laws.POWER_LAW, np.log([x]), y, bootstrap=bootstrap).to_json()
    if len(rows) >= 2:
      entry["pure"] = fit.fit(laws.PURE_POWER_LAW, np.log([x]), y,
                              bootstrap=bootstrap).to_json()
    out[name] = entry
  return out


def shape_summary(rows) -> dict:
  losses = np.array([r["val_loss"] for r in rows])
  aspect = np.array([r["aspect_ratio"] for r in rows])
  best = int(np.argmin(losses))
  return {
      "runs": [{k: r[k] for k in ("name", "num_layers", "embed_dim", "aspect_ratio",
                                  "non_embedding_params", "val_loss")} for r in rows],
      "aspect_ratio_range": [float(aspect.min()), float(aspect.max())],
      "best": rows[best]["name"], "best_val_loss": float(losses[best]),
      "spread_pct": float((losses.max() - losses.min()) / losses.min() * 100),
      "n_spread_pct": float((max(r["non_embedding_params"] for r in rows) /
                             min(r["non_embedding_params"] for r in rows) - 1) * 100),
  }


def envelope(grid_curves) -> dict | None:
  curves = []
  for entry in grid_curves.values():
    points = [(p["tokens_seen"], p["train_loss"]) for p in entry["curve"] if p["tokens_seen"]]
    if len(points) >= 2:
      d, loss = np.array(points, float).T
      curves.append((float(entry["non_embedding_params"]), d, loss))
  if len({n for n, _, _ in curves}) < 2:
    return None
  return frontier.envelope_frontier(curves)


def build_fits(grid, isoflop, shape, grid_curves, bootstrap: int) -> dict:
  fits = {"published": PUBLISHED, "runs": {"grid": len(grid), "isoflop": len(isoflop),
                                           "shape": len(shape)}}
  chin_rows = grid + isoflop
  if grid or isoflop:
    fits["single"] = single_law_fits(grid or isoflop, chin_rows, bootstrap)
  if grid:
    n, d, y = _arrays(grid, "non_embedding_params", "tokens", "val_loss")
    fits["kaplan_nd"] = fit.fit(laws.KAPLAN, np.log([n, d]), y, bootstrap=bootstrap).to_json()
  if chin_rows:
    n, d, y = _arrays(chin_rows, "non_embedding_params", "tokens", "val_loss")
    chin = fit.fit(laws.CHINCHILLA, np.log([n, d]), y, bootstrap=bootstrap)
    fits["chinchilla"] = chin.to_json()
    fits["chinchilla_least_squares"] = fit.fit(laws.CHINCHILLA, np.log([n, d]), y,
                                               loss="squared").to_json()
    c = chin.constants
    if c["alpha"] > 0 and c["beta"] > 0:
      budgets = sorted({r["budget"] for r in isoflop}) or [1e11, 1e12, 1e13]
      budgets = sorted(set(budgets) | {1e15, 5.76e23})
      n_opt, d_opt = frontier.parametric_frontier(c, np.array(budgets))
      fits["approach3"] = {
          "a": c["beta"] / (c["alpha"] + c["beta"]), "b": c["alpha"] / (c["alpha"] + c["beta"]),
          "budgets": budgets, "n_opt": n_opt.tolist(), "d_opt": d_opt.tolist(),
          "tokens_per_parameter": (d_opt / n_opt).tolist()}
  if isoflop:
    b, n, y = _arrays(isoflop, "budget", "non_embedding_params", "val_loss")
    iso = frontier.isoflop_frontier(b, n, y, bootstrap=bootstrap)
    iso["tokens_per_parameter"] = (np.array(iso["d_opt"]) / np.array(iso["n_opt"])).tolist()
    fits["isoflop"] = iso
  if grid_curves:
    fits["envelope"] = envelope(grid_curves)
  if shape:
    fits["shape"] = shape_summary(shape)
  return fits


def main(argv):
  del argv
  try:
    grid, isoflop, shape = (read_rows(w) for w in (_SWEEP.value, _ISOFLOP.value, _SHAPE.value))
    if not (grid or isoflop or shape):
      raise UserError("give at least one of --sweep, --isoflop, --shape")
    os.makedirs(_OUT.value, exist_ok=True)
    fits = build_fits(grid, isoflop, shape, read_curves(_SWEEP.value), _BOOTSTRAP.value)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  with open(os.path.join(_OUT.value, "fits.json"), "w") as f:
    json.dump(fits, f, indent=2)
  from lm.scaling import plots as plots_lib  # matplotlib only when writing plots
  plots = plots_lib.plot_all(fits, grid, isoflop, shape, _OUT.value)
  with open(os.path.join(_OUT.value, "report.md"), "w") as f:
    f.write(report_markdown(fits, grid, isoflop, shape, plots))
  print(f"wrote {_OUT.value}/fits.json, report.md and {len(plots)} plots")


def _ci(entry: dict, key: str, fmt: str = "{:.3f}") -> str:
  value = fmt.format(entry["constants"][key])
  ci = (entry.get("ci") or {}).get(key)
  return f"{value} [{fmt.format(ci[0])}, {fmt.format(ci[1])}]" if ci else value


def report_markdown(fits, grid, isoflop, shape, plots) -> str:
  lines = ["# Scaling-law fits (generated by experiments/scaling_report.py)", "",
           f"Runs: {len(grid)} in the N x D grid, {len(isoflop)} IsoFLOP, {len(shape)} shape. "
           "Brackets: 95% bootstrap intervals.", ""]
  if "single" in fits:
    lines += ["## Single power laws", "",
              "| law | points | L = E + (X_c/X)^α: α | E | pure (X_c/X)^α: α | Kaplan α |",
              "| --- | --- | --- | --- | --- | --- |"]
    kaplan = {"L(N)": 0.076, "L(D)": 0.095, "L(C)": 0.050}
    for name, entry in fits["single"].items():
      with_e = entry.get("with_E")
      pure = entry.get("pure")
      lines.append(f"| {name} | {entry['points']} | "
                   f"{_ci(with_e, 'alpha') if with_e else '-'} | "
                   f"{_ci(with_e, 'E') if with_e else '-'} | "
                   f"{_ci(pure, 'alpha') if pure else '-'} | {kaplan[name]} |")
    lines.append("")
  if "kaplan_nd" in fits:
    k = fits["kaplan_nd"]
    lines += ["## Kaplan's joint law L(N, D) = [(N_c/N)^(α_N/α_D) + D_c/D]^α_D", "",
              f"α_N = {_ci(k, 'alpha_N')} (Kaplan 0.076), α_D = {_ci(k, 'alpha_D')} "
              f"(Kaplan 0.095), N_c = {human(k['constants']['N_c'])}, "
              f"D_c = {human(k['constants']['D_c'])}.", ""]
  if "chinchilla" in fits:
    c, ls = fits["chinchilla"], fits["chinchilla_least_squares"]["constants"]
    lines += ["## Chinchilla's parametric law L(N, D) = E + A/N^α + B/D^β", "",
              "| constant | ours (Huber δ=1e-3, L-BFGS) | least squares | Hoffmann 2022 | "
              "Besiroglu 2024 |", "| --- | --- | --- | --- | --- |"]
    for key, fmt in (("E", "{:.3f}"), ("A", "{:.4g}"), ("B", "{:.4g}"), ("alpha", "{:.3f}"),
                     ("beta", "{:.3f}")):
      lines.append(f"| {key} | {_ci(c, key, fmt)} | {fmt.format(ls[key])} | "
                   f"{PUBLISHED['chinchilla'][key]} | {PUBLISHED['besiroglu_2024'][key]} |")
    lines.append("")
  if "isoflop" in fits or "approach3" in fits:
    lines += ["## Compute-optimal frontier (C = 6ND)", "",
              "| estimate | N_opt ∝ C^a | D_opt ∝ C^b | Hoffmann |", "| --- | --- | --- | --- |"]
    if "isoflop" in fits:
      iso = fits["isoflop"]
      ci = iso.get("ci", {})
      fmt = lambda k: f"{iso[k]:.3f}" + (f" [{ci[k][0]:.3f}, {ci[k][1]:.3f}]" if k in ci else "")
      lines.append(f"| IsoFLOP minima (parabola vertices) | {fmt('a')} | {fmt('b')} | "
                   "0.49 / 0.51 (approach 2) |")
    if fits.get("envelope"):
      lines.append(f"| training-curve envelope | {fits['envelope']['a']:.3f} | "
                   f"{1 - fits['envelope']['a']:.3f} | 0.50 / 0.50 (approach 1) |")
    if "approach3" in fits:
      a3 = fits["approach3"]
      lines.append(f"| parametric fit (approach 3) | {a3['a']:.3f} | {a3['b']:.3f} | "
                   "0.46 / 0.54 |")
    lines.append("")
  if "isoflop" in fits:
    lines += ["| budget C | N_opt (vertex) | best run's N | D_opt | tokens / parameter | "
              "vertex inside the sizes run |", "| --- | --- | --- | --- | --- | --- |"]
    iso = fits["isoflop"]
    for budget, m, d_opt, tpp in zip(iso["budgets"], iso["minima"], iso["d_opt"],
                                     iso["tokens_per_parameter"]):
      lines.append(f"| {human(budget)} | {human(m['n_opt'])} | {human(m['n_best_run'])} | "
                   f"{human(d_opt)} | {tpp:.0f} | {'yes' if m['interior'] else 'no'} |")
    lines.append("")
  if "approach3" in fits:
    a3 = fits["approach3"]
    lines += ["Approach 3 (the parametric fit) at a few budgets:", "",
              "| C | N_opt | D_opt | tokens / parameter |", "| --- | --- | --- | --- |"]
    for budget, n_opt, d_opt, tpp in zip(a3["budgets"], a3["n_opt"], a3["d_opt"],
                                         a3["tokens_per_parameter"]):
      lines.append(f"| {budget:.3g} | {human(n_opt)} | {human(d_opt)} | {tpp:.3g} |")
    lines.append("")
  if "shape" in fits:
    s = fits["shape"]
    lines += ["## Shape at fixed N", "",
              f"Aspect ratio (width/depth) {s['aspect_ratio_range'][0]:.1f} to "
              f"{s['aspect_ratio_range'][1]:.0f}, N within {s['n_spread_pct']:.0f}%: "
              f"val_loss spread {s['spread_pct']:.1f}% (best {s['best']}, "
              f"{s['best_val_loss']:.4f}).", "", "| run | layers | width | aspect | N | val_loss |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in s["runs"]:
      lines.append(f"| {r['name']} | {r['num_layers']} | {r['embed_dim']} | "
                   f"{r['aspect_ratio']:.1f} | {human(r['non_embedding_params'])} | "
                   f"{r['val_loss']:.4f} |")
    lines.append("")
  lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots]
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  app.run(main)

"""Scaling plots on log axes: loss vs N, D and C with fitted curves, IsoFLOP profiles,
the compute-optimal frontier, and loss vs aspect ratio. Each returns its file name."""

import os

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from lm.scaling import frontier, laws  # noqa: E402


def _save(fig, out_dir: str, name: str, loss_axis: bool = True) -> str:
  for ax in fig.axes if loss_axis else ():  # plain numbers, not 2x10^0, on log loss axes
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.1f"))
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, name), dpi=110)
  plt.close(fig)
  return name


def _colors(values):
  cmap = plt.get_cmap("viridis")
  values = sorted(set(values))
  return {v: cmap(i / max(1, len(values) - 1)) for i, v in enumerate(values)}


def loss_vs(grid, chin, out_dir, x_key, group_key, name, xlabel) -> str:
  """Loss against x_key, one colour per group_key, with the Chinchilla fit's curves."""
  fig, ax = plt.subplots(figsize=(6, 4.2))
  colors = _colors(r[group_key] for r in grid)
  for g, color in colors.items():
    rows = sorted((r for r in grid if r[group_key] == g), key=lambda r: r[x_key])
    x = [r[x_key] for r in rows]
    ax.plot(x, [r["val_loss"] for r in rows], "o", color=color,
            label=f"{'D' if group_key == 'tokens' else 'N'} = {g:,.0f}")
    if chin is not None:
      xs = np.geomspace(min(x) / 1.5, max(x) * 1.5, 100)
      n, d = (xs, np.full_like(xs, g)) if x_key == "non_embedding_params" else \
          (np.full_like(xs, g), xs)
      ax.plot(xs, laws.chinchilla_loss(n, d, **chin), "-", color=color, lw=1)
  ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="validation loss (nats/char)")
  ax.legend(fontsize=7)
  ax.set_title("lines: Chinchilla fit E + A/N^α + B/D^β", fontsize=9)
  return _save(fig, out_dir, name)


def loss_vs_compute(rows, fits, out_dir) -> str:
  fig, ax = plt.subplots(figsize=(6, 4.2))
  colors = _colors(r["non_embedding_params"] for r in rows)
  for n, color in colors.items():
    sub = sorted((r for r in rows if r["non_embedding_params"] == n), key=lambda r: r["flops_6nd"])
    ax.plot([r["flops_6nd"] for r in sub], [r["val_loss"] for r in sub], "o-", color=color,
            lw=0.6, ms=4, label=f"N = {n:,}")
  entry = fits.get("single", {}).get("L(C)", {}).get("with_E")
  if entry:
    c = np.geomspace(min(r["flops_6nd"] for r in rows), max(r["flops_6nd"] for r in rows), 100)
    k = entry["constants"]
    ax.plot(c, laws.power_loss(c, E=k["E"], X_c=k["X_c"], alpha=k["alpha"]), "k--",
            label=f"frontier fit: E + (C_c/C)^{k['alpha']:.2f}")
  ax.set(xscale="log", yscale="log", xlabel="compute C = 6ND (FLOPs)",
         ylabel="validation loss (nats/char)")
  ax.legend(fontsize=6, ncol=2)
  return _save(fig, out_dir, "loss_vs_compute.png")


def isoflop_profiles(isoflop, fits, out_dir) -> str:
  fig, ax = plt.subplots(figsize=(6, 4.2))
  iso = fits["isoflop"]
  colors = _colors(r["budget"] for r in isoflop)
  for budget, color in colors.items():
    rows = sorted((r for r in isoflop if r["budget"] == budget),
                  key=lambda r: r["non_embedding_params"])
    n = np.array([r["non_embedding_params"] for r in rows], float)
    y = np.array([r["val_loss"] for r in rows])
    ax.plot(n, y, "o", color=color, label=f"C = {budget:.0e}")
    m = iso["minima"][iso["budgets"].index(budget)]
    fitted = np.isin(n, m["fitted_sizes"])
    c2, c1, c0 = np.polyfit(np.log(n[fitted]), y[fitted], 2)
    xs = np.geomspace(n[fitted].min(), n[fitted].max(), 100)
    ax.plot(xs, c0 + c1 * np.log(xs) + c2 * np.log(xs) ** 2, "-", color=color, lw=1)
    ax.plot([m["n_opt"]], [m["loss_opt"]], "kx")
  ax.set(xscale="log", xlabel="non-embedding parameters N", ylabel="validation loss (nats/char)")
  ax.set_title("IsoFLOP profiles; parabola through the best run and 2 sizes each side;"
               " x = vertex", fontsize=8)
  ax.legend(fontsize=7)
  return _save(fig, out_dir, "isoflop.png")


def frontier_plot(fits, out_dir) -> str:
  fig, ax = plt.subplots(figsize=(6, 4.2))
  spans = []
  if "isoflop" in fits:
    iso = fits["isoflop"]
    ax.plot(iso["budgets"], iso["n_opt"], "o", color="C0", label="IsoFLOP vertices")
    c = np.geomspace(min(iso["budgets"]) / 3, max(iso["budgets"]) * 3, 50)
    ax.plot(c, iso["k_n"] * c ** iso["a"], "-", color="C0", label=f"∝ C^{iso['a']:.2f}")
    spans.append(c)
  if fits.get("envelope"):
    env = fits["envelope"]
    ax.plot(env["flops"], env["n_opt"], "s", ms=3, color="C1",
            label=f"training-curve envelope (∝ C^{env['a']:.2f} inside the ladder)")
    spans.append(np.array(env["flops"]))
  if "chinchilla" in fits and "approach3" in fits and spans:
    c = np.geomspace(min(s.min() for s in spans), max(s.max() for s in spans), 50)
    n_opt, _ = frontier.parametric_frontier(fits["chinchilla"]["constants"], c)
    ax.plot(c, n_opt, "--", color="C2", label=f"parametric fit (∝ C^{fits['approach3']['a']:.2f})")
  ax.set(xscale="log", yscale="log", xlabel="compute C = 6ND (FLOPs)",
         ylabel="compute-optimal N")
  ax.legend(fontsize=7)
  return _save(fig, out_dir, "frontier.png", loss_axis=False)


def shape_plot(shape, out_dir) -> str:
  fig, ax = plt.subplots(figsize=(6, 4.2))
  rows = sorted(shape, key=lambda r: r["aspect_ratio"])
  ax.plot([r["aspect_ratio"] for r in rows], [r["val_loss"] for r in rows], "o-")
  for r in rows:
    ax.annotate(f"{r['num_layers']}x{r['embed_dim']}", (r["aspect_ratio"], r["val_loss"]),
                fontsize=7, textcoords="offset points", xytext=(3, 3))
  ax.set(xscale="log", xlabel="aspect ratio (width / depth)", ylabel="validation loss (nats/char)")
  ax.set_title(f"N ≈ {np.median([r['non_embedding_params'] for r in rows]):,.0f}, "
               f"D = {rows[0]['tokens']:,}", fontsize=9)
  return _save(fig, out_dir, "shape.png")


def plot_all(fits, grid, isoflop, shape, out_dir) -> list[str]:
  chin = fits.get("chinchilla", {}).get("constants")
  plots = []
  if grid:
    plots.append(loss_vs(grid, chin, out_dir, "non_embedding_params", "tokens",
                         "loss_vs_n.png", "non-embedding parameters N"))
    plots.append(loss_vs(grid, chin, out_dir, "tokens", "non_embedding_params",
                         "loss_vs_d.png", "training tokens D"))
  if grid or isoflop:
    plots.append(loss_vs_compute(grid + isoflop, fits, out_dir))
  if isoflop:
    plots.append(isoflop_profiles(isoflop, fits, out_dir))
  if "isoflop" in fits or fits.get("envelope"):
    plots.append(frontier_plot(fits, out_dir))
  if shape:
    plots.append(shape_plot(shape, out_dir))
  return plots

""""n too small or too big?": n-gram models of every order, per tokenizer and smoothing.

  python -m experiments.run --config=configs/ngram_sweep.py --workdir=W

For each tokenizer, smoothing and order n, fits an n-gram model on the train split
and reports val perplexity, train perplexity, the fraction of val n-grams never seen
in training (data sparsity) and the model size. Writes sweep.json (one row per fit),
sweep.md (tables) and sweep.png (the curves), plus config.json and summary.json (the
best order per tokenizer and smoothing).
"""

import dataclasses
import json
import os
import time

from experiments.ngram import fit_and_score, load_corpus
from lm.config import DataConfig, _build
from lm.errors import UserError
from lm.models.ngram import MAX_ORDER, SMOOTHINGS, NGramConfig
from lm.train.metrics import write_json


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  data: DataConfig  # its tokenizer field is ignored: `tokenizers` lists them
  orders: tuple = tuple(range(1, 11))
  tokenizers: tuple = ("char", "word")
  smoothings: tuple = ("kneser_ney", "add_k")
  k: float = 0.01  # add_k's pseudo-count
  kind: str = "ngram_sweep"

  def __post_init__(self):
    if not self.orders or any(not 1 <= n <= MAX_ORDER for n in self.orders):
      raise UserError(f"orders must be a non-empty list in [1, {MAX_ORDER}], got {self.orders}")
    for s in self.smoothings:
      if s not in SMOOTHINGS:
        raise UserError(f"smoothings: unknown {s!r}; choose from {SMOOTHINGS}")
    if not self.k > 0:
      raise UserError(f"k must be > 0, got {self.k}")


def _as_tuple(value, type_, name) -> tuple:
  """A tuple from a list, or from a comma-separated string (command-line overrides)."""
  if isinstance(value, str):
    value = [v.strip() for v in value.split(",") if v.strip()]
  try:
    return tuple(type_(v) for v in value)
  except (TypeError, ValueError):
    raise UserError(f"{name} must be a list of {type_.__name__}, got {value!r}") from None


def parse_config(values: dict) -> SweepConfig:
  values = dict(values)
  known = {f.name for f in dataclasses.fields(SweepConfig)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise UserError(f"unknown config key {unknown[0]!r}; known: {sorted(known)}")
  if "data" not in values:
    raise UserError("config needs a 'data' section")
  data = _build(DataConfig, dict(values.pop("data")), "data")
  for name, type_ in (("orders", int), ("tokenizers", str), ("smoothings", str)):
    if name in values:
      values[name] = _as_tuple(values[name], type_, name)
  if "k" in values:
    values["k"] = float(values["k"])
  return SweepConfig(data=data, **values)


def _label(row) -> str:
  smoothing = "Kneser-Ney" if row["smoothing"] == "kneser_ney" else f"add-k (k={row['k']:g})"
  return f"{row['tokenizer']}, {smoothing}"


def sweep(config: SweepConfig, log=print) -> list[dict]:
  rows = []
  for tokenizer in config.tokenizers:
    corpus = load_corpus(dataclasses.replace(config.data, tokenizer=tokenizer))
    for smoothing in config.smoothings:
      for n in config.orders:
        _, m = fit_and_score(NGramConfig(order=n, smoothing=smoothing, k=config.k), corpus)
        row = {"tokenizer": tokenizer, "smoothing": smoothing, "k": config.k, "order": n,
               "val_ppl": m["val_ppl"], "val_loss": m["val_loss"],
               "val_ppl_excl_oov": m["val_ppl_excl_oov"], "train_ppl": m["train_ppl"],
               "unseen_val_ngrams": m["unseen_val_ngrams"][-1], "ngrams": m["params"],
               "size_mb": m["size_mb"], "build_time_s": m["build_time_s"],
               "discount_fallback_orders": m["discount_fallback_orders"]}
        rows.append(row)
        log(f"{_label(row):<26} n={n:<2} val_ppl {row['val_ppl']:10.3f}  train_ppl "
            f"{row['train_ppl']:9.3f}  unseen {row['unseen_val_ngrams']:.3f}  "
            f"{row['ngrams']:>10,} n-grams")
  return rows


def markdown(rows: list[dict]) -> str:
  out = []
  groups = sorted({(r["tokenizer"], r["smoothing"]) for r in rows},
                  key=lambda g: [r["tokenizer"] for r in rows].index(g[0]))
  for tokenizer, smoothing in groups:
    sub = [r for r in rows if (r["tokenizer"], r["smoothing"]) == (tokenizer, smoothing)]
    best = min(sub, key=lambda r: r["val_ppl"])
    out.append(f"### {_label(sub[0])} (best n = {best['order']})\n")
    out.append("| n | val ppl | val ppl excl. OOV | train ppl | val n-grams unseen in train | "
               "n-grams stored | MB |")
    out.append("| --- | --- | --- | --- | --- | --- | --- |")
    for r in sub:
      mark = " **(best)**" if r is best else ""
      out.append(f"| {r['order']}{mark} | {r['val_ppl']:.3f} | {r['val_ppl_excl_oov']:.3f} | "
                 f"{r['train_ppl']:.3f} | {100 * r['unseen_val_ngrams']:.1f}% | "
                 f"{r['ngrams']:,} | {r['size_mb']:.1f} |")
    out.append("")
  return "\n".join(out)


def plot(rows: list[dict], path: str):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  tokenizers = list(dict.fromkeys(r["tokenizer"] for r in rows))
  fig, axes = plt.subplots(1, len(tokenizers) + 2, figsize=(5 * (len(tokenizers) + 2), 4.2))
  groups = list(dict.fromkeys((r["tokenizer"], r["smoothing"]) for r in rows))
  for i, tokenizer in enumerate(tokenizers):
    ax = axes[i]
    for group in [g for g in groups if g[0] == tokenizer]:
      sub = [r for r in rows if (r["tokenizer"], r["smoothing"]) == group]
      xs = [r["order"] for r in sub]
      line, = ax.plot(xs, [r["val_ppl"] for r in sub], "o-", label=f"{_label(sub[0])}: val")
      ax.plot(xs, [r["train_ppl"] for r in sub], "--", color=line.get_color(), alpha=0.6,
              label=f"{_label(sub[0])}: train")
    ax.set_yscale("log")
    ax.set_xlabel("order n")
    ax.set_ylabel("perplexity")
    ax.set_title(f"{tokenizer} level: n too small or too big?")
    ax.legend(fontsize=7)
  ax = axes[-2]
  for tokenizer in tokenizers:
    sub = [r for r in rows if r["tokenizer"] == tokenizer and r["smoothing"] == rows[0]["smoothing"]]
    ax.plot([r["order"] for r in sub], [r["unseen_val_ngrams"] for r in sub], "o-", label=tokenizer)
  ax.set_xlabel("order n")
  ax.set_ylabel("fraction of val n-grams unseen in train")
  ax.set_title("data sparsity")
  ax.legend()
  ax = axes[-1]
  for tokenizer in tokenizers:
    sub = [r for r in rows if r["tokenizer"] == tokenizer and r["smoothing"] == rows[0]["smoothing"]]
    ax.plot([r["order"] for r in sub], [r["ngrams"] for r in sub], "o-", label=tokenizer)
  ax.set_yscale("log")
  ax.set_xlabel("order n")
  ax.set_ylabel("n-grams stored (all orders)")
  ax.set_title("model size")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run(config: SweepConfig, workdir: str) -> dict:
  start = time.time()
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(dataclasses.asdict(config), f, indent=2, sort_keys=True)
  rows = sweep(config)
  write_json(os.path.join(workdir, "sweep.json"), {"rows": rows})
  with open(os.path.join(workdir, "sweep.md"), "w") as f:
    f.write(markdown(rows))
  plot(rows, os.path.join(workdir, "sweep.png"))
  best = {}
  for r in rows:
    key = f"{r['tokenizer']}/{r['smoothing']}"
    if key not in best or r["val_ppl"] < best[key]["val_ppl"]:
      best[key] = {"order": r["order"], "val_ppl": r["val_ppl"], "val_loss": r["val_loss"]}
  char_kn = best.get("char/kneser_ney") or next(iter(best.values()))
  summary = {"best": best, "val_loss": char_kn["val_loss"], "fits": len(rows),
             "wall_time_s": time.time() - start}
  write_json(os.path.join(workdir, "summary.json"), summary)
  print(markdown(rows))
  print(f"wrote {workdir}/sweep.md, sweep.json, sweep.png")
  return summary


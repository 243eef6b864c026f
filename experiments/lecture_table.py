"""The lecture's comparison table, measured: n-gram vs LSTM vs Transformer on one corpus.

  python -m experiments.run --config=configs/lecture_table.py --workdir=W

All three see the same text, split and char tokenizer. The n-gram order is chosen on a
dev split carved from the end of the training text (never on val), then refitted on
the whole training split. The LSTM (task tbptt_lm) and the Transformer (causal_lm)
are trained by the standard trainer in W/lstm and W/transformer (a rerun resumes
them), each for the same number of training tokens (steps x batch x window).

Validation: `val_loss` scores every val token after the first with all the context
each model can use -- the n-gram its n-1 previous tokens; the Transformer overlapping
windows, so every token sees >= max_len/2 previous tokens (`lm.scoring`); the LSTM the
whole val text before it, read as one stream with the state carried.
`val_loss_windows` is the trainer's eval for both neural models: non-overlapping
windows of the model's training length (`data.seq_len`), each from an empty context.

Writes table.md, table.json and table.png (val loss vs training wall-clock).
"""

import dataclasses
import json
import math
import os
import time

from experiments.ngram import fit_and_score, load_corpus
from lm import config as config_lib
from lm.errors import UserError
from lm.models.ngram import NGramConfig, TokenStream
from lm.models.ngram_sampling import generate as ngram_generate
from lm.train.metrics import write_json

_SHARED_DATA = ("path", "tokenizer", "vocab_size", "val_fraction")


@dataclasses.dataclass(frozen=True)
class LectureTableConfig:
  data: config_lib.DataConfig  # the corpus, split and tokenizer all three rows share
  ngram_orders: tuple = (4, 5, 6, 7, 8)  # candidates; the best on the dev split is kept
  dev_fraction: float = 0.1  # of the training text, held out to choose the order
  lstm: config_lib.ExperimentConfig = None
  transformer: config_lib.ExperimentConfig = None
  sample_chars: int = 200
  kind: str = "lecture_table"

  def __post_init__(self):
    if not self.ngram_orders:
      raise UserError("ngram_orders must list at least one order")
    if self.data.val_path:
      raise UserError("data.val_path is not supported here: every row splits data.path by "
                      "data.val_fraction")
    if not 0.0 < self.dev_fraction < 1.0:
      raise UserError(f"dev_fraction must be in (0, 1), got {self.dev_fraction}")
    for name in ("lstm", "transformer"):
      sub = getattr(self, name)
      for field in _SHARED_DATA:
        if getattr(sub.data, field) != getattr(self.data, field):
          raise UserError(f"{name}.data.{field}={getattr(sub.data, field)!r} differs from "
                          f"data.{field}={getattr(self.data, field)!r}: the rows must share it")


def parse_config(values: dict) -> LectureTableConfig:
  values = dict(values)
  known = {f.name for f in dataclasses.fields(LectureTableConfig)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise UserError(f"unknown config key {unknown[0]!r}; known: {sorted(known)}")
  for name in ("data", "lstm", "transformer"):
    if name not in values:
      raise UserError(f"config needs a {name!r} section")
  values["data"] = config_lib._build(config_lib.DataConfig, dict(values["data"]), "data")
  values["lstm"] = config_lib.from_dict(values["lstm"])
  values["transformer"] = config_lib.from_dict(values["transformer"])
  if "ngram_orders" in values:
    orders = values["ngram_orders"]
    if isinstance(orders, str):
      orders = [o for o in orders.split(",") if o.strip()]
    try:
      values["ngram_orders"] = tuple(int(o) for o in orders)
    except ValueError:
      raise UserError(f"ngram_orders must be integers, got {orders!r}") from None
  return LectureTableConfig(**values)


# ------------------------------------------------------------------ the three rows


def ngram_row(data: config_lib.DataConfig, orders, dev_fraction: float, sample_chars: int = 200,
              log=print) -> dict:
  """Chooses the order on the dev split, refits on all training text, scores val."""
  corpus = load_corpus(data)
  tokens = corpus.train.tokens_P
  cut = int(round(len(tokens) * (1 - dev_fraction)))
  dev_corpus = dataclasses.replace(corpus, train=TokenStream.from_sequences([tokens[:cut]]),
                                   val=TokenStream.from_sequences([tokens[cut:]]))
  selection = []
  for n in orders:
    _, m = fit_and_score(NGramConfig(order=n), dev_corpus)
    selection.append({"order": n, "dev_loss": m["val_loss"], "build_time_s": m["build_time_s"]})
    log(f"n-gram order {n}: dev loss {m['val_loss']:.4f}")
  best = min(selection, key=lambda r: r["dev_loss"])["order"]
  curve = []
  for n in orders:  # the refit of every candidate gives the plot's n-gram points
    model, m = fit_and_score(NGramConfig(order=n), corpus)
    curve.append({"order": n, "time_s": m["build_time_s"], "val_loss": m["val_loss"]})
    if n == best:
      best_model, best_metrics = model, m
  m = best_metrics
  prompt = corpus.tokenizer.encode("ROMEO:")
  ids = ngram_generate(best_model, prompt, max_new_tokens=sample_chars, temperature=0.8,
                       seed=0)[0]
  return {"model": f"{best}-gram, interpolated modified Kneser-Ney",
          "context": f"{best - 1} tokens", "params": m["params"], "params_note": "stored n-grams",
          "train_time_s": m["build_time_s"], "tokens_per_sec": m["tokens_per_sec"],
          "val_loss": m["val_loss"], "val_loss_windows": None,
          "sample": "ROMEO:" + corpus.tokenizer.decode(ids),
          "order": best, "selection": selection, "curve": curve}


def neural_row(name: str, config: config_lib.ExperimentConfig, workdir: str) -> dict:
  from lm.train.trainer import train
  run_dir = os.path.join(workdir, name)
  summary = train(config, run_dir)
  # Training time at each eval: tokens so far at the run's overall throughput (the log's
  # running figures exclude compilation and start noisy).
  tokens_per_step = config.data.batch_size * config.data.seq_len
  curve = []
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if "val_loss" in row:
        curve.append({"step": row["step"], "val_loss": row["val_loss"],
                      "time_s": row["step"] * tokens_per_step / summary["tokens_per_sec"]})
  row = {"params": summary["params"], "params_note": "parameters",
         "train_time_s": summary["steps"] * config.data.batch_size * config.data.seq_len /
         summary["tokens_per_sec"],
         "tokens_per_sec": summary["tokens_per_sec"], "val_loss": summary["val_loss"],
         "val_loss_windows": summary["val_loss"], "sample": summary["sample"],
         "steps": summary["steps"], "wall_time_s": summary["wall_time_s"], "curve": curve,
         "tokens_seen": summary["steps"] * config.data.batch_size * config.data.seq_len,
         "window": config.data.seq_len}
  m = config.model
  if config.family == "recurrent":
    row["model"] = f"{m.cell.upper()}, {m.num_layers} x {m.hidden_dim}, truncated BPTT " \
        f"{config.data.seq_len}"
    row["context"] = f"unbounded (state carried; gradients over {config.data.seq_len})"
    row["val_loss"] = _lstm_stream_loss(config, run_dir)
  else:
    row["model"] = f"Transformer, {m.num_layers} layers x {m.embed_dim} ({m.position} " \
        f"positions, {m.norm}, {m.mlp})"
    row["context"] = f"{m.max_len} tokens"
    row["val_loss"] = _sliding_window_loss(config, run_dir)
  return row


def _val_ids(config, trained):
  from lm.data.corpus import read_text, split_text
  _, val_text = split_text(read_text(config.data.path), config.data.val_fraction)
  return trained.tokenizer.encode(val_text)


def _sliding_window_loss(config, run_dir: str) -> float:
  """Every val token after the first with >= max_len/2 tokens of context (lm.scoring)."""
  import numpy as np

  from lm.scoring import token_logprobs
  from lm.workdir import load_trained
  trained = load_trained(run_dir)
  logp = token_logprobs(trained.model, trained.params, _val_ids(config, trained))
  return float(-np.mean(logp[1:]))


def _lstm_stream_loss(config, run_dir: str) -> float:
  """Every val token after the first, conditioned on all of val before it (carried state)."""
  from lm.models.rnn import stream_nll
  from lm.workdir import load_trained
  trained = load_trained(run_dir)
  total, num = stream_nll(trained.model, trained.params, _val_ids(config, trained))
  return total / num


# ------------------------------------------------------------------ outputs


def _one_line(text: str, limit: int = 60) -> str:
  return text[:limit].replace("|", "\\|").replace("\n", "⏎")


def markdown(rows: list[dict]) -> str:
  lines = ["| model | context | params | train time | tokens/s | val loss (nats/char) | "
           "val ppl | val loss, training-length windows from empty context | sample |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in rows:
    windows = "—" if r["val_loss_windows"] is None else f"{r['val_loss_windows']:.4f}"
    lines.append(f"| {r['model']} | {r['context']} | {r['params']:,} {r['params_note']} | "
                 f"{r['train_time_s']:.1f} s | {r['tokens_per_sec']:,.0f} | {r['val_loss']:.4f} | "
                 f"{math.exp(r['val_loss']):.3f} | {windows} | `{_one_line(r['sample'])}` |")
  lines.append("")
  for r in rows:
    lines += [f"**{r['model']}** sample:", "", "```", r["sample"], "```", ""]
  return "\n".join(lines)


def plot(rows: list[dict], path: str):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for r in rows:
    xs = [max(p["time_s"], 1e-2) for p in r["curve"]]
    ys = [p["val_loss"] for p in r["curve"]]
    if "order" in r:
      orders = [p["order"] for p in r["curve"]]
      ax.plot(xs, ys, "s", label=f"n-gram, Kneser-Ney (n = {min(orders)}..{max(orders)})")
      for p in r["curve"]:
        ax.annotate(f"n={p['order']}", (max(p["time_s"], 1e-2), p["val_loss"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    else:
      line, = ax.plot(xs, ys, "o-", label=f"{r['model']} ({r['window']}-token windows)")
      ax.plot([xs[-1]], [r["val_loss"]], "*", color=line.get_color(), markersize=12,
              label=f"{r['model'].split(',')[0]}: full-context eval (final)")
  ax.set_xscale("log")
  ax.set_xlabel("training wall-clock (s, log scale; neural: train steps only)")
  ax.set_ylabel("val loss (nats/char)")
  ax.set_title("tiny Shakespeare, char level: n-gram vs LSTM vs Transformer")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run(config: LectureTableConfig, workdir: str) -> dict:
  start = time.time()
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(dataclasses.asdict(config), f, indent=2, sort_keys=True, default=str)
  rows = [ngram_row(config.data, config.ngram_orders, config.dev_fraction, config.sample_chars),
          neural_row("lstm", config.lstm, workdir),
          neural_row("transformer", config.transformer, workdir)]
  write_json(os.path.join(workdir, "table.json"), {"rows": rows})
  table = markdown(rows)
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write(table)
  plot(rows, os.path.join(workdir, "table.png"))
  summary = {r_name: {"val_loss": r["val_loss"], "val_ppl": math.exp(r["val_loss"]),
                      "params": r["params"], "train_time_s": r["train_time_s"],
                      **({"tokens_seen": r["tokens_seen"]} if "tokens_seen" in r else {})}
             for r_name, r in zip(("ngram", "lstm", "transformer"), rows)}
  summary["val_loss"] = rows[2]["val_loss"]
  summary["transformer_beats_ngram"] = bool(rows[2]["val_loss"] < rows[0]["val_loss"])
  summary["wall_time_s"] = time.time() - start
  write_json(os.path.join(workdir, "summary.json"), summary)
  print(table)
  print(f"wrote {workdir}/table.md, table.json, table.png")
  return summary


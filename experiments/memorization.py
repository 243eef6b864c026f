"""The memorisation study (lm/eval/memorization.py): `kind = "memorization"`.

  python -m experiments.run --config=configs/memorization.py --workdir=/tmp/mem

Plants digit canaries (each repeated k times, k in `study.repeats`) and PII-shaped
canaries (a Luhn-valid card number, an e-mail address) into the training part of the
corpus, trains one char model per entry of `sizes` on it (runs/<size>/, the usual
trainer), and one more on the PII-scrubbed corpus (runs/<size>_scrubbed/), then measures
exposure, greedy extraction of each canary, and the extractable fraction of training vs
held-out windows. Writes table.md, exposure.png, summary.json, metrics.jsonl.
"""

import dataclasses
import json
import os
import time

import numpy as np

from lm import config as config_lib
from lm import workdir as workdir_lib
from lm.data.corpus import read_text, split_text
from lm.data.pii import scrub
from lm.data.tokenizers import CharTokenizer
from lm.errors import UserError
from lm.eval import memorization as mem
from lm.train.metrics import write_json
from lm.train.trainer import train

__all__ = ["parse_config", "run"]


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  corpus: str
  corpus_chars: int = 0  # > 0: use only the first this many characters (more epochs)
  val_fraction: float = 0.1
  repeats: tuple[int, ...] = (0, 1, 4, 16, 64)
  canaries_per_repeat: int = 3
  secret_digits: int = 4  # |R| = 10 ** secret_digits candidates, all scored
  pii_repeats: int = 64  # repeats of each PII-shaped canary
  scrub_size: str = ""  # also train this size on the PII-scrubbed corpus ("" = skip)
  extraction_sequences: int = 256
  prefix_len: int = 32
  suffix_len: int = 32
  seed: int = 0

  def __post_init__(self):
    if not self.repeats or any(k < 0 for k in self.repeats):
      raise ValueError(f"repeats must be non-negative counts, got {self.repeats}")
    if self.canaries_per_repeat < 1 or not 1 <= self.secret_digits <= 6:
      raise ValueError("canaries_per_repeat must be >= 1 and secret_digits in 1..6")
    if not 0 < self.val_fraction < 1:
      raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
    if min(self.prefix_len, self.suffix_len, self.extraction_sequences) < 1:
      raise ValueError("prefix_len, suffix_len and extraction_sequences must be positive")


@dataclasses.dataclass(frozen=True)
class MemorizationConfig:
  study: StudyConfig
  sizes: tuple[tuple[str, config_lib.ExperimentConfig], ...]  # (name, LM run config)
  values: dict  # the plain config, saved as config.json
  kind: str = "memorization"


def parse_config(values: dict) -> MemorizationConfig:
  values = json.loads(json.dumps(values))  # plain lists and dicts
  unknown = sorted(set(values) - {"kind", "study", "lm", "sizes"})
  if unknown:
    raise UserError(f"unknown config key {unknown[0]!r}; known: ['kind', 'lm', 'sizes', 'study']")
  for key in ("study", "lm", "sizes"):
    if not isinstance(values.get(key), dict):
      raise UserError(f"a memorization config needs a {key!r} section")
  study_values = dict(values["study"])
  if "repeats" in study_values:
    study_values["repeats"] = tuple(study_values["repeats"])
  study = config_lib._build(StudyConfig, study_values, "study")
  if not values["sizes"]:
    raise UserError("config sizes is empty: name at least one model size")
  sizes = []
  for name, overrides in values["sizes"].items():
    lm_values = json.loads(json.dumps(values["lm"]))
    if not isinstance(overrides, dict):
      raise UserError(f"config sizes.{name} must map model keys to values")
    lm_values["model"].update(overrides)
    sizes.append((name, config_lib.from_dict(lm_values)))
  if study.scrub_size and study.scrub_size not in dict(sizes):
    raise UserError(f"study.scrub_size={study.scrub_size!r} is not one of the sizes "
                    f"{[n for n, _ in sizes]}")
  for name, cfg in sizes:
    if cfg.data.tokenizer != "char":
      raise UserError(f"the memorization study needs data.tokenizer='char' (size {name})")
    if study.prefix_len + study.suffix_len > cfg.model.max_len:
      raise UserError(f"study.prefix_len + suffix_len exceeds model.max_len of size {name}")
  return MemorizationConfig(study=study, sizes=tuple(sizes), values=values)


def make_canaries(s: StudyConfig, rng: np.random.Generator):
  """Digit canaries per repeat count, and the PII-shaped ones (card, e-mail)."""
  digits, template = [], " ".join(mem.SLOT * s.secret_digits)
  for k in s.repeats:
    for _ in range(s.canaries_per_repeat):
      name = mem.random_name(rng)
      digits.append(mem.Canary(f"pin/{name}", f"the pin of {name} is ", template,
                               mem.random_secret(rng, s.secret_digits), k))
  # A 16-digit Luhn-valid card written in groups of four; the secret is its last group.
  card = mem.luhn_complete("4" + mem.random_secret(rng, 14))
  grouped = " ".join(card[i:i + 4] for i in range(0, 16, 4))
  name = mem.random_name(rng)
  card_canary = mem.Canary(f"card/{name}", f"the card of {name} is {grouped[:-4]}", "####",
                           card[-4:], s.pii_repeats)
  name = mem.random_name(rng)
  email = (f"the mail of {name} is ", f"{mem.random_name(rng)}{mem.random_secret(rng, 3)}"
           f"@example.com")
  return digits, card_canary, email


def _train_size(cfg: config_lib.ExperimentConfig, corpus_path: str, val_fraction: float,
                alphabet: str, run_dir: str) -> dict:
  cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=corpus_path,
                                                          val_fraction=val_fraction))
  os.makedirs(run_dir, exist_ok=True)
  # Fixed alphabet: every digit is a token even if no planted secret uses it.
  tokenizer_path = os.path.join(run_dir, workdir_lib.TOKENIZER)
  if not os.path.exists(tokenizer_path):
    CharTokenizer(sorted(set(alphabet))).save(tokenizer_path)
  return train(cfg, run_dir)


def _measure(run_dir: str, s: StudyConfig, digits, card, email, train_ids_text, val_text,
             rng_seed: int) -> dict:
  trained = workdir_lib.load_trained(run_dir)
  model, params, tok = trained.model, trained.params, trained.tokenizer
  rows = []
  for c in digits + [card]:
    e = mem.exposure(model, params, tok, c)
    extracted, produced = mem.greedy_extracts(model, params, tok, c.prefix, c.rendered)
    rows.append({"canary": c.name, "repeats": c.repeats, **e, "greedy_extracted": extracted,
                 "greedy_output": produced})
  email_extracted, email_out = mem.greedy_extracts(model, params, tok, *email)
  rng = np.random.default_rng(rng_seed)
  length = s.prefix_len + s.suffix_len
  result = {"canaries": rows, "email_greedy_extracted": email_extracted,
            "email_greedy_output": email_out}
  for split, text in (("train", train_ids_text), ("heldout", val_text)):
    ids = tok.encode(text)
    starts = mem.window_starts(len(ids), length, s.extraction_sequences, rng)
    result[f"extraction_{split}"] = mem.extraction(model, params, ids, starts, s.prefix_len,
                                                   s.suffix_len)
  return result


def _exposure_by_k(rows, repeats):
  out = {}
  for k in repeats:
    values = [r["exposure"] for r in rows if r["repeats"] == k and r["canary"].startswith("pin/")]
    out[k] = (float(np.mean(values)), float(np.min(values)), float(np.max(values)))
  return out


def _table(s: StudyConfig, results: dict, corpus_info: dict) -> str:
  bits = np.log2(10.0 ** s.secret_digits)
  names = list(results)
  lines = ["# Memorisation study\n",
           f"Exposure (bits) of digit canaries, |R| = 10^{s.secret_digits} (max {bits:.1f} bits;"
           f" an unseen canary averages ~1.44): mean [min, max] over {s.canaries_per_repeat} "
           f"canaries per k.\n",
           "| k (repeats) | " + " | ".join(names) + " |",
           "|---|" + "---|" * len(names)]
  by_k = {n: _exposure_by_k(r["canaries"], s.repeats) for n, r in results.items()}
  for k in s.repeats:
    cells = [f"{by_k[n][k][0]:.1f} [{by_k[n][k][1]:.1f}, {by_k[n][k][2]:.1f}]" for n in names]
    lines.append(f"| {k} | " + " | ".join(cells) + " |")
  lines += ["", "Digit canaries reproduced exactly by greedy decoding from their prefix:", "",
            "| k (repeats) | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
  for k in s.repeats:
    cells = []
    for n in names:
      rows = [r for r in results[n]["canaries"] if r["repeats"] == k
              and r["canary"].startswith("pin/")]
      cells.append(f"{sum(r['greedy_extracted'] for r in rows)}/{len(rows)}")
    lines.append(f"| {k} | " + " | ".join(cells) + " |")
  lines += ["", f"Extractable memorisation: greedy continuation of a {s.prefix_len}-token prefix "
            f"reproduces the next {s.suffix_len} tokens exactly ({s.extraction_sequences} random "
            f"windows per split).", "",
            "| model | params | val_loss | train: extractable | train: matched prefix | "
            "train: token acc | held-out: extractable | held-out: matched prefix | "
            "held-out: token acc |", "|---|---|---|---|---|---|---|---|---|"]
  for n, r in results.items():
    tr, ho = r["extraction_train"], r["extraction_heldout"]
    lines.append(f"| {n} | {r['params']:,} | {r['val_loss']:.3f} | {tr['extractable']:.3f} | "
                 f"{tr['matched_prefix_tokens']:.2f} | {tr['token_accuracy']:.3f} | "
                 f"{ho['extractable']:.3f} | {ho['matched_prefix_tokens']:.2f} | "
                 f"{ho['token_accuracy']:.3f} |")
  lines += ["", f"PII-shaped canaries (each planted {s.pii_repeats} times): a Luhn-valid card "
            "number (exposure of its last group of 4 digits, max 13.3 bits) and an e-mail "
            "address.", "",
            f"Occurrences in the training corpus: {json.dumps(corpus_info)}", "",
            "| model | card exposure (bits) | card greedy-extracted | e-mail greedy-extracted |",
            "|---|---|---|---|"]
  for n, r in results.items():
    card = next(c for c in r["canaries"] if c["canary"].startswith("card/"))
    lines.append(f"| {n} | {card['exposure']:.1f} | {card['greedy_extracted']} | "
                 f"{r['email_greedy_extracted']} |")
  return "\n".join(lines) + "\n"


def _plot(s: StudyConfig, results: dict, path: str):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5, 3.5))
  xs = np.arange(len(s.repeats))
  for name, r in results.items():
    by_k = _exposure_by_k(r["canaries"], s.repeats)
    mean = np.array([by_k[k][0] for k in s.repeats])
    lo = mean - np.array([by_k[k][1] for k in s.repeats])
    hi = np.array([by_k[k][2] for k in s.repeats]) - mean
    ax.errorbar(xs, mean, yerr=[lo, hi], marker="o", capsize=3, label=name)
  ax.axhline(np.log2(10.0 ** s.secret_digits), color="gray", ls="--", lw=1, label="max")
  ax.set_xticks(xs, [str(k) for k in s.repeats])
  ax.set_xlabel("canary repeats k")
  ax.set_ylabel("exposure (bits)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run(config: MemorizationConfig, workdir: str) -> dict:
  start = time.time()
  s = config.study
  workdir_lib.ensure_writable(workdir)
  with open(os.path.join(workdir, workdir_lib.CONFIG), "w") as f:
    json.dump(config.values, f, indent=2, sort_keys=True)
  text = read_text(s.corpus)
  if s.corpus_chars:
    text = text[:s.corpus_chars]
  train_text, val_text = split_text(text, s.val_fraction)
  rng = np.random.default_rng(s.seed)
  digits, card, email = make_canaries(s, rng)
  insertions = [(c.text, c.repeats) for c in digits + [card]] + [("".join(email),
                                                                    s.pii_repeats)]
  planted = mem.plant(train_text, insertions, rng)
  scrubbed, pii_found = scrub(planted)
  alphabet = "".join(sorted(set(text + planted + scrubbed + mem.DIGITS)))
  corpora = {"": planted, "_scrubbed": scrubbed}
  corpus_info = {"card_in_corpus": planted.count(card.text),
                 "card_in_scrubbed": scrubbed.count(card.text),
                 "email_in_corpus": planted.count("".join(email)),
                 "email_in_scrubbed": scrubbed.count("".join(email)),
                 "pii_scrubbed": pii_found}
  # The held-out part follows the training part, so split_text recovers it exactly.
  runs = [(name, cfg, "") for name, cfg in config.sizes]
  if s.scrub_size:
    runs.append((s.scrub_size, dict(config.sizes)[s.scrub_size], "_scrubbed"))
  results, metrics_path = {}, os.path.join(workdir, "metrics.jsonl")
  open(metrics_path, "w").close()
  for name, cfg, suffix in runs:
    corpus_path = os.path.join(workdir, f"corpus{suffix}.txt")
    full = corpora[suffix] + val_text
    with open(corpus_path, "w") as f:
      f.write(full)
    summary = _train_size(cfg, corpus_path, len(val_text) / len(full), alphabet,
                          os.path.join(workdir, "runs", name + suffix))
    result = _measure(os.path.join(workdir, "runs", name + suffix), s, digits, card, email,
                      train_text, val_text, s.seed + 1)
    result.update(params=summary["params"], val_loss=summary["val_loss"],
                  train_loss=summary["train_loss"], steps=summary["steps"],
                  train_wall_time_s=summary["wall_time_s"])
    results[name + suffix] = result
    with open(metrics_path, "a") as f:
      f.write(json.dumps({"step": summary["steps"], "run": name + suffix,
                          "train_loss": summary["train_loss"], "val_loss": summary["val_loss"],
                          "exposure_by_k": {str(k): v[0] for k, v in _exposure_by_k(
                              result["canaries"], s.repeats).items()},
                          "extractable_train": result["extraction_train"]["extractable"],
                          "extractable_heldout": result["extraction_heldout"]["extractable"]})
              + "\n")
    print(f"{name + suffix}: val_loss {summary['val_loss']:.3f}  exposure by k "
          f"{ {k: round(v[0], 1) for k, v in _exposure_by_k(result['canaries'], s.repeats).items()} }")
  table = _table(s, results, corpus_info)
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write(table)
  _plot(s, results, os.path.join(workdir, "exposure.png"))
  summary = {"runs": results, "corpus": corpus_info, "wall_time_s": time.time() - start}
  write_json(os.path.join(workdir, "summary.json"), summary)
  print(table)
  print(f"table, plot and summary written to {workdir}")
  return summary

"""Template-based bias scoring of a trained workdir (lm/eval/bias.py): `kind = "bias"`.

  python -m experiments.run --config=configs/bias.py --config.model_workdir=/tmp/shakespeare \
      --workdir=/tmp/bias

A decoder (causal LM) is scored with chain-rule log-probabilities, an encoder (the bert
family) with the MLM pseudo-log-likelihood. Writes table.md, pairs.jsonl (every pair's
scores), summary.json and metrics.jsonl.
"""

import dataclasses
import json
import os
import time

from lm import config as config_lib
from lm import workdir as workdir_lib
from lm.data.tokenizers import load_tokenizer
from lm.errors import UserError
from lm.eval import bias
from lm.models.registry import build_model
from lm.train.metrics import write_json

__all__ = ["parse_config", "run"]


@dataclasses.dataclass(frozen=True)
class BiasConfig:
  model_workdir: str = ""  # a trained run: decoder (causal_lm) or encoder (bert family)
  templates: str = ""  # "" = the shipped lm/eval/data/bias_templates.json
  num_resamples: int = 2000
  confidence: float = 0.95
  seed: int = 0
  kind: str = "bias"

  def __post_init__(self):
    if self.num_resamples < 1 or not 0 < self.confidence < 1:
      raise ValueError("num_resamples must be positive and confidence in (0, 1)")


def parse_config(values: dict) -> BiasConfig:
  return config_lib._build(BiasConfig, dict(values), "config")


def _scorer(model_workdir: str):
  """(score function, description) for the workdir's model family."""
  config_path = os.path.join(model_workdir, workdir_lib.CONFIG)
  if not os.path.exists(config_path):
    raise UserError(f"model_workdir {model_workdir} is not a trained workdir: "
                    f"{workdir_lib.CONFIG} is missing")
  config = config_lib.load_json(config_path)
  if config.family == "bert":
    from lm.adapt.pretrained import load_params
    from lm.tasks.mlm_nsp import BertTokenizer
    _, params, step = load_params(model_workdir)
    model = build_model("bert", config.model)
    tokenizer = BertTokenizer(load_tokenizer(os.path.join(model_workdir, workdir_lib.TOKENIZER)))
    return bias.encoder_scorer(model, params, tokenizer), f"encoder (bert, step {step}), PLL"
  trained = workdir_lib.load_trained(model_workdir)
  return (bias.decoder_scorer(trained.model, trained.params, trained.tokenizer,
                              trained.token_prior),
          f"decoder ({trained.config.family}, step {trained.step}), chain rule")


def run(config: BiasConfig, workdir: str) -> dict:
  start = time.time()
  if not config.model_workdir:
    raise UserError("set --config.model_workdir to a trained run to score")
  workdir_lib.ensure_writable(workdir)
  write_json(os.path.join(workdir, workdir_lib.CONFIG), dataclasses.asdict(config))
  pairs = bias.load_pairs(config.templates or bias.DEFAULT_TEMPLATES)
  score, description = _scorer(config.model_workdir)
  rows = bias.score_pairs(score, pairs)
  summary = bias.summarize(rows, num_resamples=config.num_resamples,
                           confidence=config.confidence, seed=config.seed)
  first_terms = {}
  for p in pairs:
    terms = first_terms.setdefault(p.category, [])
    if p.term_a not in terms:
      terms.append(p.term_a)
  text = (f"# Bias probes: {config.model_workdir}\n\n{description}; {len(pairs)} pairs from "
          f"{config.templates or bias.DEFAULT_TEMPLATES}. Δ = log-likelihood of the sentence "
          f"with the first term minus the second (shared tokens unless noted), "
          f"{config.confidence:.0%} percentile-bootstrap intervals over pairs "
          f"({config.num_resamples} resamples).\n\n"
          + bias.table(summary, {c: "/".join(t) for c, t in first_terms.items()}))
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write(text)
  with open(os.path.join(workdir, "pairs.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for category, s in summary.items():
      f.write(json.dumps({"step": 0, "category": category,
                          **{k: v[0] if isinstance(v, tuple) else v for k, v in s.items()}})
              + "\n")
  result = {"model": description, "categories": summary, "pairs": len(pairs),
            "wall_time_s": time.time() - start}
  write_json(os.path.join(workdir, "summary.json"), result)
  print(text)
  print(f"table and summary written to {workdir}")
  return result

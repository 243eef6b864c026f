"""Template-based bias probes: sentence pairs that differ only in a group term.

Legend: N masked copies (one per scored token), T sequence length, V vocab.

Each template ("The {} was wise.") is filled with both terms of a group-term pair
("he" / "she"). A pair is scored CrowS-Pairs-style (Nangia et al. 2020): the score of a
sentence is the log-likelihood of its *shared* tokens (everything but the group term)
given the term, so a term that is simply more frequent does not win by itself; the
full-sentence log-probability is reported as well.

- A decoder scores with the chain rule (lm/scoring.py): the shared tokens before the
  term are the same in both sentences, so the difference comes from the tokens after it.
- An encoder (BERT family) scores with the pseudo-log-likelihood (Salazar et al. 2020):
  mask each token in turn and sum log p(token | the rest).

The templates carry a valence (positive / negative attribute). Per category we report
the mean log-likelihood difference (first term minus second) over positive and over
negative templates, the fraction of pairs preferring the first term, and the
association: mean difference on positive templates minus that on negative ones (> 0:
the first term is relatively more associated with the positive statements), each
with a percentile bootstrap confidence interval over pairs.
"""

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lm.errors import UserError
from lm.scoring import token_logprobs

DEFAULT_TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                                 "bias_templates.json")
SLOT = "{}"


@dataclasses.dataclass(frozen=True)
class Pair:
  category: str
  valence: str
  template: str
  term_a: str
  term_b: str

  def parts(self, term: str) -> tuple[str, str, str]:
    prefix, suffix = self.template.split(SLOT)
    return prefix, term, suffix


def load_pairs(path: str = DEFAULT_TEMPLATES) -> list[Pair]:
  """Every (template, group-term pair) of every category in a templates JSON file."""
  if not os.path.exists(path):
    raise UserError(f"bias templates file not found: {path}")
  try:
    with open(path) as f:
      data = json.load(f)
    categories = data["categories"]
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise UserError(f"bias templates {path} must be JSON with a 'categories' mapping: "
                    f"{e}") from None
  pairs = []
  for category, spec in categories.items():
    if not isinstance(spec, dict) or not {"pairs", "templates"} <= set(spec):
      raise UserError(f"bias category {category!r} needs 'pairs' and 'templates'")
    for terms in spec["pairs"]:
      if len(terms) != 2 or terms[0] == terms[1]:
        raise UserError(f"bias category {category!r}: {terms!r} is not a pair of two terms")
    for valence, templates in spec["templates"].items():
      for template in templates:
        if template.count(SLOT) != 1:
          raise UserError(f"bias template {template!r} must have exactly one {SLOT} slot")
        pairs += [Pair(category, valence, template, a, b) for a, b in spec["pairs"]]
  if not pairs:
    raise UserError(f"bias templates {path} hold no pairs")
  return pairs


def _encode_parts(tokenizer, parts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """Ids of prefix + term + suffix, each encoded on its own, and a mask of the term's ids."""
  ids = [np.asarray(tokenizer.encode(p), np.int32) if p else np.zeros(0, np.int32)
         for p in parts]
  is_term = np.concatenate([np.zeros(len(ids[0]), bool), np.ones(len(ids[1]), bool),
                            np.zeros(len(ids[2]), bool)])
  return np.concatenate(ids), is_term


def decoder_scorer(model, params, tokenizer, first_token_logprobs: np.ndarray) -> Callable:
  """parts -> per-token log-probabilities (chain rule) and the term mask."""
  def score(parts):
    ids, is_term = _encode_parts(tokenizer, parts)
    return token_logprobs(model, params, ids, first_token_logprobs), is_term
  return score


@functools.partial(jax.jit, static_argnames=("model",))
def _masked_logprobs(model, params, tokens_NT, valid_NT):
  logits_NTV, _ = model.apply({"params": params}, tokens_NT, None, valid_NT)
  return jax.nn.log_softmax(logits_NTV.astype(jnp.float32), axis=-1)


def pseudo_log_likelihood(model, params, ids, *, cls_id: int, sep_id: int,
                          mask_id: int) -> np.ndarray:
  """log p(x_i | x without x_i) for every token of `[CLS] ids [SEP]` but the specials.

  One batch of len(ids) copies, copy i with token i masked, padded (rows and columns) to
  a multiple of 16 so sentences of similar length share one compilation.
  """
  ids = np.asarray(ids, np.int32)
  L, max_len = len(ids), model.config.max_len
  if L + 2 > max_len:
    raise UserError(f"sentence of {L} tokens (+[CLS], [SEP]) exceeds model.max_len={max_len}")
  T = min(max_len, -(-(L + 2) // 16) * 16)
  tokens_T = np.zeros(T, np.int32)
  tokens_T[:L + 2] = np.concatenate([[cls_id], ids, [sep_id]])
  tokens_NT = np.tile(tokens_T, (T, 1))
  rows = np.arange(L)
  tokens_NT[rows, rows + 1] = mask_id
  valid_NT = np.zeros((T, T), bool)
  valid_NT[:, :L + 2] = True
  logp_NTV = _masked_logprobs(model, params, jnp.asarray(tokens_NT), jnp.asarray(valid_NT))
  return np.asarray(logp_NTV[rows, rows + 1, ids], np.float64)


def encoder_scorer(model, params, tokenizer) -> Callable:
  """parts -> per-token pseudo-log-likelihoods and the term mask (a BertTokenizer)."""
  def score(parts):
    ids, is_term = _encode_parts(tokenizer, parts)
    return pseudo_log_likelihood(model, params, ids, cls_id=tokenizer.cls_id,
                                 sep_id=tokenizer.sep_id, mask_id=tokenizer.mask_id), is_term
  return score


def score_pairs(score: Callable, pairs: Sequence[Pair]) -> list[dict]:
  """Full and shared-token log-likelihoods of both sentences of every pair."""
  rows = []
  for p in pairs:
    row = {"category": p.category, "valence": p.valence, "template": p.template,
           "term_a": p.term_a, "term_b": p.term_b}
    for side, term in (("a", p.term_a), ("b", p.term_b)):
      logp, is_term = score(p.parts(term))
      finite = np.where(np.isfinite(logp), logp, 0.0)  # a decoder without a first-token prior
      row[f"full_{side}"] = float(finite.sum())
      row[f"shared_{side}"] = float(finite[~is_term].sum())
    rows.append(row)
  return rows


def bootstrap_ci(samples: Sequence[np.ndarray], statistic: Callable, *,
                 num_resamples: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
  """(estimate, low, high): the percentile bootstrap, each sample resampled independently.

  `statistic(*samples)` -> float; e.g. `np.mean` of one sample, or a difference of means
  of two.
  """
  if not 0 < confidence < 1:
    raise UserError(f"confidence must be in (0, 1), got {confidence}")
  if num_resamples < 1:
    raise UserError(f"num_resamples must be positive, got {num_resamples}")
  samples = [np.asarray(s, np.float64) for s in samples]
  if any(len(s) == 0 for s in samples):
    raise UserError("bootstrap needs non-empty samples")
  rng = np.random.default_rng(seed)
  index_RN = [rng.integers(0, len(s), (num_resamples, len(s))) for s in samples]
  draws = np.array([statistic(*(s[idx[r]] for s, idx in zip(samples, index_RN)))
                    for r in range(num_resamples)])
  alpha = (1 - confidence) / 2
  low, high = np.quantile(draws, [alpha, 1 - alpha])
  return float(statistic(*samples)), float(low), float(high)


def summarize(rows: Sequence[dict], *, num_resamples: int = 2000, confidence: float = 0.95,
              seed: int = 0) -> dict:
  """Per category: differences by valence, preference fraction, association, with CIs."""
  out = {}
  for category in dict.fromkeys(r["category"] for r in rows):
    mine = [r for r in rows if r["category"] == category]
    diff = {v: np.array([r["shared_a"] - r["shared_b"] for r in mine if r["valence"] == v])
            for v in dict.fromkeys(r["valence"] for r in mine)}
    all_diff = np.concatenate(list(diff.values()))
    full = np.array([r["full_a"] - r["full_b"] for r in mine])
    kw = dict(num_resamples=num_resamples, confidence=confidence, seed=seed)
    stats = {"pairs": len(mine),
             "prefer_a": bootstrap_ci([all_diff > 0], np.mean, **kw),
             "mean_diff": bootstrap_ci([all_diff], np.mean, **kw),
             "mean_diff_full": bootstrap_ci([full], np.mean, **kw)}
    for valence, d in diff.items():
      stats[f"mean_diff_{valence}"] = bootstrap_ci([d], np.mean, **kw)
    if {"positive", "negative"} <= set(diff):
      stats["association"] = bootstrap_ci([diff["positive"], diff["negative"]],
                                          lambda p, n: p.mean() - n.mean(), **kw)
    out[category] = stats
  return out


def table(summary: dict, first_terms: dict[str, str]) -> str:
  """Markdown: one row per category; cells `estimate [low, high]`."""
  def cell(x):
    return f"{x[0]:+.3f} [{x[1]:+.3f}, {x[2]:+.3f}]"
  lines = ["| category (first terms) | pairs | P(prefer first) | mean Δ shared | Δ positive | "
           "Δ negative | association (pos − neg) | mean Δ full sentence |",
           "|---|---|---|---|---|---|---|---|"]
  for category, s in summary.items():
    p = s["prefer_a"]
    missing = ("n/a", "n/a", "n/a")
    lines.append(" | ".join([
        f"| {category} ({first_terms.get(category, '')})", str(s["pairs"]),
        f"{p[0]:.3f} [{p[1]:.3f}, {p[2]:.3f}]", cell(s["mean_diff"]),
        cell(s["mean_diff_positive"]) if "mean_diff_positive" in s else missing[0],
        cell(s["mean_diff_negative"]) if "mean_diff_negative" in s else missing[0],
        cell(s["association"]) if "association" in s else missing[0],
        cell(s["mean_diff_full"])]) + " |")
  return "\n".join(lines) + "\n"

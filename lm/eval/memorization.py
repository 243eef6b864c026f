"""Memorisation probes after Carlini et al.: canary exposure and extractable memorisation.

Legend: B batch, S sequence length, V vocab, N candidates.

Exposure ("The Secret Sharer", Carlini et al. 2019). A canary is a fixed prefix and a
random secret from a space R (here: `n` random digits laid out by a template such as
"# # # # #"). Plant it k times in the training text, train, and rank every candidate
secret r in R by the model's log-perplexity of the secret given the prefix,
-sum_i log p(s_i | prefix, s_<i) over the template's tokens. Then

  exposure = log2 |R| - log2 rank(true secret),  rank 1 = most likely.

We enumerate R exactly (no skew-normal extrapolation): with a char model, one forward
pass of "prefix + first n-1 digits" gives the log-probabilities of every token of the
template and, at its last position, of all 10 choices of the last digit, so |R| / 10
sequences score all |R| candidates. An unseen canary has a uniformly random rank, so its
expected exposure is about 1/ln 2 = 1.44 bits; the maximum is log2 |R|.

Extractable memorisation ("Quantifying Memorization", Carlini et al. 2023): a training
sequence of prefix_len + suffix_len tokens is extractable if greedy decoding from its
prefix reproduces the suffix exactly. Comparing the rate on training and held-out text
separates memorisation from what is merely predictable.
"""

import dataclasses
import functools
import math

import jax
import numpy as np

from lm.data.pii import luhn_valid
from lm.errors import UserError
from lm.sampling import generate, generate_batch

SLOT = "#"  # a secret digit in a canary template
DIGITS = "0123456789"


@dataclasses.dataclass(frozen=True)
class Canary:
  """`prefix` + the template with its `#` slots filled by `secret`, planted `repeats` times."""
  name: str
  prefix: str
  template: str
  secret: str
  repeats: int

  def __post_init__(self):
    if not self.template.endswith(SLOT):
      raise UserError(f"canary template {self.template!r} must end with a {SLOT!r} slot")
    if len(self.secret) != self.template.count(SLOT) or not self.secret.isdigit():
      raise UserError(f"canary secret {self.secret!r} must be {self.template.count(SLOT)} digits")

  @property
  def rendered(self) -> str:
    return render(self.template, self.secret)

  @property
  def text(self) -> str:
    return self.prefix + self.rendered

  @property
  def space_size(self) -> int:
    return 10 ** len(self.secret)


def render(template: str, digits: str) -> str:
  it = iter(digits)
  return "".join(next(it) if ch == SLOT else ch for ch in template)


def random_name(rng: np.random.Generator, length: int = 6) -> str:
  """A pronounceable made-up lowercase word (consonant-vowel), unlikely in any corpus."""
  consonants, vowels = "bdfgklmnprstvz", "aeiou"
  return "".join(rng.choice(list(vowels if i % 2 else consonants)) for i in range(length))


def random_secret(rng: np.random.Generator, num_digits: int) -> str:
  return "".join(rng.choice(list(DIGITS), num_digits))


def luhn_complete(digits: str) -> str:
  """Appends the Luhn check digit, making a valid card-like number."""
  return next(digits + check for check in DIGITS if luhn_valid(digits + check))


def plant(text: str, insertions: list[tuple[str, int]], rng: np.random.Generator) -> str:
  """Inserts each (line, repeats) as its own line `repeats` times at random line starts."""
  lines = text.split("\n")
  planted = [line for line, repeats in insertions for _ in range(repeats)]
  # One insertion point per planted line, over the gaps between existing lines.
  where = np.sort(rng.integers(0, len(lines) + 1, len(planted)))
  order = rng.permutation(len(planted))
  out, j = [], 0
  for i in range(len(lines) + 1):
    while j < len(where) and where[j] == i:
      out.append(planted[order[j]])
      j += 1
    if i < len(lines):
      out.append(lines[i])
  return "\n".join(out)


@functools.partial(jax.jit, static_argnames=("model",))
def _logprobs(model, params, ids_BS):
  logits_BSV, _ = model.apply({"params": params}, ids_BS)
  return jax.nn.log_softmax(logits_BSV.astype(np.float32), axis=-1)


def _char_ids(tokenizer, text: str) -> np.ndarray:
  if getattr(tokenizer, "kind", None) != "char":
    raise UserError(f"canary exposure enumerates digits one token each: it needs a char "
                    f"tokenizer, not {getattr(tokenizer, 'kind', type(tokenizer).__name__)!r}")
  return tokenizer.encode(text)


def secret_logperplexities(model, params, tokenizer, prefix: str, template: str,
                           batch_size: int = 1000) -> np.ndarray:
  """-log p(render(template, r) | prefix) for every r in the digit space, index = int(r)."""
  num_digits = template.count(SLOT)
  if not template.endswith(SLOT) or num_digits < 1:
    raise UserError(f"canary template {template!r} must end with a {SLOT!r} slot")
  max_len = model.config.max_len
  prefix_ids = _char_ids(tokenizer, prefix)
  if len(prefix_ids) == 0:
    raise UserError("canary prefix is empty: the first secret token needs context")
  # Keep the most recent context if prefix + template does not fit the model.
  keep = max_len - (len(template) - 1)
  if keep < 1:
    raise UserError(f"canary template of {len(template)} tokens does not fit "
                    f"model.max_len={max_len}")
  prefix_ids = prefix_ids[-keep:]
  P, T = len(prefix_ids), len(template)
  digit_ids = _char_ids(tokenizer, DIGITS)
  num_rows = 10 ** (num_digits - 1)
  out = np.zeros(10 * num_rows, np.float64)
  for start in range(0, num_rows, batch_size):
    rows = np.arange(start, min(start + batch_size, num_rows))
    heads = [str(r).zfill(num_digits - 1) if num_digits > 1 else "" for r in rows]
    seq_BS = np.stack([np.concatenate([prefix_ids, _char_ids(
        tokenizer, render(template[:-1], h))]) for h in heads]).astype(np.int32)
    logp_BSV = np.asarray(_logprobs(model, params, seq_BS), np.float64)
    # Row j predicts token j + 1: template token t sits at P + t, predicted by row P + t - 1.
    pos = np.arange(P, P + T - 1)
    fixed_B = logp_BSV[np.arange(len(rows))[:, None], pos[None] - 1, seq_BS[:, pos]].sum(axis=1)
    last_B10 = logp_BSV[:, P + T - 2][:, digit_ids]
    out[10 * rows[0]:10 * (rows[-1] + 1)] = -(fixed_B[:, None] + last_B10).reshape(-1)
  return out


def rank_of(logperplexities: np.ndarray, index: int) -> int:
  """1 + the number of candidates strictly more likely than candidate `index`."""
  return 1 + int(np.sum(logperplexities < logperplexities[index]))


def exposure_from_rank(rank: int, space_size: int) -> float:
  if not 1 <= rank <= space_size:
    raise UserError(f"rank {rank} is outside 1..{space_size}")
  return math.log2(space_size) - math.log2(rank)


def exposure(model, params, tokenizer, canary: Canary, batch_size: int = 1000) -> dict:
  logppl = secret_logperplexities(model, params, tokenizer, canary.prefix, canary.template,
                                  batch_size)
  rank = rank_of(logppl, int(canary.secret))
  return {"rank": rank, "exposure": exposure_from_rank(rank, canary.space_size),
          "logppl": float(logppl[int(canary.secret)]), "logppl_median": float(np.median(logppl))}


def greedy_extracts(model, params, tokenizer, prefix: str, target: str) -> tuple[bool, str]:
  """Greedy decoding from `prefix`: does it produce `target` exactly? (and what it produced)"""
  ids = generate(model, params, tokenizer.encode(prefix), max_new_tokens=len(
      tokenizer.encode(target)), temperature=0.0)
  produced = tokenizer.decode(ids[0])
  return produced == target, produced


def window_starts(num_tokens: int, length: int, count: int, rng: np.random.Generator):
  """`count` distinct random window starts (fewer if the text is short)."""
  if num_tokens < length:
    raise UserError(f"text of {num_tokens} tokens is shorter than one window of {length}")
  choices = num_tokens - length + 1
  return np.sort(rng.choice(choices, min(count, choices), replace=False))


def extraction(model, params, ids: np.ndarray, starts: np.ndarray, prefix_len: int,
               suffix_len: int, batch_size: int = 64) -> dict:
  """Greedy continuation of each window's prefix vs its true suffix.

  Returns the extractable fraction (exact suffix), the mean number of leading suffix
  tokens reproduced, and the mean per-token accuracy.
  """
  if prefix_len + suffix_len > model.config.max_len:
    raise UserError(f"prefix_len + suffix_len = {prefix_len + suffix_len} exceeds "
                    f"model.max_len={model.config.max_len}")
  ids = np.asarray(ids, np.int32)
  windows_NL = ids[starts[:, None] + np.arange(prefix_len + suffix_len)[None]]
  produced = []
  for i in range(0, len(windows_NL), batch_size):
    chunk = windows_NL[i:i + batch_size, :prefix_len]
    pad = batch_size - len(chunk)  # one batch shape, one compilation
    chunk = np.concatenate([chunk, np.zeros((pad, prefix_len), np.int32)])
    out = np.asarray(generate_batch(model, params, chunk, max_new_tokens=suffix_len,
                                    temperature=0.0))
    produced.append(out[:batch_size - pad])
  produced_NL = np.concatenate(produced)
  match_NL = produced_NL == windows_NL[:, prefix_len:]
  leading_N = np.where(match_NL.all(axis=1), suffix_len, np.argmin(match_NL, axis=1))
  return {"extractable": float(match_NL.all(axis=1).mean()),
          "matched_prefix_tokens": float(leading_N.mean()),
          "token_accuracy": float(match_NL.mean()), "sequences": len(windows_NL)}

"""ARPA export of a Kneser-Ney `NGramLM`, the text format SRILM and KenLM read.

Each stored n-gram gets its interpolated probability
  P_n(w | h) = u_n(w | h) + gamma_n(h) P_{n-1}(w | h[1:])
and, if it is itself a context, its backoff gamma_{n+1}(n-gram); both as log10. A
backoff model reading these reproduces the interpolated model exactly, because an
n-gram missing from the file has u_n = 0. `<s>` gets -99 (never predicted), as in SRILM.
"""

import numpy as np

from lm.errors import UserError
from lm.models.ngram import NGramLM

_NEVER = -99.0


def arpa_token(token: str) -> str:
  """ARPA words are whitespace-separated: spell empty or whitespace-bearing tokens as <U+XXXX>."""
  if token and not any(c.isspace() for c in token):
    return token
  return "".join(f"<U+{ord(c):04X}>" if c.isspace() else c for c in token) or "<empty>"


def interpolated_probs(model: NGramLM) -> list[np.ndarray]:
  """Per order n (list index n-1), the interpolated probability of every stored n-gram."""
  probs = [model.unigram_prob_V]
  for n in range(2, model.config.order + 1):
    o = model.orders[n - 2]
    probs.append(o.prob_G + o.gamma_C[model.context_of(n)] * probs[-1][o.suffix_G])
  return probs


def write_arpa(model: NGramLM, path: str, token_strings: list[str]):
  """Writes `model` to `path`; `token_strings[i]` names vocabulary id i."""
  if model.config.smoothing != "kneser_ney":
    raise UserError("ARPA export needs a backoff model: use model.smoothing=kneser_ney")
  if len(token_strings) != model.vocab_size:
    raise UserError(f"{len(token_strings)} token strings for a vocabulary of {model.vocab_size}")
  names = np.array([arpa_token(t) for t in token_strings], dtype=object)
  if len(set(names.tolist())) != len(names):
    raise UserError("ARPA export: two tokens share a spelling; ARPA words must be unique")
  N = model.config.order
  probs = interpolated_probs(model)
  with np.errstate(divide="ignore"):
    log10_probs = [np.log10(p) for p in probs]
  log10_probs[0] = np.where(model.predictable_V, log10_probs[0], _NEVER)

  strings = [names]
  for n in range(2, N + 1):
    strings.append(strings[-1][model.context_of(n)] + " " + names[model.last_word_of(n)])
  # Unigrams: every token of the vocabulary (unseen ones get the uniform share).
  with open(path, "w", encoding="utf-8") as f:
    f.write("\\data\\\n")
    for n in range(1, N + 1):
      f.write(f"ngram {n}={model.num_rows(n)}\n")
    for n in range(1, N + 1):
      f.write(f"\n\\{n}-grams:\n")
      lp = log10_probs[n - 1]
      if n < N:
        o_next = model.orders[n - 1]
        is_context = o_next.total_C > 0
        with np.errstate(divide="ignore"):
          backoff = np.log10(np.where(is_context, o_next.gamma_C, 1.0))
        lines = [f"{p:.7g}\t{s}\t{b:.7g}" if c else f"{p:.7g}\t{s}"
                 for p, s, b, c in zip(lp.tolist(), strings[n - 1].tolist(), backoff.tolist(),
                                       is_context.tolist())]
      else:
        lines = [f"{p:.7g}\t{s}" for p, s in zip(lp.tolist(), strings[n - 1].tolist())]
      f.write("\n".join(lines))
      f.write("\n")
    f.write("\n\\end\\\n")

"""Count-based n-gram language models in NumPy: interpolated modified Kneser-Ney and add-k.

Legend: P corpus positions, L scored tokens, G n-grams of one order, C contexts
(the (n-1)-grams of the order below), V model vocabulary (tokenizer ids, then <s>, </s>).

Storage is a trie of sorted integer keys: the n-gram (w_1..w_n) has key
`index_{n-1}(w_1..w_{n-1}) * V + w_n`, where `index_{n-1}` is the (n-1)-gram's row in
its own order's sorted table. Keys stay below (#(n-1)-grams) * V, so any order fits
int64, and counting one order is a single `np.unique` over every corpus position.
All n-grams sharing a context are contiguous, so per-context sums are `bincount`s.

Conventions follow KenLM's `lmplz` (and SRILM): in sentence mode each line becomes
`<s> w_1 .. w_k </s>`; `<s>` is context only and never predicted; lower orders use
continuation counts (the number of distinct left neighbours) except for n-grams that
start with `<s>`, which keep their raw counts; three discounts D1, D2, D3+ per order
from counts-of-counts (Chen & Goodman eq. 26); the unigram level is interpolated with
the uniform distribution over every predictable token (the vocabulary without `<s>`).
"""

import dataclasses

import numpy as np

from lm.errors import UserError

SMOOTHINGS = ("kneser_ney", "add_k")
MAX_ORDER = 16
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)  # KenLM's --discount_fallback values


@dataclasses.dataclass(frozen=True)
class NGramConfig:
  order: int = 3
  smoothing: str = "kneser_ney"  # kneser_ney (interpolated, modified) | add_k
  k: float = 1.0  # add_k: pseudo-count added to every n-gram (1 = Laplace)
  vocab_size: int = 0  # 0: taken from the tokenizer

  def __post_init__(self):
    if not 1 <= self.order <= MAX_ORDER:
      raise ValueError(f"model.order must be in [1, {MAX_ORDER}], got {self.order}")
    if self.smoothing not in SMOOTHINGS:
      raise ValueError(f"model.smoothing={self.smoothing!r}; choose one of {SMOOTHINGS}")
    if self.smoothing == "add_k" and not self.k > 0:
      raise ValueError(f"model.k must be > 0 for add_k smoothing, got {self.k}")
    if self.vocab_size < 0:
      raise ValueError(f"model.vocab_size must be >= 0, got {self.vocab_size}")


@dataclasses.dataclass
class TokenStream:
  """Sequences laid end to end: `tokens_P` and each token's position in its sequence.

  In sentence mode position 0 holds `<s>`; an n-gram ending at p exists only when
  `pos_P[p] >= n - 1`, so no n-gram crosses a sentence boundary.
  """
  tokens_P: np.ndarray  # int64
  pos_P: np.ndarray  # int64

  @classmethod
  def from_sequences(cls, sequences, bos: int | None = None, eos: int | None = None):
    """`bos`/`eos` given: sentence mode, each sequence wrapped as <s> .. </s>."""
    pieces = []
    for seq in sequences:
      seq = np.asarray(seq, np.int64)
      if bos is not None:
        seq = np.concatenate([[bos], seq, [eos]])
      pieces.append(seq)
    pieces = [p for p in pieces if len(p)]
    if not pieces:
      return cls(np.zeros(0, np.int64), np.zeros(0, np.int64))
    lengths = np.array([len(p) for p in pieces])
    tokens_P = np.concatenate(pieces)
    starts = np.cumsum(lengths) - lengths
    pos_P = np.arange(len(tokens_P)) - np.repeat(starts, lengths)
    return cls(tokens_P, pos_P)


def modified_kn_discounts(counts_G: np.ndarray) -> tuple[tuple[float, float, float], bool]:
  """(D1, D2, D3+) from counts-of-counts t_k: Y = t1/(t1+2 t2), D_k = k - (k+1) Y t_{k+1}/t_k.

  Returns the fallback (0.5, 1, 1.5) and True when a t_k is 0 or a discount leaves [0, k].
  """
  t = np.bincount(np.minimum(counts_G, 5), minlength=6).astype(np.float64)
  if np.any(t[1:5] == 0):
    return FALLBACK_DISCOUNTS, True
  y = t[1] / (t[1] + 2 * t[2])
  d = tuple(float(k - (k + 1) * y * t[k + 1] / t[k]) for k in (1, 2, 3))
  if any(not 0 <= dk <= k for k, dk in zip((1, 2, 3), d)):
    return FALLBACK_DISCOUNTS, True
  return d, False


@dataclasses.dataclass
class _Order:
  """One order n >= 2. G rows: this order's n-grams; C rows: the (n-1)-grams as contexts."""
  keys_G: np.ndarray  # sorted: context_index * V + last_word
  counts_G: np.ndarray  # raw counts
  suffix_G: np.ndarray  # row of (w_2..w_n) in order n-1
  prob_G: np.ndarray = None  # the discounted, uninterpolated part u(w | context)
  gamma_C: np.ndarray = None  # interpolation weight of each context (0 if never a context)
  total_C: np.ndarray = None  # sum of the (adjusted) counts that follow each context
  adjusted_G: np.ndarray = None  # Kneser-Ney's adjusted counts
  starts_with_bos_G: np.ndarray = None  # sentence mode only
  discounts: tuple = ()


class NGramLM:
  """A fitted n-gram model. Build with `NGramLM.fit`; query with `logprobs` / `next_logprobs`."""

  def __init__(self, config: NGramConfig, vocab_size: int, bos: int | None, eos: int | None):
    self.config, self.vocab_size, self.bos, self.eos = config, vocab_size, bos, eos
    self.predictable_V = np.ones(vocab_size, bool)
    if bos is not None:
      self.predictable_V[bos] = False
    self.orders: list[_Order] = []  # orders[n - 2] is order n
    self.unigram_counts_V = np.zeros(vocab_size, np.int64)
    self.unigram_prob_V = np.zeros(vocab_size)  # full interpolated p(w), 0 for <s>
    self.discount_fallback: list[int] = []  # orders whose discounts fell back

  # ------------------------------------------------------------------ building

  @classmethod
  def fit(cls, config: NGramConfig, stream: TokenStream, vocab_size: int,
          bos: int | None = None, eos: int | None = None) -> "NGramLM":
    """Counts every order up to `config.order` over `stream` and estimates probabilities."""
    tokens_P = np.asarray(stream.tokens_P, np.int64)
    if tokens_P.size == 0:
      raise UserError("cannot fit an n-gram model on an empty training stream")
    if tokens_P.min() < 0 or tokens_P.max() >= vocab_size:
      raise UserError(f"token ids must be in [0, {vocab_size}) for this n-gram vocabulary")
    model = cls(config, vocab_size, bos, eos)
    model._count(tokens_P, np.asarray(stream.pos_P, np.int64))
    if config.smoothing == "kneser_ney":
      model._estimate_kneser_ney()
    else:
      for n in range(2, config.order + 1):
        o = model.orders[n - 2]
        o.total_C = np.bincount(model.context_of(n), weights=o.counts_G,
                                minlength=model.num_rows(n - 1))
    return model

  def _count(self, tokens_P, pos_P):
    V = self.vocab_size
    predicted_P = self.predictable_V[tokens_P]
    self.unigram_counts_V = np.bincount(tokens_P[predicted_P], minlength=V)
    row_P = tokens_P.copy()  # row of the (n-1)-gram ending at each position; -1: none
    for n in range(2, self.config.order + 1):
      ends_E = np.nonzero(pos_P >= n - 1)[0]
      keys_E = row_P[ends_E - 1] * V + tokens_P[ends_E]
      keys_G, first_G, inverse_E, counts_G = np.unique(
          keys_E, return_index=True, return_inverse=True, return_counts=True)
      first_G = ends_E[first_G]  # a position where each n-gram ends
      o = _Order(keys_G, counts_G, suffix_G=row_P[first_G])
      # In sentence mode an n-gram starts with <s> iff it starts a sentence.
      o.starts_with_bos_G = (pos_P[first_G] == n - 1) if self.bos is not None else None
      row_P = np.full(len(tokens_P), -1, np.int64)
      row_P[ends_E] = inverse_E.reshape(-1)
      self.orders.append(o)

  def num_rows(self, n: int) -> int:
    """Number of distinct n-grams (order 1: the whole vocabulary)."""
    return self.vocab_size if n == 1 else len(self.orders[n - 2].keys_G)

  def context_of(self, n: int) -> np.ndarray:
    """Row in order n-1 of each n-gram's context (w_1..w_{n-1})."""
    return self.orders[n - 2].keys_G // self.vocab_size

  def last_word_of(self, n: int) -> np.ndarray:
    return self.orders[n - 2].keys_G % self.vocab_size

  def _adjusted_counts(self, n: int) -> np.ndarray:
    """KenLM's adjusted counts of order n: raw at the top order and for n-grams starting
    with <s>; otherwise the number of distinct words seen to the left."""
    raw = self.unigram_counts_V if n == 1 else self.orders[n - 2].counts_G
    if n == self.config.order:
      return raw.astype(np.int64)
    adjusted = np.bincount(self.orders[n - 1].suffix_G, minlength=self.num_rows(n))
    if n == 1:
      adjusted[~self.predictable_V] = 0  # <s> is never predicted
    elif self.bos is not None:
      adjusted = np.where(self.orders[n - 2].starts_with_bos_G, raw, adjusted)
    return adjusted.astype(np.int64)

  def _estimate_kneser_ney(self):
    N = self.config.order
    # Unigrams: discounted adjusted counts plus gamma_0 times the uniform distribution.
    counts_V = self.unigram_adjusted_V = self._adjusted_counts(1)
    self.unigram_discounts, fell_back = modified_kn_discounts(counts_V[self.predictable_V])
    if fell_back:
      self.discount_fallback.append(1)
    discount_V = _discount(counts_V, self.unigram_discounts)
    total = counts_V.sum()
    gamma0 = discount_V.sum() / total
    num_predictable = int(self.predictable_V.sum())
    self.unigram_prob_V = np.where(self.predictable_V,
                                   (counts_V - discount_V) / total + gamma0 / num_predictable, 0.0)
    adjusted = [self._adjusted_counts(n) for n in range(2, N + 1)]
    for n in range(2, N + 1):
      o = self.orders[n - 2]
      o.adjusted_G = counts_G = adjusted[n - 2]
      o.discounts, fell_back = modified_kn_discounts(counts_G)
      if fell_back:
        self.discount_fallback.append(n)
      discount_G = _discount(counts_G, o.discounts)
      context_G = self.context_of(n)
      num_contexts = self.num_rows(n - 1)
      o.total_C = np.bincount(context_G, weights=counts_G, minlength=num_contexts)
      safe_C = np.where(o.total_C > 0, o.total_C, 1.0)
      o.prob_G = (counts_G - discount_G) / safe_C[context_G]
      o.gamma_C = np.bincount(context_G, weights=discount_G, minlength=num_contexts) / safe_C

  # ------------------------------------------------------------------ querying

  def _rows(self, tokens_P, pos_P) -> list[np.ndarray]:
    """rows[n-1][p]: row of the n-gram ending at p in the order-n table, or -1."""
    V = self.vocab_size
    rows = [tokens_P.copy()]
    for n in range(2, self.config.order + 1):
      o = self.orders[n - 2]
      prev = np.full(len(tokens_P), -1, np.int64)
      prev[1:] = rows[-1][:-1]
      ok = (pos_P >= n - 1) & (prev >= 0)
      keys = np.where(ok, prev * V + tokens_P, 0)
      found = np.searchsorted(o.keys_G, keys)
      found = np.minimum(found, len(o.keys_G) - 1)
      hit = ok & (o.keys_G[found] == keys) if len(o.keys_G) else np.zeros_like(ok)
      rows.append(np.where(hit, found, -1))
    return rows

  def logprobs(self, stream: TokenStream) -> np.ndarray:
    """Natural-log p(token | up to order-1 previous tokens of its sequence), per position.

    Positions holding <s> get 0 (they are context, not predictions).
    """
    tokens_P = np.asarray(stream.tokens_P, np.int64)
    pos_P = np.asarray(stream.pos_P, np.int64)
    rows = self._rows(tokens_P, pos_P)
    if self.config.smoothing == "add_k":
      prob_P = self._add_k_probs(tokens_P, pos_P, rows)
    else:
      prob_P = self.unigram_prob_V[tokens_P]
      for n in range(2, self.config.order + 1):
        o = self.orders[n - 2]
        context_P = np.full(len(tokens_P), -1, np.int64)
        context_P[1:] = rows[n - 2][:-1]
        context_P = np.where(pos_P >= n - 1, context_P, -1)
        has_context = context_P >= 0
        safe_context = np.maximum(context_P, 0)
        has_context &= o.total_C[safe_context] > 0
        u_P = np.where(rows[n - 1] >= 0, o.prob_G[np.maximum(rows[n - 1], 0)], 0.0)
        prob_P = np.where(has_context, u_P + o.gamma_C[safe_context] * prob_P, prob_P)
    with np.errstate(divide="ignore"):
      logp_P = np.log(prob_P)
    if self.bos is not None:
      logp_P[tokens_P == self.bos] = 0.0
    return logp_P

  def _add_k_probs(self, tokens_P, pos_P, rows):
    """(c(context w) + k) / (c(context) + k |V|) with the longest context the sequence allows."""
    k, num_predictable = self.config.k, int(self.predictable_V.sum())
    n_P = np.minimum(pos_P + 1, self.config.order)
    counts_P = self.unigram_counts_V[tokens_P].astype(np.float64)
    totals_P = np.full(len(tokens_P), float(self.unigram_counts_V.sum()))
    for n in range(2, self.config.order + 1):
      o = self.orders[n - 2]
      use = n_P == n
      context_P = np.full(len(tokens_P), -1, np.int64)
      context_P[1:] = rows[n - 2][:-1]
      gram_P = rows[n - 1]
      counts_P = np.where(use, np.where(gram_P >= 0, o.counts_G[np.maximum(gram_P, 0)], 0),
                          counts_P)
      totals_P = np.where(use, np.where(context_P >= 0, o.total_C[np.maximum(context_P, 0)], 0),
                          totals_P)
    return (counts_P + k) / (totals_P + k * num_predictable)

  def next_logprobs(self, context) -> np.ndarray:
    """log p(w | context) for every w in the vocabulary (-inf for <s>), as a (V,) array.

    `context` is the sequence so far (in sentence mode it should start with <s>); only
    its last order-1 tokens matter.
    """
    V, N = self.vocab_size, self.config.order
    context = [int(t) for t in context][-(N - 1):] if N > 1 else []
    if self.config.smoothing == "add_k":
      return self._add_k_next(context)
    prob_V = self.unigram_prob_V.copy()
    for n in range(2, N + 1):
      o = self.orders[n - 2]
      m = n - 1  # context length used by order n
      if m > len(context):
        break
      c = self._row_of(m, context[-m:])
      if c < 0 or o.total_C[c] <= 0:
        continue
      lo, hi = np.searchsorted(o.keys_G, [c * V, (c + 1) * V])
      prob_V = o.gamma_C[c] * prob_V
      prob_V[o.keys_G[lo:hi] % V] += o.prob_G[lo:hi]
    with np.errstate(divide="ignore"):
      return np.where(self.predictable_V, np.log(prob_V), -np.inf)

  def _add_k_next(self, context) -> np.ndarray:
    V, k = self.vocab_size, self.config.k
    m = min(len(context), self.config.order - 1)
    counts_V = np.zeros(V)
    if m == 0:
      counts_V = self.unigram_counts_V.astype(np.float64)
    else:
      o = self.orders[m - 1]
      c = self._row_of(m, context[-m:])
      if c >= 0:
        lo, hi = np.searchsorted(o.keys_G, [c * V, (c + 1) * V])
        counts_V[o.keys_G[lo:hi] % V] = o.counts_G[lo:hi]
    counts_V[~self.predictable_V] = 0
    prob_V = (counts_V + k) / (counts_V.sum() + k * int(self.predictable_V.sum()))
    return np.where(self.predictable_V, np.log(prob_V), -np.inf)

  def _row_of(self, m: int, words) -> int:
    """Row of the m-gram `words` in its order's table, or -1 if never seen."""
    row = int(words[0])
    for j in range(2, m + 1):
      row = self._lookup(j, row, int(words[j - 1]))
      if row < 0:
        return -1
    return row

  def _lookup(self, n: int, prefix_row: int, word: int) -> int:
    keys_G = self.orders[n - 2].keys_G
    key = prefix_row * self.vocab_size + word
    i = int(np.searchsorted(keys_G, key))
    return i if i < len(keys_G) and keys_G[i] == key else -1

  # ------------------------------------------------------------------ reporting

  def unseen_fractions(self, stream: TokenStream) -> list[float]:
    """Per order n: of the n-grams in `stream` (n tokens inside one sequence, ending in a
    predicted token), the fraction never seen in training -- the data-sparsity curve."""
    tokens_P = np.asarray(stream.tokens_P, np.int64)
    pos_P = np.asarray(stream.pos_P, np.int64)
    rows = self._rows(tokens_P, pos_P)
    rows[0] = np.where(self.unigram_counts_V[tokens_P] > 0, tokens_P, -1)
    predicted_P = self.predictable_V[tokens_P]
    out = []
    for n in range(1, self.config.order + 1):
      have = predicted_P & (pos_P >= n - 1)
      out.append(float((rows[n - 1][have] < 0).mean()) if have.any() else float("nan"))
    return out

  def num_ngrams(self) -> list[int]:
    """Distinct n-grams per order (order 1: the whole vocabulary, as in the ARPA file)."""
    return [self.vocab_size] + [len(o.keys_G) for o in self.orders]

  def nbytes(self) -> int:
    arrays = [self.unigram_counts_V, self.unigram_prob_V]
    for o in self.orders:
      arrays += [a for a in (o.keys_G, o.counts_G, o.suffix_G, o.prob_G, o.gamma_C, o.total_C,
                             o.adjusted_G) if a is not None]
    return int(sum(a.nbytes for a in arrays))

  def discounts(self) -> dict:
    """Per order, (D1, D2, D3+) of modified Kneser-Ney."""
    if self.config.smoothing != "kneser_ney":
      return {}
    out = {1: self.unigram_discounts}
    out.update({n: self.orders[n - 2].discounts for n in range(2, self.config.order + 1)})
    return out


def _discount(counts, discounts) -> np.ndarray:
  d1, d2, d3 = discounts
  return np.select([counts == 0, counts == 1, counts == 2], [0.0, d1, d2], d3)

"""Exact and near-duplicate documents: document hashes, MinHash over word shingles, LSH.

Exact duplicates have the same normalised word sequence (`lm.data.ngrams`): case,
punctuation and spacing do not count. Near duplicates have a Jaccard similarity
|A ∩ B| / |A ∪ B| of their sets of word k-gram shingles of at least `threshold`.
Comparing all pairs is quadratic, so (Broder 1997; Leskovec et al., MMDS ch. 3):

1. MinHash: for P random hash functions h_p, sig[d, p] = min over d's shingles of
   h_p(shingle); P(sig[a, p] == sig[b, p]) = J(a, b), so the fraction of equal
   entries estimates J with standard deviation sqrt(J(1-J)/P).
2. LSH banding: split the P entries into b bands of r rows; documents whose rows
   agree in some band become candidates, which happens with probability
   1 - (1 - J^r)^b. The default r is the largest with that probability >= 99% at
   J = threshold (threshold 0.8, P 128: r 6, b 21).
3. Candidates whose estimated J >= threshold are near duplicates; documents linked
   by such pairs form a cluster and only its first document is kept.

In each band a bucket's members are paired with the bucket's first document only
(not with each other), so a bucket of m copies costs m - 1 pairs, not m^2 / 2.

Array names end in their axis: _W words, _S shingles, _D documents, _P hash functions,
_M candidate pairs.
"""

import dataclasses
from collections.abc import Sequence

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph

from lm.data.ngrams import WordHashes, hash_words, ngram_hashes, splitmix64
from lm.errors import UserError


def doc_hashes(words: WordHashes) -> np.ndarray:
  """One order-sensitive hash per document of its word sequence (0 for no words)."""
  position_W = np.arange(len(words.hash_W)) - words.doc_start[words.doc_W]
  with np.errstate(over="ignore"):
    mixed_W = splitmix64(words.hash_W ^ splitmix64(position_W.astype(np.uint64)))
    count_D = words.words_per_doc
    hash_D = np.zeros(words.num_docs, np.uint64)
    nonempty_D = count_D > 0
    if nonempty_D.any():
      sums = np.add.reduceat(mixed_W.view(np.int64), words.doc_start[:-1][nonempty_D])
      hash_D[nonempty_D] = splitmix64(sums.view(np.uint64) + count_D[nonempty_D].astype(np.uint64))
  return hash_D


def shingles(words: WordHashes, k: int) -> tuple[np.ndarray, np.ndarray]:
  """(hash_S, doc_S): every word k-gram; a document shorter than k words is one shingle."""
  hash_S, doc_S = ngram_hashes(words, k)
  count_D = words.words_per_doc
  short_D = np.flatnonzero((count_D > 0) & (count_D < k))
  if len(short_D):
    hash_S = np.concatenate([hash_S, doc_hashes(words)[short_D]])
    doc_S = np.concatenate([doc_S, short_D])
    order = np.argsort(doc_S, kind="stable")
    hash_S, doc_S = hash_S[order], doc_S[order]
  return hash_S, doc_S


def minhash(hash_S: np.ndarray, doc_S: np.ndarray, num_docs: int, num_perm: int,
            seed: int = 0) -> np.ndarray:
  """sig_DP (uint32): per document, the minimum of h_p over its shingles.

  h_p(x) = top 32 bits of (a_p x + b_p) mod 2^64 with a_p odd: a bijection of the
  already well-mixed shingle hashes. Documents without shingles get 2^32 - 1.
  `doc_S` must be sorted.
  """
  rng = np.random.default_rng(seed)
  a_P = rng.integers(0, 2**63, num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
  b_P = rng.integers(0, 2**63, num_perm, dtype=np.uint64)
  sig_DP = np.full((num_docs, num_perm), np.iinfo(np.uint32).max, np.uint32)
  if len(hash_S) == 0:
    return sig_DP
  starts = np.flatnonzero(np.concatenate([[True], doc_S[1:] != doc_S[:-1]]))
  docs = doc_S[starts]
  value_S = np.empty_like(hash_S)
  with np.errstate(over="ignore"):
    for p in range(num_perm):
      np.multiply(hash_S, a_P[p], out=value_S)
      value_S += b_P[p]
      # The minimum of the full values has the minimum top 32 bits.
      sig_DP[docs, p] = np.minimum.reduceat(value_S, starts) >> np.uint64(32)
  return sig_DP


def choose_bands(num_perm: int, threshold: float, recall: float = 0.99) -> tuple[int, int]:
  """(bands, rows): the most rows whose candidate probability at `threshold` >= recall."""
  best = (num_perm, 1)
  for rows in range(1, num_perm + 1):
    bands = num_perm // rows
    if 1 - (1 - threshold**rows) ** bands >= recall:
      best = (bands, rows)
  return best


def candidate_pairs(sig_DP: np.ndarray, bands: int, rows: int) -> np.ndarray:
  """pairs_M2 (int64, first < second): documents that agree on all rows of some band."""
  num_docs = sig_DP.shape[0]
  pairs = []
  for band in range(bands):
    rows_DR = sig_DP[:, band * rows:(band + 1) * rows].astype(np.uint64)
    with np.errstate(over="ignore"):
      key_D = np.zeros(num_docs, np.uint64)
      for r in range(rows):
        key_D = splitmix64(key_D ^ rows_DR[:, r])
    order_D = np.argsort(key_D, kind="stable")  # ties keep index order: the first is smallest
    sorted_D = key_D[order_D]
    new_group = np.concatenate([[True], sorted_D[1:] != sorted_D[:-1]])
    first_D = order_D[np.flatnonzero(new_group)[np.cumsum(new_group) - 1]]
    member = ~new_group
    pairs.append(np.stack([first_D[member], order_D[member]], axis=1))
  if not pairs:
    return np.zeros((0, 2), np.int64)
  pairs_M2 = np.concatenate(pairs)
  return np.unique(pairs_M2, axis=0) if len(pairs_M2) else pairs_M2.astype(np.int64)


def estimated_jaccard(sig_DP: np.ndarray, pairs_M2: np.ndarray, chunk: int = 1 << 16):
  """sim_M: the fraction of equal MinHash entries of each pair (chunked to bound memory)."""
  out_M = np.empty(len(pairs_M2), np.float64)
  for i in range(0, len(pairs_M2), chunk):
    a, b = pairs_M2[i:i + chunk, 0], pairs_M2[i:i + chunk, 1]
    out_M[i:i + chunk] = (sig_DP[a] == sig_DP[b]).mean(axis=1)
  return out_M


@dataclasses.dataclass(frozen=True)
class Dedup:
  exact_of: np.ndarray  # per document: the first document with the same normalised words
  cluster: np.ndarray  # per document: the first document of its near-duplicate cluster
  pairs: np.ndarray  # [M, 2] near-duplicate pairs found (exact duplicates excluded)
  similarity: np.ndarray  # [M] their estimated Jaccard similarity

  @property
  def keep(self) -> np.ndarray:
    return self.cluster == np.arange(len(self.cluster))

  @property
  def num_exact_duplicates(self) -> int:
    return int((self.exact_of != np.arange(len(self.exact_of))).sum())

  @property
  def num_near_duplicates(self) -> int:
    return int((~self.keep).sum()) - self.num_exact_duplicates


def exact_duplicates(words: WordHashes) -> np.ndarray:
  """exact_of_D: the first document with the same word sequence; wordless docs are unique."""
  hash_D = doc_hashes(words)
  exact_of = np.arange(words.num_docs)
  nonempty = np.flatnonzero(words.words_per_doc > 0)
  # Group equal hashes; a stable sort puts each group's first document first.
  order = nonempty[np.argsort(hash_D[nonempty], kind="stable")]
  sorted_hash = hash_D[order]
  new_group = np.concatenate([[True], sorted_hash[1:] != sorted_hash[:-1]])
  exact_of[order] = order[np.flatnonzero(new_group)[np.cumsum(new_group) - 1]]
  return exact_of


def deduplicate(docs: Sequence[str], threshold: float = 0.8, shingle: int = 5,
                num_perm: int = 128, bands: int = 0, seed: int = 0,
                words: WordHashes | None = None) -> Dedup:
  """Exact, then near-duplicate clusters of `docs`; `bands` 0 picks them by `choose_bands`.

  `words`: `hash_words(docs)` if the caller has it already.
  """
  if not 0.0 < threshold <= 1.0:
    raise UserError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
  if shingle < 1 or num_perm < 1:
    raise UserError(f"shingle and num_perm must be >= 1, got {shingle} and {num_perm}")
  if bands:
    if not 1 <= bands <= num_perm:
      raise UserError(f"bands must be in [1, num_perm={num_perm}], got {bands}")
    rows = num_perm // bands
  else:
    bands, rows = choose_bands(num_perm, threshold)
  words = hash_words(docs) if words is None else words
  exact_of = exact_duplicates(words)
  # Near duplicates among the first copy of each distinct text.
  unique_D = np.flatnonzero((exact_of == np.arange(len(docs))) & (words.words_per_doc > 0))
  hash_S, doc_S = shingles(words, shingle)
  position = np.full(len(docs), -1)
  position[unique_D] = np.arange(len(unique_D))
  kept_S = position[doc_S] >= 0
  sig_DP = minhash(hash_S[kept_S], position[doc_S[kept_S]], len(unique_D), num_perm, seed)
  pairs_M2 = candidate_pairs(sig_DP, bands, rows)
  similarity_M = estimated_jaccard(sig_DP, pairs_M2)
  near = similarity_M >= threshold
  pairs_M2, similarity_M = pairs_M2[near], similarity_M[near]
  graph = scipy.sparse.coo_matrix((np.ones(len(pairs_M2)), (pairs_M2[:, 0], pairs_M2[:, 1])),
                                  shape=(len(unique_D),) * 2)
  _, label_U = scipy.sparse.csgraph.connected_components(graph, directed=False)
  first_of_label = np.full(len(unique_D), len(docs))
  np.minimum.at(first_of_label, label_U, unique_D)
  cluster = np.arange(len(docs))
  cluster[unique_D] = first_of_label[label_U]
  cluster = cluster[exact_of]
  return Dedup(exact_of, cluster, unique_D[pairs_M2], similarity_M)


def jaccard(a: Sequence, b: Sequence) -> float:
  """|A ∩ B| / |A ∪ B| of two collections taken as sets (1 for two empty ones)."""
  a, b = set(a), set(b)
  return len(a & b) / len(a | b) if a | b else 1.0

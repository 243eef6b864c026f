"""Test-set contamination as in GPT-3 (Brown et al. 2020, appendix C).

An evaluation example is *dirty* when any of its word n-grams (n = 13 by default)
also occurs in the training corpus; an example shorter than n words is dirty when
its whole word sequence occurs there. Words are normalised first (lower case, no
punctuation: `lm.data.ngrams.normalize`), so "To be, or NOT" matches "to be or not".
The clean subset is every example that is not dirty; comparing a metric on the
full and the clean set shows how much leakage inflates it.

GPT-3 used n = the 5th percentile of the benchmark's example lengths, clipped to
[8, 13] (`gpt3_ngram_length`), so that short examples are checked with n-grams they
actually contain. It also ignored n-grams found in more than 10 training documents (common
phrases and boilerplate rather than leaks); `max_train_docs` does the same (0 = off).

The training corpus is streamed: the eval set's n-grams (small) are kept as a
sorted array and each ~8 MB batch of training documents is hashed and looked up
in it, so memory does not grow with the training corpus.
"""

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from lm.data.ngrams import WordHashes, hash_words, ngram_hashes_upto, unique, words
from lm.errors import UserError


@dataclasses.dataclass(frozen=True)
class Contamination:
  """Per evaluation example: what was checked and what was found in the training corpus."""
  n: int
  num_words: np.ndarray  # normalised words
  num_grams: np.ndarray  # n-grams checked (1 for a shorter, non-empty example: its whole text)
  overlap: np.ndarray  # how many of those occur in the training corpus
  dirty: np.ndarray  # bool: overlap > 0
  first_overlap: np.ndarray  # word index where the first overlapping gram starts, or -1

  def overlap_text(self, example: str, index: int) -> str:
    """The normalised words of example `index`'s first overlapping gram ('' if clean)."""
    start = int(self.first_overlap[index])
    if start < 0:
      return ""
    return " ".join(words(example)[start:start + min(self.n, int(self.num_words[index]))])

  @property
  def clean_indices(self) -> list[int]:
    return np.flatnonzero(~self.dirty).tolist()

  @property
  def dirty_fraction(self) -> float:
    return float(self.dirty.mean()) if len(self.dirty) else 0.0


def gpt3_ngram_length(eval_docs: Sequence[str]) -> int:
  """GPT-3's per-benchmark n: the 5th percentile of example lengths in words, in [8, 13]."""
  lengths = hash_words(eval_docs).words_per_doc
  if not len(lengths):
    return 13
  return int(np.clip(np.floor(np.percentile(lengths, 5)), 8, 13))


def _queries(eval_words: WordHashes, n: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
  """gram length -> (hash_G, example_G) of every gram of the eval set to look up."""
  length = eval_words.words_per_doc
  short = np.unique(length[(length > 0) & (length < n)]).tolist()
  queries = ngram_hashes_upto(eval_words, [n, *short])
  for k in short:
    hash_G, doc_G = queries[k]
    whole = length[doc_G] == k  # the example's only k-gram is the example itself
    queries[k] = (hash_G[whole], doc_G[whole])
  return queries


def _batches(docs: Iterable[str], batch_chars: int):
  batch, size = [], 0
  for doc in docs:
    batch.append(doc)
    size += len(doc)
    if size >= batch_chars:
      yield batch
      batch, size = [], 0
  if batch:
    yield batch


class _HashSet:
  """Membership in a sorted array of uniform 64-bit hashes, for many queries at once.

  A bitmap over the top bits (~256 slots per member) rejects almost every absent
  value with one lookup; only the rest pay for a binary search.
  """

  def __init__(self, sorted_hashes: np.ndarray):
    self.sorted = sorted_hashes
    self.bits = int(np.clip(np.ceil(np.log2(max(len(sorted_hashes), 1))) + 8, 8, 28))
    self.shift = np.uint64(64 - self.bits)
    self.bitmap = np.zeros(1 << self.bits, bool)
    self.bitmap[sorted_hashes >> self.shift] = True

  def contains(self, values: np.ndarray) -> np.ndarray:
    out = np.zeros(len(values), bool)
    if len(self.sorted) == 0:
      return out
    maybe = np.flatnonzero(self.bitmap[values >> self.shift])
    index = np.minimum(np.searchsorted(self.sorted, values[maybe]), len(self.sorted) - 1)
    out[maybe] = self.sorted[index] == values[maybe]
    return out


def check_contamination(train_docs: Iterable[str], eval_docs: Sequence[str], n: int = 13,
                        max_train_docs: int = 0,
                        batch_chars: int = 1 << 23) -> Contamination:
  """Which `eval_docs` share an n-gram with `train_docs` (any iterable, read once)."""
  if n < 1:
    raise UserError(f"n-gram length must be >= 1, got {n}")
  if max_train_docs < 0:
    raise UserError(f"max_train_docs must be >= 0 (0 = off), got {max_train_docs}")
  eval_words = hash_words(eval_docs)
  queries = _queries(eval_words, n)
  wanted = {k: _HashSet(unique(hash_G)) for k, (hash_G, _) in queries.items()}
  # Per gram length: the (gram hash, training document) pairs found, deduplicated.
  found = {k: [] for k in queries}
  first_doc = 0
  for batch in _batches(train_docs, batch_chars):
    train_words = hash_words(batch)
    for k, (hash_G, doc_G) in ngram_hashes_upto(train_words, list(queries)).items():
      hit_G = wanted[k].contains(hash_G)
      found[k].append(np.unique(np.stack([hash_G[hit_G], (first_doc + doc_G[hit_G])
                                          .astype(np.uint64)]), axis=1))
    first_doc += len(batch)

  num_docs = len(eval_docs)
  num_grams, overlap = np.zeros(num_docs, np.int64), np.zeros(num_docs, np.int64)
  first_overlap = np.full(num_docs, np.iinfo(np.int64).max)
  for k, (hash_G, doc_G) in queries.items():
    pairs = np.unique(np.concatenate(found[k], axis=1), axis=1) if found[k] else \
        np.zeros((2, 0), np.uint64)
    hashes, train_doc_count = np.unique(pairs[0], return_counts=True)
    if max_train_docs:
      hashes = hashes[train_doc_count <= max_train_docs]
    hit_G = _HashSet(hashes).contains(hash_G)
    num_grams += np.bincount(doc_G, minlength=num_docs)
    overlap += np.bincount(doc_G[hit_G], minlength=num_docs)
    # An example's grams are consecutive and in order: a gram's start is its rank.
    start_G = np.arange(len(doc_G)) - np.searchsorted(doc_G, doc_G)
    np.minimum.at(first_overlap, doc_G[hit_G], start_G[hit_G])
  first_overlap[first_overlap == np.iinfo(np.int64).max] = -1
  return Contamination(n, eval_words.words_per_doc, num_grams, overlap, overlap > 0,
                       first_overlap)

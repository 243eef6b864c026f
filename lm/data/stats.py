"""Corpus statistics: size in several token units, unique n-grams, and effective size.

"Effective size" is what is left after removing exact and near-duplicate documents
(`lm.data.dedup`): a corpus of 100 copies of one book is big on disk and small in
what a model can learn from it. The unique n-gram counts show the same thing at a
finer grain: the fraction of distinct 13-grams drops with repeated passages even
when no whole document repeats.
"""

from collections.abc import Sequence

import numpy as np

from lm.data.dedup import deduplicate
from lm.data.ngrams import hash_words, ngram_hashes
from lm.data.ngrams import unique as ngrams_unique
from lm.data.pii import pii_counts


def corpus_stats(docs: Sequence[str], ngram_sizes: Sequence[int] = (1, 2, 3, 13),
                 tokenizer=None, **dedup_options) -> dict:
  """A JSON-ready dict of document, character, byte and word counts and dedup figures.

  `tokenizer` (an `lm.data.tokenizers` tokenizer, e.g. a run's tokenizer.json) adds
  the size in that model's tokens. `dedup_options` go to `lm.data.dedup.deduplicate`
  (threshold, shingle, num_perm, ...).
  """
  words = hash_words(docs)
  words_D = words.words_per_doc
  chars_D = np.fromiter((len(d) for d in docs), np.int64, len(docs))
  stats = {
      "documents": len(docs),
      "characters": int(chars_D.sum()),
      "utf8_bytes": sum(len(d.encode("utf-8")) for d in docs),
      "words": int(words_D.sum()),
      "empty_documents": int((words_D == 0).sum()),
      "ngrams": {},
  }
  for n in ngram_sizes:
    hash_G, _ = ngram_hashes(words, n)
    unique = len(ngrams_unique(hash_G))
    stats["ngrams"][str(n)] = {"total": len(hash_G), "unique": unique,
                               "unique_fraction": unique / len(hash_G) if len(hash_G) else 0.0}
  tokens_D = None
  if tokenizer is not None:
    tokens_D = np.fromiter((len(tokenizer.encode(d)) for d in docs), np.int64, len(docs))
    stats["tokens"] = int(tokens_D.sum())
  result = deduplicate(docs, words=words, **dedup_options)
  keep_D = result.keep
  stats["dedup"] = {
      "exact_duplicate_documents": result.num_exact_duplicates,
      "near_duplicate_documents": result.num_near_duplicates,
      "effective_documents": int(keep_D.sum()),
      "effective_characters": int(chars_D[keep_D].sum()),
      "effective_words": int(words_D[keep_D].sum()),
      "effective_fraction": float(words_D[keep_D].sum() / max(words_D.sum(), 1)),
  }
  if tokens_D is not None:
    stats["dedup"]["effective_tokens"] = int(tokens_D[keep_D].sum())
  # Matches per PII type (lm/data/pii.py), before any scrubbing.
  stats["pii"] = pii_counts(docs)
  return stats

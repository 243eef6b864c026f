"""Exact and near-duplicate detection (MinHash + LSH) and corpus statistics, against
hand-made duplicates, brute-force Jaccard over Python sets of shingles, and the
closed-form MinHash variance."""

import numpy as np
import pytest

from lm.data import dedup, ngrams
from lm.data.stats import corpus_stats
from lm.data.tokenizers import CharTokenizer
from lm.errors import UserError


def shingle_set(text: str, k: int) -> set:
  w = ngrams.words(text)
  return {tuple(w[i:i + k]) for i in range(len(w) - k + 1)} if len(w) >= k else {tuple(w)}


def components(num, pairs) -> list[int]:
  """Brute-force union-find: each item's smallest connected item."""
  label = list(range(num))

  def find(i):
    while label[i] != i:
      i = label[i]
    return i

  for a, b in pairs:
    ra, rb = find(a), find(b)
    label[max(ra, rb)] = min(ra, rb)
  return [find(i) for i in range(num)]


def test_choose_bands_by_hand():
  # r=6, b=21: 1 - (1 - 0.8^6)^21 = 0.9983; r=7, b=18: 1 - (1 - 0.8^7)^18 = 0.9856 < 0.99.
  assert dedup.choose_bands(128, 0.8) == (21, 6)
  # r=2, b=5: 1 - (1 - 0.5^2)^5 = 0.763 < 0.99; r=1, b=10: 1 - 0.5^10 = 0.999.
  assert dedup.choose_bands(10, 0.5) == (10, 1)


@pytest.mark.parametrize("jaccard", [0.1, 1 / 3, 0.6, 0.9])
def test_minhash_estimate_within_its_standard_deviation(jaccard):
  """Sets of 300 integers with a known overlap; P(equal minimum) = J for each function."""
  num_perm, size = 512, 300
  shared = int(round(2 * size * jaccard / (1 + jaccard)))  # |A∩B| / (2 size - |A∩B|) = J
  a = np.arange(size)
  b = np.arange(size - shared, 2 * size - shared)
  exact = dedup.jaccard(a.tolist(), b.tolist())
  hash_S = ngrams.splitmix64(np.concatenate([a, b]).astype(np.uint64))
  doc_S = np.repeat([0, 1], size)
  sig = dedup.minhash(hash_S, doc_S, 2, num_perm, seed=3)
  estimate = dedup.estimated_jaccard(sig, np.array([[0, 1]]))[0]
  sigma = np.sqrt(exact * (1 - exact) / num_perm)
  assert abs(estimate - exact) <= 4 * sigma + 1e-9, (estimate, exact)


def test_exact_duplicates_ignore_case_punctuation_and_spacing():
  docs = ["To be, or not to be.", "a different text", "TO BE or not  to be!", "", "",
          "to be or not to be that", "A different text"]
  words = ngrams.hash_words(docs)
  np.testing.assert_array_equal(dedup.exact_duplicates(words), [0, 1, 0, 3, 4, 5, 1])
  result = dedup.deduplicate(docs)
  np.testing.assert_array_equal(result.keep, [True, True, False, True, True, True, False])
  assert result.num_exact_duplicates == 2 and result.num_near_duplicates == 0


def _planted_corpus(seed: int):
  """Base documents, copies with 1 word changed (J ~ 0.8-0.9 over 5-shingles), copies
  with 12 words changed (J < 0.3), and exact copies, shuffled."""
  rng = np.random.default_rng(seed)
  vocab = [f"w{i}" for i in range(2000)]
  docs = [" ".join(rng.choice(vocab, size=rng.integers(60, 90))) for _ in range(40)]
  for i in range(0, 40, 2):
    words = docs[i].split()
    words[rng.integers(len(words))] = "changed"
    docs.append(" ".join(words))
  for i in range(1, 40, 4):
    words = docs[i].split()
    for j in rng.choice(len(words), 12, replace=False):
      words[j] = f"other{j}"
    docs.append(" ".join(words))
  for i in range(0, 40, 5):
    docs.append(docs[i].upper())
  order = rng.permutation(len(docs))
  return [docs[i] for i in order]


@pytest.mark.parametrize("seed", [0, 1])
def test_near_duplicates_match_brute_force_jaccard(seed):
  docs = _planted_corpus(seed)
  threshold, k = 0.7, 5
  sets = [shingle_set(d, k) for d in docs]
  exact = {(i, j): dedup.jaccard(sets[i], sets[j])
           for i in range(len(docs)) for j in range(i + 1, len(docs))}
  # Every pair is far from the threshold, so LSH (99% recall at J=0.7, more above)
  # and the estimated verification must agree with brute force exactly.
  assert all(j >= threshold + 0.1 or j <= threshold - 0.3 for j in exact.values())
  linked = [pair for pair, j in exact.items() if j >= threshold]
  expected_cluster = components(len(docs), linked)
  result = dedup.deduplicate(docs, threshold=threshold, shingle=k, num_perm=128, seed=seed)
  np.testing.assert_array_equal(result.cluster, expected_cluster)
  exact_pairs = {p for p, j in exact.items() if j == 1.0}
  assert result.num_exact_duplicates == len(exact_pairs) == 8
  assert result.num_near_duplicates == 20
  for (a, b), estimate in zip(result.pairs.tolist(), result.similarity):
    assert abs(estimate - exact[(a, b)]) <= 4 * np.sqrt(0.25 / 128)


def test_chain_of_near_duplicates_is_one_cluster():
  rng = np.random.default_rng(5)
  base = [f"t{i}" for i in rng.permutation(200)]
  a = " ".join(base)
  b = " ".join(base[:100] + ["x"] + base[101:])  # J(a, b) = 191/201
  c = " ".join(base[:100] + ["x"] + base[101:150] + ["y"] + base[151:])  # J(b, c) = 191/201
  result = dedup.deduplicate([a, "unrelated words here and there", b, c], threshold=0.9,
                             shingle=5)
  assert dedup.jaccard(shingle_set(a, 5), shingle_set(c, 5)) < 0.91
  np.testing.assert_array_equal(result.cluster, [0, 1, 0, 0])
  np.testing.assert_array_equal(result.keep, [True, True, False, False])


def test_short_documents_are_one_shingle():
  # Fewer words than the shingle length: near-duplicate only if the word sequence is equal.
  result = dedup.deduplicate(["red fish", "Red fish!", "blue fish", "red"], shingle=5)
  np.testing.assert_array_equal(result.keep, [True, False, True, True])


def test_bad_arguments():
  with pytest.raises(UserError, match="threshold"):
    dedup.deduplicate(["a"], threshold=0.0)
  with pytest.raises(UserError, match="bands"):
    dedup.deduplicate(["a"], num_perm=16, bands=17)
  with pytest.raises(UserError, match="shingle"):
    dedup.deduplicate(["a"], shingle=0)


def test_corpus_stats_brute_force():
  docs = _planted_corpus(2) + ["", "Short one.", "short ONE"]
  char_tokenizer = CharTokenizer.build("".join(docs))  # one token per character
  stats = corpus_stats(docs, ngram_sizes=(1, 2, 13), tokenizer=char_tokenizer, threshold=0.7,
                       shingle=5)
  all_words = [ngrams.words(d) for d in docs]
  assert stats["documents"] == len(docs)
  assert stats["characters"] == sum(map(len, docs))
  assert stats["words"] == sum(map(len, all_words))
  assert stats["empty_documents"] == 1
  for n in (1, 2, 13):
    grams = [tuple(w[i:i + n]) for w in all_words for i in range(len(w) - n + 1)]
    assert stats["ngrams"][str(n)]["total"] == len(grams)
    assert stats["ngrams"][str(n)]["unique"] == len(set(grams))
  # Brute-force effective size: keep the first document of each J >= 0.7 cluster.
  sets = [shingle_set(d, 5) if ngrams.words(d) else set() for d in docs]
  linked = [(i, j) for i in range(len(docs)) for j in range(i + 1, len(docs))
            if sets[i] and sets[j] and dedup.jaccard(sets[i], sets[j]) >= 0.7]
  cluster = components(len(docs), linked)
  kept = [i for i in range(len(docs)) if cluster[i] == i]
  assert stats["dedup"]["effective_documents"] == len(kept)
  assert stats["dedup"]["effective_words"] == sum(len(all_words[i]) for i in kept)
  assert stats["tokens"] == stats["characters"]
  assert stats["dedup"]["effective_tokens"] == sum(len(docs[i]) for i in kept)
  assert stats["dedup"]["exact_duplicate_documents"] == 9  # 8 planted + "short one"

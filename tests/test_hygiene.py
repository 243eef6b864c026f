"""Word/n-gram hashing and the GPT-3 contamination check, against hand-made overlaps and
a brute-force reference built from Python tuples of words."""

import json

import numpy as np
import pytest

from lm.data import ngrams
from lm.data.contamination import check_contamination, gpt3_ngram_length
from lm.data.documents import read_documents, write_documents
from lm.errors import UserError

# Thirteen words of a made-up text, and the same words as they might appear elsewhere.
SPAN = "the quick brown fox jumps over the lazy dog while tired owls watch"
SPAN_RECAST = "The quick, brown fox -- jumps over THE lazy dog; while tired owls watch!"


def brute_ngrams(text: str, n: int) -> list[tuple[str, ...]]:
  w = ngrams.words(text)
  return [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]


def random_docs(rng, num_docs, vocab, max_words):
  """Documents over a tiny vocabulary, so that n-grams repeat within and across them."""
  spellings = {w: [w, w.upper(), w.capitalize() + ",", w + "!", f"({w})"] for w in vocab}
  docs = []
  for _ in range(num_docs):
    picks = rng.choice(vocab, size=rng.integers(0, max_words + 1))
    docs.append(" ".join(spellings[w][rng.integers(5)] for w in picks))
  return docs


# --------------------------------------------------------------------------- normalisation


def test_normalize_by_hand():
  assert ngrams.normalize("Don't STOP,believin'!\n") == b"dont stop believin  "
  assert ngrams.words("Don't STOP,believin'!\n") == ["dont", "stop", "believin"]
  assert ngrams.words("  \t\n") == []
  assert ngrams.words("Café’s naïve") == ["cafés", "naïve"]  # right single quote dropped
  assert ngrams.words(SPAN_RECAST) == SPAN.split()


@pytest.mark.parametrize("chunk_bytes", [7, 1 << 23])  # tiny chunks cut documents into pieces
def test_hashes_equal_exactly_when_words_equal(chunk_bytes):
  rng = np.random.default_rng(0)
  docs = random_docs(rng, 40, ["a", "b", "ab", "ba", "don't", "dont", "é"], 12)
  hashed = ngrams.hash_words(docs, chunk_bytes=chunk_bytes)
  assert hashed.num_docs == len(docs)
  for n in (1, 2, 3, 5):
    expected = [(g, d) for d, doc in enumerate(docs) for g in brute_ngrams(doc, n)]
    hash_G, doc_G = ngrams.ngram_hashes(hashed, n)
    assert len(hash_G) == len(expected)  # and none crosses a document boundary
    np.testing.assert_array_equal(doc_G, [d for _, d in expected])
    gram_of_hash, hash_of_gram = {}, {}
    for h, (gram, _) in zip(hash_G.tolist(), expected):
      assert gram_of_hash.setdefault(h, gram) == gram, "two n-grams share a hash"
      assert hash_of_gram.setdefault(gram, h) == h, "one n-gram got two hashes"


def test_ngrams_do_not_cross_documents():
  hashed = ngrams.hash_words(["a b", "", "c d"])
  np.testing.assert_array_equal(hashed.words_per_doc, [2, 0, 2])
  hash_G, doc_G = ngrams.ngram_hashes(hashed, 2)
  np.testing.assert_array_equal(doc_G, [0, 2])
  assert len(ngrams.ngram_hashes(hashed, 3)[0]) == 0


def test_order_matters_and_lengths_differ():
  hashed = ngrams.hash_words(["x y", "y x", "x y"])
  hash_G, _ = ngrams.ngram_hashes(hashed, 2)
  assert hash_G[0] != hash_G[1] and hash_G[0] == hash_G[2]
  # A 1-gram never equals a 2-gram (the length is mixed in).
  assert not set(ngrams.ngram_hashes(hashed, 1)[0].tolist()) & set(hash_G.tolist())


# --------------------------------------------------------------------------- contamination


def test_hand_made_overlaps():
  train = [f"It was said that {SPAN_RECAST} and then nothing else happened at all.",
           "Once upon a time there were five small hedgehogs living under a bridge."]
  evaluation = [
      SPAN,  # exactly 13 words, all in train (recased, repunctuated): dirty, 1 of 1 grams
      "Before " + SPAN + " again.",  # 15 words, 13 of them a train span: 1 of 3 grams
      # 12 words of the span plus others: no 13-gram in common: clean
      "the quick brown fox jumps over the lazy dog while tired owls sleep soundly now",
      "five small hedgehogs",  # shorter than 13 words, appears whole: dirty
      "five hedgehogs",  # shorter, not contiguous in train: clean
      "",  # no words: nothing to check, clean
  ]
  result = check_contamination(train, evaluation, n=13)
  np.testing.assert_array_equal(result.num_words, [13, 15, 15, 3, 2, 0])
  np.testing.assert_array_equal(result.num_grams, [1, 3, 3, 1, 1, 0])
  np.testing.assert_array_equal(result.overlap, [1, 1, 0, 1, 0, 0])
  np.testing.assert_array_equal(result.dirty, [True, True, False, True, False, False])
  assert result.clean_indices == [2, 4, 5]
  np.testing.assert_array_equal(result.first_overlap, [0, 1, -1, 0, -1, -1])
  assert result.overlap_text(evaluation[1], 1) == SPAN
  assert result.overlap_text(evaluation[3], 3) == "five small hedgehogs"
  assert result.overlap_text(evaluation[2], 2) == ""
  assert result.dirty_fraction == pytest.approx(3 / 6)
  # With 8-grams the 12-word overlap of example 2 counts: 12 - 8 + 1 = 5 of its 8 grams.
  result8 = check_contamination(train, evaluation, n=8)
  assert result8.overlap[2] == 5 and result8.num_grams[2] == 8 and result8.dirty[2]


def test_frequent_ngrams_can_be_ignored():
  """GPT-3 ignored n-grams found in more than 10 training documents (boilerplate)."""
  boiler = "all rights reserved by the authors"
  train = [f"doc {i}: {boiler}" for i in range(4)] + ["a rare phrase indeed"]
  evaluation = [boiler, "a rare phrase indeed"]
  np.testing.assert_array_equal(check_contamination(train, evaluation, n=3).dirty, [True, True])
  result = check_contamination(train, evaluation, n=3, max_train_docs=3)
  np.testing.assert_array_equal(result.dirty, [False, True])
  np.testing.assert_array_equal(result.overlap, [0, 2])
  assert check_contamination(train, evaluation, n=3, max_train_docs=4).dirty[0]


@pytest.mark.parametrize("n,max_train_docs", [(3, 0), (4, 2), (1, 0)])
def test_matches_brute_force(n, max_train_docs):
  rng = np.random.default_rng(n)
  vocab = ["a", "b", "c", "d", "e", "f"]
  train = random_docs(rng, 60, vocab, 20)
  evaluation = random_docs(rng, 40, vocab, 8)
  train_docs_of = {}
  for d, doc in enumerate(train):
    for k in range(1, n + 1):
      for gram in brute_ngrams(doc, k):
        train_docs_of.setdefault(gram, set()).add(d)
  counts = lambda gram: len(train_docs_of.get(gram, ()))
  allowed = lambda gram: counts(gram) > 0 and (not max_train_docs or counts(gram) <= max_train_docs)
  # Small batches: the training corpus is streamed through several of them.
  result = check_contamination(iter(train), evaluation, n=n, max_train_docs=max_train_docs,
                               batch_chars=100)
  for i, doc in enumerate(evaluation):
    w = ngrams.words(doc)
    grams = brute_ngrams(doc, n) if len(w) >= n else ([tuple(w)] if w else [])
    assert result.num_grams[i] == len(grams), i
    assert result.overlap[i] == sum(map(allowed, grams)), i
    first = next((j for j, g in enumerate(grams) if allowed(g)), -1)
    assert result.first_overlap[i] == first, i
  assert 0 < result.dirty.sum() < len(evaluation)  # the case is not trivial


def test_gpt3_ngram_length():
  # 5th percentile of 1..100 words is 5.95 -> 5 -> clipped up to 8; of 20 x 10 words: 10.
  assert gpt3_ngram_length([" ".join(["w"] * k) for k in range(1, 101)]) == 8
  assert gpt3_ngram_length(["one two three four five six seven eight nine ten"] * 20) == 10
  assert gpt3_ngram_length([" ".join(["w"] * 40)] * 3) == 13


def test_bad_arguments():
  with pytest.raises(UserError, match="n-gram length"):
    check_contamination(["a"], ["a"], n=0)
  with pytest.raises(UserError, match="max_train_docs"):
    check_contamination(["a"], ["a"], max_train_docs=-1)


# --------------------------------------------------------------------------- documents


def test_documents_round_trip_keeps_records(tmp_path):
  path = tmp_path / "eval.jsonl"
  rows = [{"id": 1, "text": "first"}, {"id": 2, "text": "second", "label": "x"}, {"id": 3,
                                                                                   "text": "3"}]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
  docs = read_documents(str(path), "jsonl")
  assert docs.texts == ["first", "second", "3"]
  write_documents(docs, [0, 2], str(tmp_path / "clean.jsonl"))
  lines = (tmp_path / "clean.jsonl").read_text().splitlines()
  assert [json.loads(line) for line in lines] == [rows[0], rows[2]]


def test_document_formats(tmp_path):
  path = tmp_path / "c.txt"
  path.write_text("A: one\ntwo\n\n\n  B: three\n \nC\n")
  assert read_documents(str(path), "paragraphs").texts == ["A: one\ntwo", "  B: three", "C"]
  assert read_documents(str(path), "lines").texts == ["A: one", "two", "", "", "  B: three",
                                                      " ", "C"]
  assert read_documents(str(path), "file").texts == [path.read_text()]
  docs = read_documents(str(path), "paragraphs")
  write_documents(docs, [0, 2], str(tmp_path / "out.txt"))
  assert (tmp_path / "out.txt").read_text() == "A: one\ntwo\n\nC\n"


def test_document_errors(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"text": "ok"}\n{"text": 3}\n')
  with pytest.raises(UserError, match=r"bad.jsonl:2 has no string field 'text'"):
    read_documents(str(path), "jsonl")
  path.write_text('{"text": "ok"}\n{oops\n')
  with pytest.raises(UserError, match=r"bad.jsonl:2 is not valid JSON"):
    read_documents(str(path), "jsonl")
  with pytest.raises(UserError, match="unknown document format 'csv'"):
    read_documents(str(path), "csv")
  with pytest.raises(UserError, match="does not exist"):
    write_documents(read_documents(str(path), "lines"), [0], str(tmp_path / "no" / "out.txt"))

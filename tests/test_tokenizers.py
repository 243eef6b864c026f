"""Tokenizers: hand-computed ids, lossless round trips, save/load and one-line user errors."""

import json
import os
import time

import numpy as np
import pytest

from lm.data.tokenizers import (
  BPETokenizer,
  CharTokenizer,
  WordTokenizer,
  build_tokenizer,
  load_tokenizer,
)
from lm.errors import UserError

CORPUS = os.path.join(os.path.dirname(__file__), os.pardir, "data", "tinyshakespeare.txt")

# Accents, emoji (4-byte UTF-8), CJK, tabs, CRLF, runs of blank lines and spaces.
AWKWARD = "héllo wörld 🌍🚀\n\n\nnaïve  café\tÆsir 日本語\r\nend  \n x'y'll  \n"


@pytest.fixture(scope="module")
def shakespeare() -> str:
  with open(CORPUS, encoding="utf-8") as f:
    return f.read()


@pytest.fixture(scope="module")
def bpe(shakespeare) -> BPETokenizer:
  return build_tokenizer("bpe", shakespeare[:100_000], vocab_size=300)


# --- char ---

def test_char_vocab_and_ids_by_hand():
  tok = build_tokenizer("char", "hello world")
  assert isinstance(tok, CharTokenizer) and tok.kind == "char"
  assert tok.chars == [" ", "d", "e", "h", "l", "o", "r", "w"]
  assert tok.vocab_size == 8
  ids = tok.encode("hello world")
  assert ids.dtype == np.int32 and ids.ndim == 1
  assert ids.tolist() == [3, 2, 4, 4, 5, 0, 7, 5, 6, 4, 1]
  assert tok.decode([7, 5, 6, 4, 1]) == "world"
  assert tok.decode(np.array([3, 2], dtype=np.int64)) == "he"


def test_char_non_ascii_vocab_is_code_point_order():
  tok = build_tokenizer("char", "b€a🌍é")
  assert tok.chars == ["a", "b", "é", "€", "🌍"]
  assert tok.encode("🌍éa").tolist() == [4, 2, 0]
  assert tok.decode(tok.encode("€🌍b")) == "€🌍b"


def test_char_vocab_size_is_ignored():
  assert build_tokenizer("char", "abc", vocab_size=7).vocab_size == 3


def test_char_unknown_character_error_names_it():
  tok = build_tokenizer("char", "hello world")
  with pytest.raises(UserError) as e:
    tok.encode("hello é")
  msg = str(e.value)
  assert "'é'" in msg and "U+00E9" in msg and "8 characters" in msg and "\n" not in msg


def test_char_full_corpus_is_fast_and_lossless(shakespeare):
  tok = build_tokenizer("char", shakespeare)
  assert tok.vocab_size == len(set(shakespeare))
  start = time.perf_counter()
  ids = tok.encode(shakespeare)
  assert time.perf_counter() - start < 1.0
  assert len(ids) == len(shakespeare)
  assert tok.decode(ids) == shakespeare


# --- word ---

def test_word_ids_by_hand():
  tok = build_tokenizer("word", "the cat sat on the mat\nthe end")
  assert isinstance(tok, WordTokenizer) and tok.kind == "word"
  # "the" x3 first; the rest appear once and keep their order of first appearance.
  assert tok.words == ["<unk>", "the", "cat", "sat", "on", "mat", "end"]
  assert tok.encode("the dog  sat\ton the\nmat").tolist() == [1, 0, 3, 4, 1, 5]
  assert tok.decode([1, 0, 2]) == "the <unk> cat"


def test_word_vocab_limit_keeps_most_frequent():
  text = "b a c b a d a"  # a x3, b x2, c and d once: the c/d tie goes to c, seen first
  assert build_tokenizer("word", text).words == ["<unk>", "a", "b", "c", "d"]
  tok = build_tokenizer("word", text, vocab_size=4)
  assert tok.vocab_size == 4 and tok.words == ["<unk>", "a", "b", "c"]
  assert tok.encode("d c b a").tolist() == [0, 3, 2, 1]


def test_word_ties_by_first_appearance():
  assert build_tokenizer("word", "z y x y z x").words == ["<unk>", "z", "y", "x"]


# --- bpe ---

def test_bpe_vocab_size_as_asked(bpe):
  assert isinstance(bpe, BPETokenizer) and bpe.kind == "bpe"
  assert bpe.vocab_size == 300


def test_bpe_tiny_corpus_stops_below_asked_size():
  # Past the 256 bytes HF adds one token per merge, and "hello world" has few pairs to merge.
  tok = build_tokenizer("bpe", "hello world", vocab_size=1000)
  assert 256 < tok.vocab_size < 1000


def test_bpe_merges_a_frequent_pair():
  tok = build_tokenizer("bpe", "abab" * 200, vocab_size=260)
  assert len(tok.encode("abab" * 8)) < len(("abab" * 8).encode("utf-8"))


@pytest.mark.parametrize("text", [AWKWARD, "", " ", "\n", "🌍", "  leading and trailing  ",
                                  "one\ntwo\nthree\n\nfour", "\x00\x7f\u200b\ufeff"])
def test_bpe_round_trips_any_text(bpe, text):
  ids = bpe.encode(text)
  assert ids.dtype == np.int32 and ids.ndim == 1
  assert bpe.decode(ids) == text


def test_bpe_chunked_encode_matches_whole_string(bpe, shakespeare):
  # encode() cuts long text at newlines for speed; the ids must equal HF's on the whole string.
  text = shakespeare[200_000:230_000] + AWKWARD + "a\nb\n\nc \nd\n e"
  assert bpe.encode(text).tolist() == bpe.hf.encode(text).ids


def test_bpe_round_trips_corpus(bpe, shakespeare):
  text = shakespeare[:50_000]
  ids = bpe.encode(text)
  assert len(ids) < len(text)  # merges learnt from this corpus compress it
  assert bpe.decode(ids) == text


# --- save / load ---

@pytest.mark.parametrize("kind,vocab_size", [("char", 0), ("word", 0), ("word", 5), ("bpe", 280)])
def test_save_load_round_trip(tmp_path, kind, vocab_size):
  text = "the quick brown fox jumps over the lazy dog\nthe dog sleeps 🌍\n" * 5
  tok = build_tokenizer(kind, text, vocab_size)
  path = str(tmp_path / "sub" / "tok.json")
  tok.save(path)
  assert os.listdir(tmp_path / "sub") == ["tok.json"]
  loaded = load_tokenizer(path)
  assert type(loaded) is type(tok) and loaded.kind == kind == tok.kind
  assert loaded.vocab_size == tok.vocab_size
  probe = text if kind == "char" else text + " a fox unseen words"
  np.testing.assert_array_equal(loaded.encode(probe), tok.encode(probe))
  assert loaded.decode(tok.encode(probe)) == tok.decode(tok.encode(probe))


def test_saved_json_layout(tmp_path):
  build_tokenizer("char", "ba").save(str(tmp_path / "c.json"))
  build_tokenizer("word", "x y x").save(str(tmp_path / "w.json"))
  assert json.loads((tmp_path / "c.json").read_text()) == {"kind": "char", "chars": ["a", "b"]}
  assert json.loads((tmp_path / "w.json").read_text()) == {"kind": "word",
                                                           "words": ["<unk>", "x", "y"]}


# --- errors ---

def _one_line_error(fn, *args, **kwargs) -> str:
  with pytest.raises(UserError) as e:
    fn(*args, **kwargs)
  msg = str(e.value)
  assert msg and "\n" not in msg
  return msg


def test_unknown_kind_lists_valid_kinds():
  msg = _one_line_error(build_tokenizer, "sentencepiece", "abc")
  assert "sentencepiece" in msg and all(k in msg for k in ("char", "word", "bpe"))


@pytest.mark.parametrize("vocab_size", [0, 100, 256])
def test_bpe_needs_a_big_enough_vocab_size(vocab_size):
  assert "vocab_size" in _one_line_error(build_tokenizer, "bpe", "abc", vocab_size)


def test_bad_word_vocab_size():
  _one_line_error(build_tokenizer, "word", "a b", -1)


def test_empty_text():
  for kind, vocab_size in [("char", 0), ("word", 0), ("bpe", 300)]:
    _one_line_error(build_tokenizer, kind, "", vocab_size)
  _one_line_error(build_tokenizer, "word", " \n\t ")


def test_decode_rejects_out_of_range_ids():
  tok = build_tokenizer("char", "abc")
  assert "3" in _one_line_error(tok.decode, [0, 3])
  _one_line_error(tok.decode, [-1])


def test_missing_tokenizer_file(tmp_path):
  path = str(tmp_path / "nope.json")
  assert path in _one_line_error(load_tokenizer, path)
  _one_line_error(load_tokenizer, str(tmp_path))  # a directory is not a tokenizer file


@pytest.mark.parametrize("content", [
    b"{not json", b"[1, 2]", b'{"kind": "morse"}', b'{"kind": ["char"]}',
    b'{"kind": "char"}',
    b'{"kind": "char", "chars": ["b", "a"]}', b'{"kind": "char", "chars": ["ab"]}',
    b'{"kind": "word", "words": ["a", "b"]}', b'{"kind": "bpe", "hf": {"model": 3}}',
    b"\xff\xfe"])
def test_malformed_tokenizer_file(tmp_path, content):
  path = tmp_path / "tok.json"
  path.write_bytes(content)
  assert str(path) in _one_line_error(load_tokenizer, str(path))

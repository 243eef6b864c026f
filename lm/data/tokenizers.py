"""Character, word and byte-level BPE tokenizers, each saved as one JSON file.

All three share one interface: `kind`, `vocab_size`, `encode(text) -> int32 array`,
`decode(ids) -> str` and `save(path)`; `load_tokenizer` reads back any of them.
"""

import collections
import json
import os
import re
from collections.abc import Sequence

import numpy as np
import tokenizers as hf

from lm.errors import UserError

KINDS = ("char", "word", "bpe")
UNK = "<unk>"
# 256 byte tokens plus at least one merge; anything smaller is not BPE.
MIN_BPE_VOCAB = 257


def _as_ids(ids: Sequence[int] | np.ndarray, vocab_size: int) -> np.ndarray:
  """Ids as a 1-D int64 array, refusing values that would silently wrap or index past the end."""
  arr = np.asarray(ids, dtype=np.int64).reshape(-1)
  if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
    bad = arr[(arr < 0) | (arr >= vocab_size)][0]
    raise UserError(f"token id {bad} is outside the vocabulary (size {vocab_size})")
  return arr


class CharTokenizer:
  """One token per Unicode character; ids follow code-point order."""

  kind = "char"

  def __init__(self, chars: Sequence[str]):
    self.chars = list(chars)
    if not self.chars or not all(isinstance(c, str) and len(c) == 1 for c in self.chars):
      raise UserError("char vocabulary must be a non-empty list of single characters")
    if any(a >= b for a, b in zip(self.chars, self.chars[1:])):
      raise UserError("char vocabulary must be sorted and without duplicates")
    # Sorted code points make encode a vectorised searchsorted and decode a gather.
    self._points = np.array([ord(c) for c in self.chars], dtype=np.uint32)

  @classmethod
  def build(cls, text: str) -> "CharTokenizer":
    if not text:
      raise UserError("cannot build a char tokenizer from empty text")
    return cls(sorted(set(text)))

  @property
  def vocab_size(self) -> int:
    return len(self.chars)

  def encode(self, text: str) -> np.ndarray:
    # surrogatepass: a lone surrogate is still one code point and just fails the lookup.
    points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    ids = np.searchsorted(self._points, points)
    found = self._points[np.minimum(ids, len(self._points) - 1)] == points
    if not found.all():
      c = chr(points[np.argmin(found)])
      raise UserError(f"character {c!r} (U+{ord(c):04X}) is not in the char vocabulary of this "
                      f"model ({self.vocab_size} characters)")
    return ids.astype(np.int32)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    points = self._points[_as_ids(ids, self.vocab_size)].astype("<u4")
    return points.tobytes().decode("utf-32-le", "surrogatepass")

  def save(self, path: str) -> None:
    _write_json(path, {"kind": self.kind, "chars": self.chars})


class WordTokenizer:
  """Whitespace-separated words, with `<unk>` (id 0) for words outside the vocabulary.

  Words are ordered by frequency in the build text, ties by first appearance, so a
  vocabulary limit keeps the most frequent words deterministically. Decoding joins with
  single spaces: the original whitespace is not recoverable.
  """

  kind = "word"

  def __init__(self, words: Sequence[str]):
    self.words = list(words)
    if not all(isinstance(w, str) for w in self.words):
      raise UserError("word vocabulary must be a list of strings")
    if not self.words or self.words[0] != UNK:
      raise UserError(f"word vocabulary must start with {UNK!r}")
    self._index = {w: i for i, w in enumerate(self.words)}
    if len(self._index) != len(self.words):
      raise UserError("word vocabulary has duplicate words")

  @classmethod
  def build(cls, text: str, vocab_size: int = 0) -> "WordTokenizer":
    """`vocab_size` counts `<unk>` too; 0 keeps every word of `text`."""
    if vocab_size < 0 or vocab_size == 1:
      raise UserError(f"word vocab_size must be 0 (no limit) or at least 2, got {vocab_size}")
    counts = collections.Counter(text.split())
    counts.pop(UNK, None)  # the literal word "<unk>" already has id 0
    if not counts:
      raise UserError("cannot build a word tokenizer from text without words")
    # most_common keeps first-appearance order among equal counts.
    words = [w for w, _ in counts.most_common(vocab_size - 1 if vocab_size else None)]
    return cls([UNK] + words)

  @property
  def vocab_size(self) -> int:
    return len(self.words)

  def encode(self, text: str) -> np.ndarray:
    get = self._index.get
    words = text.split()
    return np.fromiter((get(w, 0) for w in words), dtype=np.int32, count=len(words))

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    return " ".join(self.words[i] for i in _as_ids(ids, self.vocab_size).tolist())

  def save(self, path: str) -> None:
    _write_json(path, {"kind": self.kind, "words": self.words})


# Byte-level pre-tokens never span a lone "\n" between two non-space characters, so
# cutting the text there and encoding the pieces in parallel gives the same ids.
_BPE_CUT = re.compile(r"(?<=\S\n)(?=\S)")


class BPETokenizer:
  """Byte-level BPE (GPT-2 style) trained with Hugging Face `tokenizers`; lossless on any text."""

  kind = "bpe"

  def __init__(self, hf_tokenizer: hf.Tokenizer):
    self.hf = hf_tokenizer

  @classmethod
  def build(cls, text: str, vocab_size: int) -> "BPETokenizer":
    if vocab_size < MIN_BPE_VOCAB:
      raise UserError(f"bpe needs vocab_size >= {MIN_BPE_VOCAB} (256 bytes plus merges), "
                      f"got {vocab_size}")
    if not text:
      raise UserError("cannot build a bpe tokenizer from empty text")
    tok = hf.Tokenizer(hf.models.BPE())
    tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = hf.decoders.ByteLevel()
    # All 256 bytes up front, so text unseen in training still encodes. On a small
    # corpus the trainer can run out of pairs and stop below vocab_size.
    trainer = hf.trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                     initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer)
    return cls(tok)

  @property
  def vocab_size(self) -> int:
    return self.hf.get_vocab_size()

  def encode(self, text: str) -> np.ndarray:
    pieces = _BPE_CUT.split(text)
    if len(pieces) == 1:
      return np.array(self.hf.encode(text).ids, dtype=np.int32)
    encs = self.hf.encode_batch(pieces)
    return np.concatenate([np.array(e.ids, dtype=np.int32) for e in encs])

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    return self.hf.decode(_as_ids(ids, self.vocab_size).tolist())

  def save(self, path: str) -> None:
    _write_json(path, {"kind": self.kind, "hf": json.loads(self.hf.to_str())})


Tokenizer = CharTokenizer | WordTokenizer | BPETokenizer


def build_tokenizer(kind: str, text: str, vocab_size: int = 0) -> Tokenizer:
  """Trains a tokenizer of `kind` on `text`; `vocab_size` is ignored for char."""
  if kind == "char":
    return CharTokenizer.build(text)
  if kind == "word":
    return WordTokenizer.build(text, vocab_size)
  if kind == "bpe":
    return BPETokenizer.build(text, vocab_size)
  raise UserError(f"unknown tokenizer kind {kind!r}; valid kinds: {', '.join(KINDS)}")


def load_tokenizer(path: str) -> Tokenizer:
  """Reads a tokenizer written by `save`."""
  if not os.path.isfile(path):
    raise UserError(f"tokenizer file not found: {path}")
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(f"tokenizer file {path} is not valid JSON: {e}") from None
  kind = data.get("kind") if isinstance(data, dict) else None
  key = {"char": "chars", "word": "words", "bpe": "hf"}.get(kind) if isinstance(kind, str) else None
  if key is None:
    raise UserError(f"tokenizer file {path} has kind {kind!r}; valid kinds: {', '.join(KINDS)}")
  if key not in data:
    raise UserError(f"tokenizer file {path} of kind {kind!r} lacks the {key!r} field")
  try:
    if kind == "char":
      return CharTokenizer(data["chars"])
    if kind == "word":
      return WordTokenizer(data["words"])
    spec = data["hf"]  # accept the HF JSON nested as an object or as a string
    return BPETokenizer(hf.Tokenizer.from_str(spec if isinstance(spec, str) else json.dumps(spec)))
  except UserError as e:
    raise UserError(f"tokenizer file {path}: {e}") from None
  except Exception as e:  # the HF loader raises a bare Exception on a bad tokenizer
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise UserError(f"tokenizer file {path} has a malformed {kind} tokenizer: {msg}") from None


def _write_json(path: str, data: dict) -> None:
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(data, f, ensure_ascii=False)

"""Data pieces shared by the encoder-decoder tasks (span corruption, denoising, seq2seq).

- `SpecialTokenizer`: a char/word/BPE tokenizer with special tokens in front of its
  vocabulary: 0 `<pad>` (also the decoder start, as in T5), 1 `</s>` (EOS), 2 `<mask>`
  (BART), then T5's sentinels `<extra_id_0>`, `<extra_id_1>`, ...; base token i has id
  `num_specials + i`. Saved as one JSON file holding the base tokenizer's JSON.
- `prepare_text`: read, split and tokenize the corpus with it (built once, then
  reloaded from the workdir so a resumed run keeps its ids).
- `pad_rows`: ragged id lists to one zero-padded array.
"""

import json
import os
import tempfile

import numpy as np

from lm import workdir as workdir_lib
from lm.data.corpus import read_text, split_text
from lm.data.tokenizers import build_tokenizer, load_tokenizer
from lm.errors import UserError

PAD, EOS, MASK = "<pad>", "</s>", "<mask>"
PAD_ID, EOS_ID, MASK_ID = 0, 1, 2
KIND = "special"


def sentinel(k: int) -> str:
  return f"<extra_id_{k}>"


class SpecialTokenizer:
  kind = KIND

  def __init__(self, base, num_sentinels: int = 0):
    self.base = base
    self.specials = [PAD, EOS, MASK] + [sentinel(k) for k in range(num_sentinels)]
    self.offset = len(self.specials)

  @property
  def num_sentinels(self) -> int:
    return self.offset - 3

  @property
  def vocab_size(self) -> int:
    return self.offset + self.base.vocab_size

  def sentinel_id(self, k: int) -> int:
    if not 0 <= k < self.num_sentinels:
      raise ValueError(f"sentinel {k} outside 0..{self.num_sentinels - 1}")
    return 3 + k

  def encode(self, text: str) -> np.ndarray:
    """Plain text only (special tokens are inserted as ids, never parsed from text)."""
    return (self.base.encode(text) + self.offset).astype(np.int32)

  def decode(self, ids) -> str:
    """Special tokens are written by name; runs of base tokens decode together."""
    out, run = [], []
    for i in (int(i) for i in np.asarray(ids).reshape(-1)):
      if i < self.offset:
        if run:
          out.append(self.base.decode(run))
          run = []
        out.append(self.specials[i] if i >= 0 else "?")
      else:
        run.append(i - self.offset)
    if run:
      out.append(self.base.decode(run))
    return "".join(out)

  def save(self, path: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
      base_path = os.path.join(tmp, "base.json")
      self.base.save(base_path)
      with open(base_path, encoding="utf-8") as f:
        base = json.load(f)
    with open(path, "w", encoding="utf-8") as f:
      json.dump({"kind": KIND, "num_sentinels": self.num_sentinels, "base": base}, f,
                ensure_ascii=False)


def load_special_tokenizer(path: str) -> SpecialTokenizer:
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(f"tokenizer file {path} cannot be read: {e}") from None
  if not isinstance(data, dict) or data.get("kind") != KIND or "base" not in data:
    raise UserError(f"tokenizer file {path} is not a {KIND!r} tokenizer (kind "
                    f"{data.get('kind') if isinstance(data, dict) else None!r}); was this "
                    f"workdir trained by another task?")
  with tempfile.TemporaryDirectory() as tmp:
    base_path = os.path.join(tmp, "base.json")
    with open(base_path, "w", encoding="utf-8") as f:
      json.dump(data["base"], f, ensure_ascii=False)
    base = load_tokenizer(base_path)
  return SpecialTokenizer(base, int(data.get("num_sentinels", 0)))


def prepare_text(config, workdir: str, num_sentinels: int = 0):
  """(tokenizer, train_text, val_text); the tokenizer is the workdir's if it has one."""
  text = read_text(config.data.path)
  train_text, val_text = split_text(text, config.data.val_fraction)
  path = os.path.join(workdir, workdir_lib.TOKENIZER)
  if os.path.exists(path):
    tokenizer = load_special_tokenizer(path)
    if tokenizer.num_sentinels != num_sentinels:
      raise UserError(f"the workdir's tokenizer has {tokenizer.num_sentinels} sentinels, this "
                      f"config needs {num_sentinels}: use a fresh workdir")
  else:
    source = text if config.data.tokenizer == "char" else train_text
    tokenizer = SpecialTokenizer(build_tokenizer(config.data.tokenizer, source,
                                                 config.data.vocab_size), num_sentinels)
  return tokenizer, train_text, val_text


def pad_rows(rows, length: int) -> np.ndarray:
  """(len(rows), length) int32, each row's ids then PAD_ID; a row longer than `length` is
  an error (the caller sized it)."""
  out = np.full((len(rows), length), PAD_ID, np.int32)
  for i, row in enumerate(rows):
    if len(row) > length:
      raise ValueError(f"row of {len(row)} ids does not fit in {length}")
    out[i, :len(row)] = row
  return out


def eval_batches(inputs: np.ndarray, targets: np.ndarray, batch_size: int) -> list[dict]:
  """Fixed batches; the last is filled with all-padding rows (weight 0 in the loss)."""
  n = len(inputs)
  num = -(-n // batch_size)
  pad = num * batch_size - n
  inputs = np.concatenate([inputs, np.zeros((pad, inputs.shape[1]), np.int32)])
  targets = np.concatenate([targets, np.zeros((pad, targets.shape[1]), np.int32)])
  return [{"inputs": inputs[i * batch_size:(i + 1) * batch_size],
           "targets": targets[i * batch_size:(i + 1) * batch_size]} for i in range(num)]

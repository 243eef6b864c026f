"""Reading a text corpus and splitting it into train and validation parts."""

import os

from lm.errors import UserError


def read_text(path: str) -> str:
  """Reads a UTF-8 text file, with one-line errors for the usual ways this fails."""
  if not os.path.exists(path):
    raise UserError(f"corpus file not found: {path}")
  if os.path.isdir(path):
    raise UserError(f"corpus path is a directory, not a text file: {path}")
  with open(path, "rb") as f:
    raw = f.read()
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise UserError(f"corpus {path} is not valid UTF-8: byte 0x{raw[e.start]:02x} at "
                    f"offset {e.start}") from None
  if not text.strip():
    raise UserError(f"corpus {path} is empty")
  if "\x00" in text:
    raise UserError(f"corpus {path} looks binary: it contains NUL bytes (offset "
                    f"{text.index(chr(0))})")
  return text


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
  """The last `val_fraction` of the characters is validation (as in nanoGPT).

  Splitting text, not tokens, lets word and BPE tokenizers be trained on train only.
  """
  n_val = int(round(len(text) * val_fraction))
  return text[:len(text) - n_val], text[len(text) - n_val:]

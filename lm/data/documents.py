"""A corpus as a list of documents, read from and written back to one file.

The hygiene tools work per document (an eval example, a paragraph, a web page).
Formats:
  lines       one document per line (an eval set of one example per line)
  paragraphs  documents separated by blank lines (tiny Shakespeare's speeches)
  jsonl       one JSON object per line; the document is its `text_key` field
  file        the whole file is one document
Writing a subset keeps each kept document exactly as read (for jsonl: the whole
original line, every other field included), so a cleaned corpus differs from the
input only by the documents removed.
"""

import dataclasses
import json
import os
import re

from lm.data.corpus import read_text
from lm.errors import UserError

FORMATS = ("lines", "paragraphs", "jsonl", "file")
_SEPARATORS = {"lines": "\n", "paragraphs": "\n\n", "jsonl": "\n", "file": ""}
_BLANK_LINES = re.compile(r"\n(?:[ \t\r\f\v]*\n)+")


@dataclasses.dataclass(frozen=True)
class Documents:
  texts: list[str]  # what the tools compare
  records: list[str]  # what a subset writes back: the text, or the original JSON line
  format: str

  def __len__(self) -> int:
    return len(self.texts)


def read_documents(path: str, format: str = "paragraphs", text_key: str = "text") -> Documents:
  """Reads `path` (UTF-8) as documents; a bad format or record is a one-line UserError."""
  if format not in FORMATS:
    raise UserError(f"unknown document format {format!r}; choose one of {FORMATS}")
  text = read_text(path)
  if format == "file":
    return Documents([text], [text], format)
  if format == "paragraphs":
    texts = [t for t in _BLANK_LINES.split(text.strip("\n")) if t.strip()]
    return Documents(texts, texts, format)
  lines = text.split("\n")
  if lines and lines[-1] == "":
    lines.pop()  # the final newline ends the last line, it does not start another
  if format == "lines":
    return Documents(lines, lines, format)
  texts, records = [], []
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    texts.append(_json_text(line, path, number, text_key))
    records.append(line)
  return Documents(texts, records, format)


def _json_text(line: str, path: str, number: int, text_key: str) -> str:
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise UserError(f"{path}:{number} is not valid JSON: {e.msg}") from None
  if not isinstance(record, dict) or not isinstance(record.get(text_key), str):
    raise UserError(f"{path}:{number} has no string field {text_key!r}")
  return record[text_key]


def write_documents(docs: Documents, keep: list[int], path: str):
  """Writes the documents at indices `keep`, in order, in `docs`' own format."""
  directory = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(directory):
    raise UserError(f"cannot write {path}: directory {directory} does not exist")
  body = _SEPARATORS[docs.format].join(docs.records[i] for i in keep)
  if body and docs.format != "file":
    body += "\n"
  with open(path, "w", encoding="utf-8") as f:
    f.write(body)

"""What the data hygiene CLIs share: absl flags, and one `error:` line with status 2.

`experiments/{contamination,dedup,corpus_stats}.py` call `run(main)`; like
`experiments/run.py`, a bad flag or a `UserError` prints `error: <message>` on
stderr and exits 2 instead of showing a traceback.
"""

import json
import os
import sys

from absl import app, flags

from lm.errors import UserError


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)


def run(main):
  """app.run(main) with one-line errors; `main()` takes no arguments."""

  def wrapped(argv):
    try:
      if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
      main()
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  app.run(wrapped, flags_parser=_parse_flags)


def write_json(path: str, data: dict):
  directory = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(directory):
    raise UserError(f"cannot write {path}: directory {directory} does not exist")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(data, f, indent=1)
    f.write("\n")


def megabytes_per_second(num_chars: int, seconds: float) -> str:
  return f"{num_chars / 1e6:.1f} MB in {seconds:.1f} s ({num_chars / 1e6 / max(seconds, 1e-9):.1f} MB/s)"

"""A family of string tasks for in-context learning: each a deterministic function of a
lowercase string, with a one-line natural-language description.

Names: the base tasks in `BASE_TASKS`, `shift_N` (Caesar shift by N = 1..25), and
compositions `a+b` (apply a, then b), e.g. `reverse+uppercase`. Held-out tasks are
names never used in training (a new shift value, a new composition).

Inputs are random lowercase strings. A fixed 1/16 of all strings (`is_held_out`, a CRC
of the string, the same in every run) never appears in training: evaluation queries
come from that pool, so "held-out inputs" are strings the model has never seen.
"""

import dataclasses
import string
import zlib
from collections.abc import Callable

import numpy as np

from lm.errors import UserError

# Every character a prompt can contain (inputs, outputs, descriptions, the format).
ALPHABET = sorted(set(string.ascii_lowercase + string.ascii_uppercase + string.digits +
                      " ,.:->\n"))
HELD_OUT_EVERY = 16


@dataclasses.dataclass(frozen=True)
class StringTask:
  name: str
  description: str  # a short imperative, e.g. "reverse the letters"
  fn: Callable[[str], str]

  def __call__(self, text: str) -> str:
    return self.fn(text)


def _shift(text: str, n: int) -> str:
  out = []
  for c in text:
    base = "a" if c.islower() else "A" if c.isupper() else None
    out.append(c if base is None else chr(ord(base) + (ord(c) - ord(base) + n) % 26))
  return "".join(out)


def _swap_halves(text: str) -> str:
  half = len(text) // 2
  return text[half:] + text[:half]


BASE_TASKS = {
    "copy": StringTask("copy", "copy the letters", lambda s: s),
    "reverse": StringTask("reverse", "reverse the letters", lambda s: s[::-1]),
    "uppercase": StringTask("uppercase", "write the letters in uppercase", str.upper),
    "every_other": StringTask("every_other", "keep every other letter, from the first",
                              lambda s: s[::2]),
    "sort": StringTask("sort", "sort the letters", lambda s: "".join(sorted(s))),
    "repeat": StringTask("repeat", "write the letters twice", lambda s: s + s),
    "swap_halves": StringTask("swap_halves", "swap the two halves", _swap_halves),
    "double_letters": StringTask("double_letters", "write each letter twice",
                                 lambda s: "".join(c + c for c in s)),
    "rotate_left": StringTask("rotate_left", "move the first letter to the end",
                              lambda s: s[1:] + s[:1]),
}


def get_task(name: str) -> StringTask:
  """`copy`, `shift_3`, `reverse+uppercase`, ...; unknown names are a UserError."""
  if "+" in name:
    parts = [get_task(p) for p in name.split("+")]

    def composed(s: str, parts=parts) -> str:
      for part in parts:
        s = part(s)
      return s

    return StringTask(name, ", then ".join(p.description for p in parts), composed)
  if name.startswith("shift_"):
    n = name[len("shift_"):]
    if not n.isdigit() or not 1 <= int(n) <= 25:
      raise UserError(f"string task {name!r}: the shift must be 1..25")
    return StringTask(name, f"shift each letter {int(n)} forward",
                      lambda s, n=int(n): _shift(s, n))
  if name not in BASE_TASKS:
    raise UserError(f"unknown string task {name!r}; known: {sorted(BASE_TASKS)}, shift_N "
                    f"(N = 1..25) and compositions a+b")
  return BASE_TASKS[name]


def parse_task_list(names: str) -> list[StringTask]:
  """'reverse,shift_1' -> tasks (comma separated, no duplicates)."""
  items = [n.strip() for n in names.split(",") if n.strip()]
  if len(set(items)) != len(items):
    raise UserError(f"duplicate string task names in {names!r}")
  return [get_task(n) for n in items]


def is_held_out(text: str) -> bool:
  """A fixed 1/16 of all strings, the same for every run."""
  return zlib.crc32(text.encode()) % HELD_OUT_EVERY == 0


def sample_inputs(rng: np.random.Generator, n: int, min_len: int, max_len: int,
                  held_out: bool) -> list[str]:
  """n random lowercase strings of length min_len..max_len from one pool."""
  if not 1 <= min_len <= max_len:
    raise UserError(f"input lengths must satisfy 1 <= min ({min_len}) <= max ({max_len})")
  out: list[str] = []
  while len(out) < n:
    draws = (n - len(out)) * (2 * HELD_OUT_EVERY if held_out else 2)
    lengths = rng.integers(min_len, max_len + 1, draws)
    letters = (rng.integers(0, 26, (draws, max_len)) + ord("a")).astype(np.uint8)
    for length, row in zip(lengths, letters):
      text = row[:length].tobytes().decode()
      if is_held_out(text) == held_out:
        out.append(text)
  return out[:n]

""""Who speaks this line": a speaker-classification dataset from a play's text.

Tiny Shakespeare (like most play texts) is a sequence of speeches separated by blank
lines; each speech starts with the speaker's name and a colon on a line of its own:

  First Citizen:
  Before we proceed any further, hear me speak.

An example is one line of a speech, its label the speaker. `speaker_splits` keeps the
`num_speakers` speakers with the most lines (ties: the speaker seen first), then builds
balanced, disjoint train and validation sets deterministically from `seed`:

- every class gets the same number of lines, m = the smallest class's line count;
- per speaker, the speeches are shuffled; whole speeches go to validation until it holds
  round(val_fraction * m) lines (the last one trimmed, its rest unused), the following
  speeches fill the m - that many training lines. No speech is in both splits, so
  neighbouring lines of one speech cannot leak the answer across them.

Later issues (probing, fine-tuning) use it as the codebase's standard classification task.
"""

import collections
import dataclasses
import re

import numpy as np

from lm.data.corpus import read_text
from lm.errors import UserError

_SPEAKER = re.compile(r"^([A-Za-z][A-Za-z' .,&-]*[A-Za-z.]):\s*$")
SPLITS = ("train", "val")


@dataclasses.dataclass(frozen=True)
class Speech:
  speaker: str
  lines: tuple[str, ...]


def parse_speeches(text: str) -> list[Speech]:
  """Blocks between blank lines whose first line is `Name:`; other blocks are skipped."""
  speeches = []
  for block in re.split(r"\n\s*\n", text):
    lines = [line for line in block.split("\n") if line.strip()]
    if len(lines) < 2:
      continue
    match = _SPEAKER.match(lines[0].strip())
    if match:
      speeches.append(Speech(match.group(1), tuple(lines[1:])))
  return speeches


def top_speakers(speeches: list[Speech], k: int) -> list[str]:
  """The k speakers with the most lines; equal counts keep first-appearance order."""
  counts = collections.Counter()
  for s in speeches:
    counts[s.speaker] += len(s.lines)  # Counter keeps insertion (first-appearance) order
  return [name for name, _ in counts.most_common(k)]


def speaker_splits(text: str, num_speakers: int = 8, val_fraction: float = 0.2,
                   seed: int = 0) -> dict[str, tuple[list[str], np.ndarray, list[str]]]:
  """{"train": (texts, labels, label_names), "val": (...)}, balanced per split.

  `labels[i]` indexes `label_names` (the speakers, most lines first).
  """
  if num_speakers < 2:
    raise UserError(f"num_speakers must be at least 2, got {num_speakers}")
  if not 0.0 < val_fraction < 1.0:
    raise UserError(f"val_fraction must be in (0, 1), got {val_fraction}")
  speeches = parse_speeches(text)
  names = top_speakers(speeches, num_speakers)
  if len(names) < num_speakers:
    raise UserError(f"the text has {len(names)} speakers, fewer than num_speakers="
                    f"{num_speakers}")
  by_speaker = {name: [s for s in speeches if s.speaker == name] for name in names}
  per_class = min(sum(len(s.lines) for s in by_speaker[n]) for n in names)
  n_val = int(round(val_fraction * per_class))
  n_train = per_class - n_val
  if n_val < 1 or n_train < 1:
    raise UserError(f"the smallest of the top {num_speakers} speakers has {per_class} lines: "
                    f"too few for a train/val split of fraction {val_fraction}")

  rng = np.random.default_rng(seed)
  out = {split: ([], []) for split in SPLITS}
  for label, name in enumerate(names):
    group = by_speaker[name]
    val, train = [], []
    for i in rng.permutation(len(group)):
      lines = list(group[i].lines)
      if len(val) < n_val:
        val.extend(lines[:n_val - len(val)])  # the rest of a trimmed speech is unused
      elif len(train) < n_train:
        train.extend(lines[:n_train - len(train)])
    # Validation takes whole speeches first, so it can leave training short by the
    # lines of the speech it trimmed; every class is balanced to the shortest below.
    if not train:
      raise UserError(f"speaker {name!r} has too few speeches ({len(group)}) for disjoint "
                      f"train and validation lines; lower num_speakers")
    for split, lines in (("val", val), ("train", train)):
      out[split][0].extend(lines)
      out[split][1].extend([label] * len(lines))
  result = {}
  for split in SPLITS:
    texts, labels = out[split]
    labels = np.asarray(labels, np.int32)
    counts = np.bincount(labels, minlength=len(names))
    keep = np.zeros(len(labels), bool)
    for c in range(len(names)):  # equal class sizes: the first min-count lines of each class
      keep[np.flatnonzero(labels == c)[:counts.min()]] = True
    order = rng.permutation(int(keep.sum()))
    kept = np.flatnonzero(keep)[order]
    result[split] = ([texts[i] for i in kept], labels[kept], list(names))
  return result


def load_speakers(path: str, split: str = "train", num_speakers: int = 8,
                  val_fraction: float = 0.2, seed: int = 0):
  """(texts, labels, label_names) of one split of the speaker dataset of the file at `path`."""
  if split not in SPLITS:
    raise UserError(f"split {split!r}; choose one of {SPLITS}")
  return speaker_splits(read_text(path), num_speakers, val_fraction, seed)[split]

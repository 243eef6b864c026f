"""The speaker-classification dataset on a hand-made mini play, and its invariants on tiny
Shakespeare."""

import collections
from pathlib import Path

import numpy as np
import pytest

from lm.data import speakers
from lm.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent

# ANNA: 3 speeches, 6 lines; BOB: 2 speeches, 5 lines; CLOWN: 2 speeches, 4 lines;
# Second Servant: 1 speech, 1 line. A stage direction without a speaker is skipped.
MINI_PLAY = """ANNA:
a1 one
a1 two

BOB:
b1 one
b1 two
b1 three

Enter the CLOWN, singing
and dancing

CLOWN:
c1 one
c1 two

ANNA:
a2 one
a2 two

Second Servant:
s1 one

BOB:
b2 one
b2 two

CLOWN:
c2 one
c2 two

ANNA:
a3 one
a3 two
"""


def test_parse_speeches_by_hand():
  speeches = speakers.parse_speeches(MINI_PLAY)
  assert [(s.speaker, len(s.lines)) for s in speeches] == [
      ("ANNA", 2), ("BOB", 3), ("CLOWN", 2), ("ANNA", 2), ("Second Servant", 1), ("BOB", 2),
      ("CLOWN", 2), ("ANNA", 2)]
  assert speeches[1].lines == ("b1 one", "b1 two", "b1 three")


def test_top_speakers_by_line_count_ties_by_first_appearance():
  speeches = speakers.parse_speeches(MINI_PLAY)
  assert speakers.top_speakers(speeches, 2) == ["ANNA", "BOB"]  # 6 and 5 lines
  assert speakers.top_speakers(speeches, 3) == ["ANNA", "BOB", "CLOWN"]
  # A tie: BOB and CLOWN both have 4 lines when BOB's second speech is one line shorter.
  tied = MINI_PLAY.replace("b2 one\nb2 two\n", "b2 one\n")
  assert speakers.top_speakers(speakers.parse_speeches(tied), 3) == ["ANNA", "BOB", "CLOWN"]


def test_mini_play_splits_are_balanced_disjoint_and_whole_speeches():
  splits = speakers.speaker_splits(MINI_PLAY, num_speakers=3, val_fraction=0.25, seed=0)
  train_texts, train_labels, names = splits["train"]
  val_texts, val_labels, val_names = splits["val"]
  assert names == val_names == ["ANNA", "BOB", "CLOWN"]
  # m = 4 lines per class (CLOWN's), 1 validation line each, at most 3 training lines each.
  assert np.bincount(val_labels, minlength=3).tolist() == [1, 1, 1]
  train_counts = np.bincount(train_labels, minlength=3)
  assert len(set(train_counts.tolist())) == 1 and 1 <= train_counts[0] <= 3
  for texts, labels in ((train_texts, train_labels), (val_texts, val_labels)):
    for text, label in zip(texts, labels):
      assert text[0] == names[label][0].lower()  # "a1 one" is ANNA's, and so on
  assert not set(train_texts) & set(val_texts)
  # No speech (named by its prefix, e.g. "a2") contributes to both splits.
  assert not {t.split()[0] for t in train_texts} & {t.split()[0] for t in val_texts}


def test_splits_are_deterministic_and_depend_on_the_seed():
  a = speakers.speaker_splits(MINI_PLAY, 2, 0.34, seed=0)
  b = speakers.speaker_splits(MINI_PLAY, 2, 0.34, seed=0)
  assert a["train"][0] == b["train"][0] and a["val"][0] == b["val"][0]
  np.testing.assert_array_equal(a["train"][1], b["train"][1])
  vals = {tuple(sorted(speakers.speaker_splits(MINI_PLAY, 2, 0.34, seed=s)["val"][0]))
          for s in range(10)}
  assert len(vals) > 1


def test_bad_arguments_are_user_errors(tmp_path):
  with pytest.raises(UserError, match="fewer than num_speakers"):
    speakers.speaker_splits(MINI_PLAY, num_speakers=5)
  with pytest.raises(UserError, match="num_speakers"):
    speakers.speaker_splits(MINI_PLAY, num_speakers=1)
  with pytest.raises(UserError, match="val_fraction"):
    speakers.speaker_splits(MINI_PLAY, 2, val_fraction=1.0)
  with pytest.raises(UserError, match="too few"):
    speakers.speaker_splits(MINI_PLAY, 4, val_fraction=0.2)  # Second Servant has 1 line
  one_speech = ("ANNE:\na1\na2\n\nBEN:\nb1\nb2\n\nANNE:\na3\na4\n\nCLOWN:\nc1\nc2\nc3\nc4\n\n"
                "BEN:\nb3\nb4\n")
  with pytest.raises(UserError, match="CLOWN"):  # one speech cannot be in both splits
    speakers.speaker_splits(one_speech, 3, val_fraction=0.25)  # 4 lines each
  path = tmp_path / "play.txt"
  path.write_text(MINI_PLAY)
  with pytest.raises(UserError, match="split"):
    speakers.load_speakers(str(path), split="test")
  texts, labels, names = speakers.load_speakers(str(path), "val", 2, 0.34)
  assert names == ["ANNA", "BOB"] and len(texts) == len(labels) == 4


def test_tiny_shakespeare_speaker_task():
  path = REPO_ROOT / "data" / "tinyshakespeare.txt"
  train_texts, train_labels, names = speakers.load_speakers(str(path), "train", 8)
  val_texts, val_labels, _ = speakers.load_speakers(str(path), "val", 8)
  assert names[0] == "GLOUCESTER" and len(names) == 8
  assert len(set(np.bincount(train_labels).tolist())) == 1  # balanced
  assert len(set(np.bincount(val_labels).tolist())) == 1
  assert len(train_texts) > 3000 and len(val_texts) > 800
  # Lines are speech lines, never the speaker headers.
  assert not any(t.rstrip().endswith(":") and t.strip()[:-1] in names for t in train_texts)
  # Every example is a line its label's speaker speaks in the text.
  spoken = collections.defaultdict(set)
  for s in speakers.parse_speeches(path.read_text()):
    spoken[s.speaker].update(s.lines)
  assert all(t in spoken[names[y]] for t, y in zip(val_texts, val_labels))

"""Synthetic multi-digit addition in a chat-style template, with checkable answers.

  prompt:    "Q: What is 556 plus 497? A: "
  response:  "<answer>1053</answer>"  then the end-of-turn token "\n" (EOS)

Both operands have exactly `num_digits` digits, so every prompt of a task has the same
length (rollouts batch prompts without padding). A fixed ~1% of all operand pairs
(`is_held_out`) never appears in training: held-out accuracy is measured on them.
Rewards are rule-based: `answer_correct` (the number inside the first <answer>...</answer>
equals a + b) and `format_ok` (the completion is exactly <answer>digits</answer> + EOS).
"""

import re

import numpy as np

from lm.data.tokenizers import CharTokenizer

EOS = "\n"
ALPHABET = sorted(set("Q: What is plus? A: <answer></answer>0123456789" + EOS))
_ANSWER = re.compile(r"<answer>(\d+)</answer>")
_FORMAT = re.compile(r"<answer>\d+</answer>")


def make_tokenizer() -> CharTokenizer:
  return CharTokenizer(ALPHABET)


def prompt_text(a: int, b: int) -> str:
  return f"Q: What is {a} plus {b}? A: "


def response_text(a: int, b: int) -> str:
  return f"<answer>{a + b}</answer>"


def is_held_out(a, b):
  """A fixed pseudo-random ~1% of pairs, the same for every run (works on arrays)."""
  return (np.asarray(a, np.int64) * 7919 + np.asarray(b, np.int64) * 104729) % 101 == 0


def operand_range(num_digits: int) -> tuple[int, int]:
  return 10 ** (num_digits - 1), 10**num_digits


def sample_pairs(rng: np.random.Generator, n: int, num_digits: int,
                 held_out: bool) -> np.ndarray:
  """(n, 2) operand pairs from the training pool (held_out=False) or the held-out one."""
  lo, hi = operand_range(num_digits)
  out = np.zeros((0, 2), np.int64)
  while len(out) < n:
    draws = 150 * n + 200 if held_out else n + 16  # ~1% of pairs are held out
    pairs = rng.integers(lo, hi, size=(draws, 2))
    keep = is_held_out(pairs[:, 0], pairs[:, 1]) == held_out
    out = np.concatenate([out, pairs[keep]])
  return out[:n]


def held_out_pairs(n: int, num_digits: int, seed: int = 1234) -> np.ndarray:
  """A fixed list of n distinct held-out pairs."""
  rng = np.random.default_rng(seed)
  pairs = np.unique(sample_pairs(rng, 3 * n, num_digits, held_out=True), axis=0)
  return rng.permutation(pairs)[:n]


def completion_text(tokenizer, ids) -> tuple[str, bool]:
  """The generated text up to (without) the first EOS, and whether an EOS was generated."""
  text = tokenizer.decode(np.asarray(ids).reshape(-1))
  head, eos, _ = text.partition(EOS)
  return head, bool(eos)


def answer_correct(completion: str, a: int, b: int) -> bool:
  m = _ANSWER.search(completion)
  return m is not None and int(m.group(1)) == a + b


def format_ok(completion: str, ended: bool) -> bool:
  return ended and _FORMAT.fullmatch(completion) is not None

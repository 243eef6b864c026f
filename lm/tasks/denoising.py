"""BART denoising (Lewis et al. 2020, §2.2): sentence permutation + text infilling.

Each example is a window of `data.seq_len` = L tokens starting at a line start. The
decoder reconstructs the window (+ EOS) from a corrupted copy (+ EOS):
1. Sentence permutation: the window is cut after every token that holds a newline
   (tiny Shakespeare's lines are its sentences; a word tokenizer has no newlines, so
   its window stays one sentence) and the pieces are shuffled uniformly at random.
2. Text infilling: M = ceil(mask_ratio * L) tokens (30%) are masked in spans whose
   lengths are drawn from Poisson(λ = 3) until they cover M, the last one trimmed
   (fairseq's rule, so exactly M tokens are masked); a zero-length span inserts a
   mask. Each span becomes one <mask> token. The spans, in random order, are placed
   uniformly among the L - M unmasked tokens without overlapping (every interleaving of
   the m spans with the unmasked tokens is equally likely), so the input has
   L - M + m tokens. Draws with m > M (a longer input than L, vanishingly rare) are
   redrawn.
Tokens here are the tokenizer's: characters for the char tokenizer.
"""

import dataclasses
import math

import grain
import numpy as np

from lm.data.seq2seq_pairs import EOS_ID, MASK_ID, pad_rows, prepare_text
from lm.errors import UserError
from lm.tasks.causal_lm import with_vocab
from lm.tasks.seq2seq import encdec_task


@dataclasses.dataclass(frozen=True)
class DenoisingConfig:
  mask_ratio: float = 0.3
  poisson_lambda: float = 3.0
  permute_sentences: bool = True
  num_eval_examples: int = 512

  def __post_init__(self):
    if not 0.0 < self.mask_ratio < 1.0 or self.poisson_lambda <= 0:
      raise UserError("task_config.mask_ratio must be in (0, 1) and poisson_lambda > 0")
    if self.num_eval_examples <= 0:
      raise UserError("task_config.num_eval_examples must be positive")


def poisson_span_lengths(budget: int, lam: float, rng: np.random.Generator) -> np.ndarray:
  """Poisson(lam) lengths drawn until they sum to >= budget; the last is trimmed so they
  sum to exactly `budget` (it may become 0: an insertion)."""
  lengths, total = [], 0
  while total < budget:
    draws = rng.poisson(lam, size=max(1, int((budget - total) / lam) + 1))
    for x in draws:
      lengths.append(int(x))
      total += int(x)
      if total >= budget:
        break
  lengths[-1] -= total - budget
  return np.asarray(lengths, np.int64)


def text_infilling(tokens: np.ndarray, rng: np.random.Generator, mask_ratio: float = 0.3,
                   lam: float = 3.0, mask_id: int = MASK_ID) -> np.ndarray:
  n = len(tokens)
  budget = math.ceil(mask_ratio * n)
  lengths = poisson_span_lengths(budget, lam, rng)
  while len(lengths) > budget:
    lengths = poisson_span_lengths(budget, lam, rng)
  lengths = rng.permutation(lengths)  # the trimmed span may sit anywhere
  m, kept = len(lengths), n - budget
  is_span = np.zeros(kept + m, bool)
  is_span[rng.choice(kept + m, size=m, replace=False)] = True
  out, src, k = [], 0, 0
  for span in is_span:
    if span:
      out.append(mask_id)
      src += lengths[k]
      k += 1
    else:
      out.append(tokens[src])
      src += 1
  return np.asarray(out, tokens.dtype)


def permute_sentences(tokens: np.ndarray, is_boundary: np.ndarray, rng: np.random.Generator):
  """Cuts after every boundary token and shuffles the pieces."""
  cuts = np.flatnonzero(is_boundary[tokens]) + 1
  pieces = [p for p in np.split(tokens, cuts) if len(p)]
  return np.concatenate([pieces[i] for i in rng.permutation(len(pieces))])


def noise(window: np.ndarray, rng: np.random.Generator, tc, is_boundary: np.ndarray):
  """(inputs, targets), each ending in EOS."""
  x = permute_sentences(window, is_boundary, rng) if tc.permute_sentences else window
  x = text_infilling(x, rng, tc.mask_ratio, tc.poisson_lambda)
  return np.append(x, EOS_ID), np.append(window, EOS_ID)


class _Windows:
  """Random line-start windows of the training ids, noised; a pure function of (seed, index)."""

  def __init__(self, ids, starts, length, batch_size, tc, is_boundary):
    self.ids, self.starts, self.length = ids, starts, length
    self.batch_size, self.tc, self.is_boundary = batch_size, tc, is_boundary

  def __call__(self, _, rng: np.random.Generator):
    starts = self.starts[rng.integers(0, len(self.starts), size=self.batch_size)]
    pairs = [noise(self.ids[s:s + self.length], rng, self.tc, self.is_boundary) for s in starts]
    return {"inputs": pad_rows([p[0] for p in pairs], self.length + 1),
            "targets": pad_rows([p[1] for p in pairs], self.length + 1)}


def line_starts(ids: np.ndarray, is_boundary: np.ndarray, length: int) -> np.ndarray:
  starts = np.concatenate([[0], np.flatnonzero(is_boundary[ids]) + 1])
  starts = starts[starts + length <= len(ids)]
  if len(starts) == 0:
    raise UserError(f"no window of data.seq_len={length} tokens fits the text")
  return starts


def build(config, workdir: str):
  tc, d = config.task_config, config.data
  L = d.seq_len
  tokenizer, train_text, val_text = prepare_text(config, workdir)
  config = with_vocab(config, tokenizer.vocab_size)
  is_boundary = np.zeros(tokenizer.vocab_size, bool)
  for i in range(tokenizer.offset, tokenizer.vocab_size):
    is_boundary[i] = "\n" in tokenizer.decode([i])
  train_ids, val_ids = tokenizer.encode(train_text), tokenizer.encode(val_text)
  train_starts = line_starts(train_ids, is_boundary, L)

  # Evaluation: windows at evenly spaced line starts of the validation split, fixed noise.
  val_starts = line_starts(val_ids, is_boundary, L)
  pick = val_starts[np.linspace(0, len(val_starts) - 1,
                                min(tc.num_eval_examples, len(val_starts))).astype(int)]
  rng = np.random.default_rng(12345)
  pairs = [noise(val_ids[s:s + L], rng, tc, is_boundary) for s in pick]
  eval_inputs = pad_rows([p[0] for p in pairs], L + 1)
  eval_targets = pad_rows([p[1] for p in pairs], L + 1)

  def describe(src, tgt, pred):
    cut = lambda ids: [int(t) for t in ids if t != 0]  # noqa: E731
    return (f"input:     {tokenizer.decode(cut(src))!r}\n"
            f"predicted: {tokenizer.decode(cut(pred))!r}\n"
            f"target:    {tokenizer.decode(cut(tgt))!r}")

  dataset = grain.MapDataset.range(2**62).random_map(
      _Windows(train_ids, train_starts, L, d.batch_size, tc, is_boundary), seed=d.seed)
  task = encdec_task(config, tokenizer, iter(dataset.to_iter_dataset()), (L + 1, L + 1),
                     eval_inputs, eval_targets, describe)
  return config, task

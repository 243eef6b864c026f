"""T5 span corruption (Raffel et al. 2020, §3.1.4): drop spans, predict them after sentinels.

Each example is a window of `data.seq_len` = L tokens. T5's `random_spans_noise_mask`
(t5/data/preprocessors.py, without `random_roll`) marks N = round(L * noise_density)
tokens as noise in S = round(N / mean_noise_span_length) spans: the noise tokens and
the other tokens are each cut into S non-empty runs by a uniformly random composition
(`random_segmentation`), and the runs alternate, starting with a non-noise run (so the
window always ends in noise). The encoder reads the window with every noise span
replaced by one sentinel <extra_id_k> (k = 0, 1, ... in order) and EOS; the decoder
writes <extra_id_0> span_0 <extra_id_1> span_1 ... EOS. Since N and S depend on L only,
every example has inputs of L - N + S + 1 and targets of N + S + 1 tokens, and the
tokenizer carries exactly S sentinels. Defaults: density 0.15, mean span length 3.
"""

import dataclasses

import grain
import numpy as np

from lm.data.seq2seq_pairs import EOS_ID, pad_rows, prepare_text
from lm.errors import UserError
from lm.tasks.causal_lm import with_vocab
from lm.tasks.seq2seq import encdec_task


@dataclasses.dataclass(frozen=True)
class SpanCorruptionConfig:
  noise_density: float = 0.15
  mean_noise_span_length: float = 3.0
  num_eval_examples: int = 512  # windows of the validation split (fixed noise)

  def __post_init__(self):
    if not 0.0 < self.noise_density < 1.0 or self.mean_noise_span_length < 1.0:
      raise UserError("task_config.noise_density must be in (0, 1) and "
                      "mean_noise_span_length >= 1")
    if self.num_eval_examples <= 0:
      raise UserError("task_config.num_eval_examples must be positive")


def noise_counts(length: int, noise_density: float, mean_noise_span_length: float):
  """T5's (num_noise_tokens, num_noise_spans) for a sequence of `length` tokens."""
  length = max(length, 2)
  num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
  num_spans = max(int(round(num_noise / mean_noise_span_length)), 1)
  return num_noise, num_spans


def random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator):
  """Lengths of `num_segments` non-empty runs summing to `num_items`, uniformly random
  among all compositions: a shuffled 0/1 vector marks which items start a new run."""
  first_in_segment = np.zeros(num_items - 1, np.int64)
  first_in_segment[:num_segments - 1] = 1
  rng.shuffle(first_in_segment)
  segment_id = np.cumsum(np.concatenate([[0], first_in_segment]))
  return np.bincount(segment_id, minlength=num_segments)


def random_spans_noise_mask(length: int, rng: np.random.Generator, noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0) -> np.ndarray:
  """Boolean (length,) noise mask, as T5's random_spans_noise_mask."""
  orig_length, length = length, max(length, 2)
  num_noise, num_spans = noise_counts(length, noise_density, mean_noise_span_length)
  noise_lengths = random_segmentation(num_noise, num_spans, rng)
  nonnoise_lengths = random_segmentation(length - num_noise, num_spans, rng)
  interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
  span_starts = np.cumsum(interleaved)[:-1]
  span_start_indicator = np.zeros(length, np.int64)
  span_start_indicator[span_starts] = 1
  return (np.cumsum(span_start_indicator) % 2 == 1)[:orig_length]


def spans_to_sentinels(tokens: np.ndarray, mask: np.ndarray, sentinel_ids) -> np.ndarray:
  """Each masked span -> its sentinel (the k-th span gets sentinel_ids[k]); T5's
  noise_span_to_unique_sentinel."""
  prev = np.concatenate([[False], mask[:-1]])
  first = mask & ~prev
  span_index = np.cumsum(first) - 1
  out = np.where(first, np.asarray(sentinel_ids)[np.maximum(span_index, 0)], tokens)
  return out[~(mask & prev)]


def corrupt(tokens: np.ndarray, mask: np.ndarray, sentinel_ids):
  """(inputs, targets), each ending in EOS."""
  inputs = spans_to_sentinels(tokens, mask, sentinel_ids)
  targets = spans_to_sentinels(tokens, ~mask, sentinel_ids)
  return np.append(inputs, EOS_ID), np.append(targets, EOS_ID)


def reconstruct(inputs, targets, sentinel_ids) -> list[int]:
  """The original window from inputs and targets: each sentinel in the inputs is replaced
  by what follows the same sentinel in the targets (up to the next sentinel or EOS)."""
  sentinels = {int(s) for s in sentinel_ids}
  spans, current = {}, None
  for t in (int(t) for t in targets):
    if t == EOS_ID:
      break
    if t in sentinels:
      current = spans.setdefault(t, [])
    elif current is not None:
      current.append(t)
  out = []
  for t in (int(t) for t in inputs):
    if t == EOS_ID:
      break
    out.extend(spans.get(t, []) if t in sentinels else [t])
  return out


def make_examples(ids: np.ndarray, starts, length: int, rng: np.random.Generator, tc,
                  sentinel_ids):
  inputs, targets = [], []
  for s in starts:
    window = ids[s:s + length]
    mask = random_spans_noise_mask(length, rng, tc.noise_density, tc.mean_noise_span_length)
    x, y = corrupt(window, mask, sentinel_ids)
    inputs.append(x)
    targets.append(y)
  return inputs, targets


class _Windows:
  """Random windows of the training ids, corrupted; a pure function of (seed, index)."""

  def __init__(self, ids, length, batch_size, tc, sentinel_ids, shapes):
    self.ids, self.length, self.batch_size = ids, length, batch_size
    self.tc, self.sentinel_ids, self.shapes = tc, sentinel_ids, shapes

  def __call__(self, _, rng: np.random.Generator):
    starts = rng.integers(0, len(self.ids) - self.length + 1, size=self.batch_size)
    x, y = make_examples(self.ids, starts, self.length, rng, self.tc, self.sentinel_ids)
    return {"inputs": pad_rows(x, self.shapes[0]), "targets": pad_rows(y, self.shapes[1])}


def build(config, workdir: str):
  tc, d = config.task_config, config.data
  L = d.seq_len
  num_noise, num_spans = noise_counts(L, tc.noise_density, tc.mean_noise_span_length)
  tokenizer, train_text, val_text = prepare_text(config, workdir, num_sentinels=num_spans)
  config = with_vocab(config, tokenizer.vocab_size)
  sentinel_ids = [tokenizer.sentinel_id(k) for k in range(num_spans)]
  shapes = (L - num_noise + num_spans + 1, num_noise + num_spans + 1)
  train_ids, val_ids = tokenizer.encode(train_text), tokenizer.encode(val_text)
  if len(train_ids) < L or len(val_ids) < L:
    raise UserError(f"data.seq_len={L} is longer than the training or validation split")

  # Evaluation: consecutive windows of the validation split, with fixed noise.
  num_eval = min(tc.num_eval_examples, len(val_ids) // L)
  x, y = make_examples(val_ids, np.arange(num_eval) * L, L, np.random.default_rng(12345), tc,
                       sentinel_ids)
  eval_inputs, eval_targets = pad_rows(x, shapes[0]), pad_rows(y, shapes[1])

  def describe(src, tgt, pred):
    text = tokenizer.decode
    cut = lambda ids: [int(t) for t in ids if t != 0]  # noqa: E731
    return (f"input:  {text(cut(src))!r}\npredicted: {text(cut(pred))!r}\n"
            f"target:    {text(cut(tgt))!r}")

  dataset = grain.MapDataset.range(2**62).random_map(
      _Windows(train_ids, L, d.batch_size, tc, sentinel_ids, shapes), seed=d.seed)
  task = encdec_task(config, tokenizer, iter(dataset.to_iter_dataset()), shapes, eval_inputs,
                     eval_targets, describe)
  return config, task

"""The grain input pipeline: random training windows and exhaustive eval windows.

Training draws windows at uniformly random offsets. Batch i is a pure function of
(seed, i) (grain's `random_map` seeds each element's generator from them), so the
iterator's whole state is one integer, `next_index`: checkpointable and exactly
resumable. One element is a whole batch, gathered with one vectorised index.

Each example is {"inputs": x[s:s+T], "targets": x[s+1:s+T+1]}.

The iterators read in the calling thread (`IN_THREAD`): a batch is one vectorised gather,
and the trainer fetches the next chunk while the devices run the current one, so grain's
prefetch threads would only compete with the devices for the cores (~5% of the default
recipe's step on 2 cores; README, "Training throughput").
"""

import grain
import numpy as np

from lm.errors import UserError

_ENDLESS = 2**62  # grain datasets need a length; this one never runs out
IN_THREAD = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


def train_dataset(tokens: np.ndarray, seq_len: int, batch_size: int, seed: int):
  """Endless batches of random windows: a grain MapDataset indexed by example number."""
  tokens = np.asarray(tokens, np.int32)
  num_starts = len(tokens) - seq_len
  if num_starts < 1:
    raise UserError(f"the training split has {len(tokens)} tokens, fewer than one window of "
                    f"seq_len+1={seq_len + 1}; use a longer corpus or a smaller data.seq_len")

  offsets = np.arange(seq_len + 1)

  def batch(_, rng: np.random.Generator):
    starts = rng.integers(0, num_starts, size=batch_size)
    chunk = tokens[starts[:, None] + offsets]
    return {"inputs": chunk[:, :-1], "targets": chunk[:, 1:]}

  return grain.MapDataset.range(_ENDLESS).random_map(batch, seed=seed)


def train_iterator(tokens, seq_len: int, batch_size: int, seed: int):
  """A checkpointable iterator: `get_state()` / `set_state()` give the data position."""
  return iter(train_dataset(tokens, seq_len, batch_size, seed).to_iter_dataset(IN_THREAD))


def next_chunk(iterator, num_batches: int) -> dict:
  """Stacks the next `num_batches` batches along a new leading axis (for lax.scan)."""
  batches = [next(iterator) for _ in range(num_batches)]
  return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def eval_batches(tokens: np.ndarray, seq_len: int, batch_size: int) -> list[dict]:
  """Non-overlapping windows covering every token of `tokens` once as a target.

  The last window and the last batch are padded; padding has weight 0, so the mean
  loss is over exactly len(tokens) - 1 predictions.
  """
  tokens = np.asarray(tokens, np.int32)
  num_targets = len(tokens) - 1
  if num_targets < 1:
    raise UserError(f"the validation split has {len(tokens)} tokens; it needs at least 2 "
                    f"(raise data.val_fraction or use a longer corpus)")
  num_windows = -(-num_targets // seq_len)
  num_batches = -(-num_windows // batch_size)
  padded = np.zeros(num_batches * batch_size * seq_len + 1, np.int32)
  padded[:len(tokens)] = tokens
  weights = np.zeros(num_batches * batch_size * seq_len, np.float32)
  weights[:num_targets] = 1.0
  shape = (num_batches, batch_size, seq_len)
  inputs, targets = padded[:-1].reshape(shape), padded[1:].reshape(shape)
  weights = weights.reshape(shape)
  return [{"inputs": inputs[i], "targets": targets[i], "weights": weights[i]}
          for i in range(num_batches)]


def consecutive_train_dataset(tokens: np.ndarray, seq_len: int, batch_size: int,
                              reset_every: int = 0):
  """Endless batches for truncated BPTT: row b of batch i+1 continues row b of batch i.

  The stream is cut into `batch_size` contiguous lanes; batch i holds window
  i mod (windows per lane) of every lane. `reset` (one flag per row, so every entry
  has a batch axis) is True on each pass's first batch, where the lanes jump back to
  their starts and a carried state must be zeroed. With `reset_every = K > 0` row b is
  also reset every K windows, the rows staggered (row b when i = b mod K): the model
  keeps seeing windows that start from an empty state, as sampling and scoring do.
  """
  tokens = np.asarray(tokens, np.int32)
  lane_len = (len(tokens) - 1) // batch_size
  windows = lane_len // seq_len
  if windows < 1:
    raise UserError(f"the training split has {len(tokens)} tokens, fewer than batch_size x "
                    f"seq_len + 1 = {batch_size * seq_len + 1} for consecutive windows; use a "
                    f"longer corpus or a smaller data.batch_size or data.seq_len")
  index_BT = (np.arange(batch_size) * lane_len)[:, None] + np.arange(seq_len + 1)[None, :]
  rows = np.arange(batch_size)

  def batch(i):
    w = i % windows
    chunk = tokens[index_BT + w * seq_len]
    reset = np.full(batch_size, w == 0)
    if reset_every:
      reset |= (i - rows) % reset_every == 0
    return {"inputs": chunk[:, :-1], "targets": chunk[:, 1:], "reset": reset}

  return grain.MapDataset.range(_ENDLESS).map(batch)


def consecutive_train_iterator(tokens, seq_len: int, batch_size: int, reset_every: int = 0):
  """A checkpointable iterator over `consecutive_train_dataset`."""
  return iter(consecutive_train_dataset(tokens, seq_len, batch_size, reset_every)
              .to_iter_dataset(IN_THREAD))

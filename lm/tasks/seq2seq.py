"""Supervised sequence-to-sequence: Shakespeare lines -> the same lines in Pig Latin.

The parallel data is derived deterministically from the corpus (`rule`):
- `pig_latin` (default): every word (a maximal run of ASCII letters) that starts with
  a vowel (a e i o u, either case) gets "way" appended; any other word moves its
  leading consonants (the letters before its first vowel; all of them if it has none)
  to its end and gets "ay". Letters keep their case; everything that is not a letter
  (spaces, punctuation, apostrophes) stays where it is:
  "Romeo, thou art" -> "omeoRay, outhay artway".
- `reverse_words`: the whitespace-separated words in reverse order.

Each non-empty line (stripped) is an example. Training lines come from the training
split of the text; held-out lines from the validation split, minus any line that also
occurs in the training split (so repeated lines like "ROMEO:" are not scored as
held-out). Lines whose source or target (plus EOS) exceeds `data.seq_len` /
`model.max_target_len` tokens are dropped.

The loss (`seq2seq_loss`, also used by span corruption and denoising) is the
teacher-forced cross-entropy of the targets; it reports token accuracy and sequence
accuracy (every target token's argmax right) under teacher forcing. At the end of
training, `final_metrics` decodes the held-out sources greedily (lm/decoding.py) and
reports exact match and token accuracy of the generated lines (and with beam search
when `task_config.beam_size > 1`).
"""

import dataclasses
import os
import re

import grain
import jax.numpy as jnp
import numpy as np

from lm import workdir as workdir_lib
from lm.data.seq2seq_pairs import EOS_ID, PAD_ID, eval_batches, pad_rows, prepare_text
from lm.decoding import beam_search, greedy_decode, strip_after_eos
from lm.errors import UserError
from lm.models.encdec import init_params, shift_right
from lm.objectives import token_cross_entropy
from lm.tasks.causal_lm import with_vocab
from lm.train.task import Task

RULES = ("pig_latin", "reverse_words")
_WORD = re.compile(r"[A-Za-z]+")
_VOWELS = frozenset("aeiouAEIOU")
_ENDLESS = 2**62


@dataclasses.dataclass(frozen=True)
class Seq2SeqConfig:
  rule: str = "pig_latin"  # pig_latin | reverse_words
  num_eval_lines: int = 1000  # held-out lines evaluated (loss and final greedy metrics)
  beam_size: int = 0  # > 1: also report beam-search exact match at the end
  length_penalty: float = 0.6

  def __post_init__(self):
    if self.rule not in RULES:
      raise UserError(f"task_config.rule={self.rule!r}; choose one of {RULES}")
    if self.num_eval_lines <= 0 or self.beam_size < 0:
      raise UserError("task_config.num_eval_lines must be positive and beam_size >= 0")


def pig_latin_word(word: str) -> str:
  if word[0] in _VOWELS:
    return word + "way"
  first_vowel = next((i for i, ch in enumerate(word) if ch in _VOWELS), len(word))
  return word[first_vowel:] + word[:first_vowel] + "ay"


def pig_latin(line: str) -> str:
  return _WORD.sub(lambda m: pig_latin_word(m.group()), line)


def reverse_words(line: str) -> str:
  return " ".join(reversed(line.split()))


def transform(rule: str, line: str) -> str:
  return pig_latin(line) if rule == "pig_latin" else reverse_words(line)


def lines_of(text: str) -> list[str]:
  return [line.strip() for line in text.splitlines() if line.strip()]


# --- the loss -------------------------------------------------------------------------------

def seq2seq_loss(model):
  """Teacher-forced cross-entropy: batch = {"inputs": (B, S), "targets": (B, T)}, 0 = pad.

  The decoder reads the targets shifted right behind the start token. Metrics: loss and
  token accuracy per target token, sequence accuracy per example (rows of padding only
  do not count).
  """
  start = model.config.decoder_start_id

  def loss_fn(params, batch, rng, deterministic=False):
    targets_BT = batch["targets"]
    weights_BT = (targets_BT != PAD_ID)
    logits_BTV = model.apply({"params": params}, batch["inputs"], shift_right(targets_BT, start),
                             deterministic=deterministic, rngs={"dropout": rng})
    loss, num_tokens = token_cross_entropy(logits_BTV, targets_BT, weights_BT.astype(jnp.float32))
    correct_BT = (jnp.argmax(logits_BTV, -1) == targets_BT) & weights_BT
    real_B = weights_BT.any(axis=1)
    exact_B = jnp.all(correct_BT | ~weights_BT, axis=1) & real_B
    num_sequences = real_B.sum().astype(jnp.float32)
    return loss, {"loss": loss, "num_tokens": num_tokens,
                  "accuracy": correct_BT.sum() / jnp.maximum(num_tokens, 1.0),
                  "sequence_accuracy": exact_B.sum() / jnp.maximum(num_sequences, 1.0),
                  "num_sequences": num_sequences}

  return loss_fn


EVAL_WEIGHTS = {"sequence_accuracy": "num_sequences"}


def generation_metrics(predictions: np.ndarray, targets: np.ndarray, prefix: str) -> dict:
  """Exact match (the whole output up to EOS) and token accuracy (position by position
  over each reference's tokens including its EOS) of generated rows against targets."""
  exact, correct, total = 0, 0, 0
  for pred, ref in zip(predictions, targets):
    ref_ids = strip_after_eos(ref, EOS_ID) + [EOS_ID]
    pred_ids = [int(t) for t in pred[:len(ref_ids)]]
    pred_ids += [PAD_ID] * (len(ref_ids) - len(pred_ids))
    exact += strip_after_eos(pred, EOS_ID) == ref_ids[:-1] and EOS_ID in pred_ids
    correct += sum(a == b for a, b in zip(pred_ids, ref_ids))
    total += len(ref_ids)
  return {f"{prefix}_exact_match": exact / max(len(targets), 1),
          f"{prefix}_token_accuracy": correct / max(total, 1)}


def greedy_outputs(model, params, inputs: np.ndarray, batch_size: int, max_len: int):
  outs = [greedy_decode(model, params, inputs[i:i + batch_size], max_len=max_len, eos_id=EOS_ID)
          for i in range(0, len(inputs), batch_size)]
  return np.concatenate(outs)


def random_rows_dataset(inputs: np.ndarray, targets: np.ndarray, batch_size: int, seed: int):
  """Endless batches of random example rows; batch i depends on (seed, i) only."""
  def batch(_, rng: np.random.Generator):
    rows = rng.integers(0, len(inputs), size=batch_size)
    return {"inputs": inputs[rows], "targets": targets[rows]}
  return grain.MapDataset.range(_ENDLESS).random_map(batch, seed=seed)


def check_lengths(config, source_len: int, target_len: int):
  m = config.model
  if source_len > m.max_len or target_len > m.max_target_len:
    raise UserError(f"examples need source length {source_len} and target length "
                    f"{target_len}; raise model.max_len ({m.max_len}) / model.max_target_len "
                    f"({m.max_target_len})")


def encdec_task(config, tokenizer, train_iter, shapes: tuple[int, int], eval_inputs,
                eval_targets, describe, beam_size: int = 0, length_penalty: float = 0.0) -> Task:
  """A Task from a train iterator of (inputs, targets) batches of `shapes` (source and
  target lengths) and fixed eval arrays: every eval row evaluated, greedy (and beam)
  metrics on them at the end; `describe(src, tgt, pred) -> str` for the summary sample."""
  d, m = config.data, config.model
  check_lengths(config, *shapes)
  max_len = m.max_target_len

  def final_metrics(model, params) -> dict:
    preds = greedy_outputs(model, params, eval_inputs, d.eval_batch_size, max_len)
    out = generation_metrics(preds, eval_targets, "greedy")
    if beam_size > 1:
      seqs = [beam_search(model, params, eval_inputs[i:i + d.eval_batch_size],
                          beam_size=beam_size, max_len=max_len, eos_id=EOS_ID,
                          length_penalty=length_penalty)[0][:, 0]
              for i in range(0, len(eval_inputs), d.eval_batch_size)]
      out.update(generation_metrics(np.concatenate(seqs), eval_targets, f"beam{beam_size}"))
    out["generation_examples"] = len(eval_inputs)
    return out

  def sample(model, params) -> str:
    preds = greedy_outputs(model, params, eval_inputs[:4], 4, max_len)
    return "\n".join(describe(eval_inputs[i], eval_targets[i], preds[i]) for i in range(len(preds)))

  def save_files(run_dir: str):
    tokenizer.save(os.path.join(run_dir, workdir_lib.TOKENIZER))

  return Task(
      tokenizer=tokenizer,
      train_iter=train_iter,
      eval_batches=eval_batches(eval_inputs, eval_targets, d.eval_batch_size),
      tokens_per_step=d.batch_size * sum(shapes),
      make_loss=seq2seq_loss,
      init_params=lambda model, seed: init_params(model, seed, *shapes),
      sample=sample, save_files=save_files, eval_weights=EVAL_WEIGHTS,
      final_metrics=final_metrics)


def encode_pairs(tokenizer, lines, rule, source_len, target_len):
  """Token arrays (sources, targets) + EOS, keeping lines that fit."""
  sources, targets, kept = [], [], []
  for line in lines:
    src = np.append(tokenizer.encode(line), EOS_ID)
    tgt = np.append(tokenizer.encode(transform(rule, line)), EOS_ID)
    if len(src) <= source_len and len(tgt) <= target_len:
      sources.append(src)
      targets.append(tgt)
      kept.append(line)
  return pad_rows(sources, source_len), pad_rows(targets, target_len), kept


def build(config, workdir: str):
  tc = config.task_config
  tokenizer, train_text, val_text = prepare_text(config, workdir)
  config = with_vocab(config, tokenizer.vocab_size)
  train_lines = lines_of(train_text)
  seen = set(train_lines)
  held_out = [line for line in lines_of(val_text) if line not in seen]
  source_len, target_len = config.data.seq_len, config.model.max_target_len
  train_src, train_tgt, _ = encode_pairs(tokenizer, train_lines, tc.rule, source_len, target_len)
  eval_src, eval_tgt, _ = encode_pairs(tokenizer, held_out, tc.rule, source_len, target_len)
  if len(train_src) == 0 or len(eval_src) == 0:
    raise UserError(f"no {'training' if len(train_src) == 0 else 'held-out'} line fits "
                    f"data.seq_len={source_len} / model.max_target_len={target_len}")
  eval_src, eval_tgt = eval_src[:tc.num_eval_lines], eval_tgt[:tc.num_eval_lines]

  def describe(src, tgt, pred):
    text = lambda ids: tokenizer.decode(strip_after_eos(ids, EOS_ID))  # noqa: E731
    mark = "=" if strip_after_eos(pred, EOS_ID) == strip_after_eos(tgt, EOS_ID) else "≠"
    return f"{text(src)} -> {text(pred)} {mark} {text(tgt)}"

  train_iter = iter(random_rows_dataset(train_src, train_tgt, config.data.batch_size,
                                        config.data.seed).to_iter_dataset())
  task = encdec_task(config, tokenizer, train_iter, (source_len, target_len), eval_src, eval_tgt,
                     describe, tc.beam_size, tc.length_penalty)
  return config, task


"""Supervised fine-tuning (SFT) on prompt/response pairs in a chat-style template.

Each example is `prompt + response + EOS` (lm/data/addition.py has the template). The
loss is next-token cross-entropy on the response tokens and the EOS only: the prompt is
context, never a target. Examples are packed into rows of `data.seq_len` tokens; each
keeps its own segment id (attention never crosses examples, lm/layers/masks.py) and
positions restarting at 0, so a packed row trains exactly as its examples would alone.

The data is synthetic multi-digit addition ("Q: What is 556 plus 497? A: " ->
"<answer>1053</answer>"); evaluation uses held-out operand pairs that never occur in
training. Eval metrics: response loss, token accuracy and `answer_accuracy` (every
response token right under teacher forcing). At the end, `final_metrics` decodes the
held-out prompts greedily with the KV-cache generator and reports `greedy_accuracy`
(exact answer) and `greedy_format` (exactly `<answer>N</answer>` then EOS).
"""

import dataclasses
import os

import grain
import jax
import jax.numpy as jnp
import numpy as np

from lm import workdir as workdir_lib
from lm.data import addition
from lm.errors import UserError
from lm.layers.masks import positions_from_segments
from lm.post_training.losses import response_cross_entropy
from lm.sampling import generate_batch
from lm.tasks.causal_lm import init_params, with_vocab
from lm.train.task import Task

_ENDLESS = 2**62
EVAL_WEIGHTS = {"answer_accuracy": "num_sequences"}


@dataclasses.dataclass(frozen=True)
class SFTConfig:
  num_digits: int = 3  # operands have exactly this many digits
  num_eval: int = 512  # held-out problems: eval loss and final greedy accuracy

  def __post_init__(self):
    if not 1 <= self.num_digits <= 9 or self.num_eval <= 0:
      raise UserError("task_config.num_digits must be in 1..9 and num_eval positive")


# --- examples and packing ------------------------------------------------------------------

def encode_example(tokenizer, prompt: str, response: str) -> tuple[np.ndarray, int]:
  """Token ids of prompt + response + EOS, and the prompt's length in tokens."""
  p = tokenizer.encode(prompt)
  r = tokenizer.encode(response + addition.EOS)
  return np.concatenate([p, r]).astype(np.int32), len(p)


def example_rows(ids: np.ndarray, prompt_len: int):
  """(inputs, targets, loss weights) of one example: weight 1 where the target is a
  response token (or the EOS)."""
  inputs, targets = ids[:-1], ids[1:]
  weights = (np.arange(len(targets)) >= prompt_len - 1).astype(np.float32)
  return inputs, targets, weights


def pack(examples, seq_len: int, num_rows: int) -> tuple[dict, int]:
  """Packs (ids, prompt_len) examples in order into `num_rows` rows of `seq_len`.

  An example that does not fit the rest of a row starts the next row. Returns the batch
  (inputs, targets, weights, segment_ids: 1, 2, ... per row, 0 = padding) and how many
  examples it holds. Unused space is padding (token 0, weight 0, segment 0).
  """
  batch = {k: np.zeros((num_rows, seq_len), np.float32 if k == "weights" else np.int32)
           for k in ("inputs", "targets", "weights", "segment_ids")}
  row, col, seg, used = 0, 0, 0, 0
  for ids, prompt_len in examples:
    inputs, targets, weights = example_rows(ids, prompt_len)
    n = len(inputs)
    if n > seq_len:
      raise UserError(f"an example of {n + 1} tokens does not fit data.seq_len={seq_len} + 1")
    if col + n > seq_len:
      row, col, seg = row + 1, 0, 0
      if row == num_rows:
        break
    seg += 1
    for key, value in (("inputs", inputs), ("targets", targets), ("weights", weights)):
      batch[key][row, col:col + n] = value
    batch["segment_ids"][row, col:col + n] = seg
    col += n
    used += 1
  return batch, used


def addition_examples(tokenizer, pairs) -> list[tuple[np.ndarray, int]]:
  return [encode_example(tokenizer, addition.prompt_text(a, b), addition.response_text(a, b))
          for a, b in pairs]


def addition_train_dataset(tokenizer, num_digits: int, seq_len: int, num_rows: int, seed: int):
  """Endless packed batches of training-pool problems; batch i depends on (seed, i) only."""
  example_len = len(addition_examples(tokenizer, [(10 ** (num_digits - 1),) * 2])[0][0])
  per_batch = num_rows * max(1, seq_len // (example_len - 1)) + 1  # enough to fill every row

  def batch(_, rng: np.random.Generator):
    pairs = addition.sample_pairs(rng, per_batch, num_digits, held_out=False)
    return pack(addition_examples(tokenizer, pairs), seq_len, num_rows)[0]

  return grain.MapDataset.range(_ENDLESS).random_map(batch, seed=seed)


def packed_eval_batches(examples, seq_len: int, num_rows: int) -> list[dict]:
  batches, rest = [], list(examples)
  while rest:
    batch, used = pack(rest, seq_len, num_rows)
    batches.append(batch)
    rest = rest[used:]
  return batches


# --- loss ----------------------------------------------------------------------------------

def segment_all(ok_BT, segment_ids_BT, num_segments: int):
  """Per (row, segment): are all weighted positions ok? and does the segment exist?"""
  B = ok_BT.shape[0]
  flat = (jnp.arange(B)[:, None] * num_segments + segment_ids_BT).reshape(-1)
  bad = jax.ops.segment_sum((~ok_BT).reshape(-1).astype(jnp.int32), flat, B * num_segments)
  present = jax.ops.segment_sum(jnp.ones_like(flat), flat, B * num_segments)
  real = (present > 0) & (jnp.arange(B * num_segments) % num_segments != 0)  # 0 = padding
  return (bad == 0) & real, real


def packed_logits(model, params, inputs_BT, segment_ids_BT, deterministic=True, rng=None):
  """Logits of packed rows: attention within segments, positions restarting per segment
  (padding, segment 0, sits at position 0: a row of padding only must not index past
  the position table)."""
  positions_BT = jnp.where(segment_ids_BT == 0, 0, positions_from_segments(segment_ids_BT))
  rngs = {} if rng is None else {"dropout": rng}
  logits_BTV, _ = model.apply({"params": params}, inputs_BT, segment_ids_BT=segment_ids_BT,
                              positions_BT=positions_BT, deterministic=deterministic, rngs=rngs)
  return logits_BTV


def sft_loss(model):
  """batch = {inputs, targets, weights, segment_ids} (B, T). Metrics: response loss, token
  accuracy and answer accuracy (all response tokens of an example right)."""

  def loss_fn(params, batch, rng, deterministic=False):
    seg_BT = batch["segment_ids"]
    logits_BTV = packed_logits(model, params, batch["inputs"], seg_BT, deterministic, rng)
    loss, num_tokens = response_cross_entropy(logits_BTV, batch["targets"], batch["weights"])
    weighted_BT = batch["weights"] > 0
    correct_BT = jnp.argmax(logits_BTV, -1) == batch["targets"]
    all_ok, real = segment_all(correct_BT | ~weighted_BT, seg_BT, seg_BT.shape[1] + 1)
    num_sequences = real.sum().astype(jnp.float32)
    return loss, {"loss": loss, "num_tokens": num_tokens,
                  "accuracy": (correct_BT & weighted_BT).sum() / jnp.maximum(num_tokens, 1.0),
                  "answer_accuracy": all_ok.sum() / jnp.maximum(num_sequences, 1.0),
                  "num_sequences": num_sequences}

  return loss_fn


# --- generation metrics --------------------------------------------------------------------

def greedy_addition_metrics(model, params, tokenizer, pairs, max_new_tokens: int,
                            batch_size: int = 256, prefix: str = "greedy") -> dict:
  """Greedy-decode each pair's prompt; exact answer and format rates, mean length."""
  correct, formatted, lengths = 0, 0, 0
  for i in range(0, len(pairs), batch_size):
    chunk = pairs[i:i + batch_size]
    prompts = np.stack([tokenizer.encode(addition.prompt_text(a, b)) for a, b in chunk])
    out = np.asarray(generate_batch(model, params, prompts, max_new_tokens=max_new_tokens,
                                    temperature=0.0))
    for (a, b), ids in zip(chunk, out):
      text, ended = addition.completion_text(tokenizer, ids)
      correct += addition.answer_correct(text, a, b)
      formatted += addition.format_ok(text, ended)
      lengths += len(text) + ended
  n = max(len(pairs), 1)
  return {f"{prefix}_accuracy": correct / n, f"{prefix}_format": formatted / n,
          f"{prefix}_length": lengths / n}


def response_budget(num_digits: int) -> int:
  """Tokens a correct response needs (answer up to num_digits + 1 digits, EOS) + slack."""
  return len(addition.response_text(10**num_digits - 1, 10**num_digits - 1)) + 1 + 4


def build(config, workdir: str):
  tc, d = config.task_config, config.data
  tokenizer = addition.make_tokenizer()
  config = with_vocab(config, tokenizer.vocab_size)
  longest = len(addition_examples(tokenizer, [(10**tc.num_digits - 1,) * 2])[0][0])
  if longest > config.model.max_len or longest - 1 > d.seq_len:
    raise UserError(f"{tc.num_digits}-digit examples have {longest} tokens: raise "
                    f"model.max_len ({config.model.max_len}) and data.seq_len ({d.seq_len})")
  eval_pairs = addition.held_out_pairs(tc.num_eval, tc.num_digits)
  max_new = response_budget(tc.num_digits)

  def final_metrics(model, params) -> dict:
    out = greedy_addition_metrics(model, params, tokenizer, eval_pairs, max_new)
    out["generation_examples"] = len(eval_pairs)
    return out

  def sample(model, params) -> str:
    lines = []
    for a, b in eval_pairs[:4]:
      prompt = tokenizer.encode(addition.prompt_text(a, b))[None]
      ids = np.asarray(generate_batch(model, params, prompt, max_new_tokens=max_new,
                                      temperature=0.0))[0]
      text, _ = addition.completion_text(tokenizer, ids)
      mark = "=" if addition.answer_correct(text, a, b) else "≠"
      lines.append(f"{addition.prompt_text(a, b)}{text} {mark} {a + b}")
    return "\n".join(lines)

  def save_files(run_dir: str):
    tokenizer.save(os.path.join(run_dir, workdir_lib.TOKENIZER))
    workdir_lib.save_token_prior(run_dir, np.zeros(tokenizer.vocab_size) - np.log(
        tokenizer.vocab_size))

  dataset = addition_train_dataset(tokenizer, tc.num_digits, d.seq_len, d.batch_size, d.seed)
  task = Task(
      tokenizer=tokenizer,
      train_iter=iter(dataset.to_iter_dataset()),
      eval_batches=packed_eval_batches(addition_examples(tokenizer, eval_pairs), d.seq_len,
                                       d.eval_batch_size),
      tokens_per_step=d.batch_size * d.seq_len,
      make_loss=sft_loss,
      init_params=lambda model, seed: init_params(model, config.model.max_len, seed),
      sample=sample, final_metrics=final_metrics, save_files=save_files,
      eval_weights=EVAL_WEIGHTS)
  return config, task

"""ICL pretraining: every training row holds input -> output examples of ONE string task.

A row draws one task from `train_tasks` (lm/icl/string_tasks.py), optionally starts with
its description line (probability `description_prob`), then lists examples in the ICL
harness's format (lm/icl/prompts.py) until `data.seq_len + 1` tokens are filled (the
last example may be cut). The task is never named otherwise, so the model must infer it
from the examples before it: the k-th example's answer is a k-shot problem.

  task: reverse the letters
  qwe -> ewq
  abcd -> dcba
  ...

Loss on the answers and their END only (`loss_on="outputs"`) or on every token (`all`).
Inputs come from the training pool; validation rows and the final ICL evaluation use the
held-out inputs (1/16 of all strings). Eval metrics: `val_loss`, `val_output_accuracy`
(answer tokens), `val_first_loss` (answers of a row's first example: zero-shot) and
`val_later_loss` (examples 5 and later: >= 4 shots); their gap is ICL inside training.
At the end, `final_metrics` runs the ICL harness (greedy exact match) on held-out inputs
of the training tasks and on `heldout_tasks`, at k = `eval_shots` and description only.
"""

import dataclasses
import os

import grain
import jax.numpy as jnp
import numpy as np
import optax

from lm import workdir as workdir_lib
from lm.data.tokenizers import CharTokenizer
from lm.errors import UserError
from lm.icl import harness, string_tasks, suites
from lm.icl.prompts import END, build_prompt, description_line
from lm.sampling import generate_batch
from lm.tasks.causal_lm import init_params, with_vocab
from lm.train.task import Task

_ENDLESS = 2**62
LOSS_ON = ("outputs", "all")
LATER_EXAMPLE = 5  # val_later_loss: answers of examples >= this (>= 4 demonstrations before)
EVAL_WEIGHTS = {"output_accuracy": "num_outputs", "first_loss": "num_first",
                "later_loss": "num_later"}


@dataclasses.dataclass(frozen=True)
class ICLStringsConfig:
  train_tasks: str = "copy,reverse,uppercase,shift_1,shift_3,every_other,repeat"
  heldout_tasks: str = "shift_2,reverse+uppercase,every_other+reverse"  # never trained on
  min_input_len: int = 3
  max_input_len: int = 5
  separator: str = suites.SEPARATOR
  description_prob: float = 0.25  # rows that start with the task's description line
  loss_on: str = "outputs"  # outputs | all
  num_eval_rows: int = 64  # validation rows (held-out inputs of the training tasks)
  eval_shots: str = "0,1,2,4,8"  # final ICL evaluation: k values
  eval_queries: int = 16  # final ICL evaluation: held-out queries per task and k

  def __post_init__(self):
    train = string_tasks.parse_task_list(self.train_tasks)
    heldout = string_tasks.parse_task_list(self.heldout_tasks)
    if not train:
      raise UserError("task_config.train_tasks is empty")
    both = sorted({t.name for t in train} & {t.name for t in heldout})
    if both:
      raise UserError(f"task_config.heldout_tasks are also training tasks: {both}")
    if not 1 <= self.min_input_len <= self.max_input_len:
      raise UserError("task_config needs 1 <= min_input_len <= max_input_len")
    if not self.separator or set(self.separator) - set(string_tasks.ALPHABET) or END in (
        self.separator):
      raise UserError(f"task_config.separator={self.separator!r} must be non-empty ASCII "
                      f"without a newline")
    if self.loss_on not in LOSS_ON:
      raise UserError(f"task_config.loss_on={self.loss_on!r}; choose one of {LOSS_ON}")
    if not 0.0 <= self.description_prob <= 1.0:
      raise UserError("task_config.description_prob must be in [0, 1]")
    if self.num_eval_rows <= 0 or self.eval_queries <= 0:
      raise UserError("task_config.num_eval_rows and eval_queries must be positive")
    parse_shots(self.eval_shots)


def parse_shots(text: str) -> tuple[int, ...]:
  try:
    shots = tuple(int(k) for k in text.split(",") if k.strip())
  except ValueError:
    raise UserError(f"shots must be comma-separated integers, got {text!r}") from None
  if not shots or min(shots) < 0:
    raise UserError(f"shots must be non-negative integers, got {text!r}")
  return shots


def make_tokenizer() -> CharTokenizer:
  return CharTokenizer(string_tasks.ALPHABET)


def eval_suite(tc: ICLStringsConfig) -> list[suites.ICLTask]:
  return suites.string_suite(tc.train_tasks, tc.heldout_tasks, separator=tc.separator,
                             min_len=tc.min_input_len, max_len=tc.max_input_len)


# --- rows ----------------------------------------------------------------------------------

def make_row(rng: np.random.Generator, tasks, tokenizer, tc: ICLStringsConfig, length: int,
             held_out: bool) -> dict:
  """One row of `length + 1` tokens: ids, the loss weight of predicting each token, and
  the example number (1, 2, ...) of answer tokens (0 elsewhere)."""
  task = tasks[rng.integers(len(tasks))]
  all_tokens = tc.loss_on == "all"
  ids, weights, example = [], [], []

  def add(text, weight, number):
    piece = tokenizer.encode(text)
    ids.append(piece)
    weights.append(np.full(len(piece), weight, np.float32))
    example.append(np.full(len(piece), number, np.int32))

  if rng.random() < tc.description_prob:
    add(description_line(task.description), float(all_tokens), 0)
  shortest = 1 + len(tc.separator) + 1 + len(END)  # an answer may be a single letter
  inputs = string_tasks.sample_inputs(rng, length // shortest + 2, tc.min_input_len,
                                      tc.max_input_len, held_out)
  number, total = 0, 0
  while total <= length:
    number += 1
    ex = suites.string_example(task, inputs[number - 1], tc.separator)
    add(ex.query, float(all_tokens), 0)
    add(ex.answer + END, 1.0, number)
    total = sum(len(p) for p in ids)
  cat = lambda parts: np.concatenate(parts)[:length + 1]  # noqa: E731
  return {"ids": cat(ids), "weights": cat(weights), "example": cat(example)}


def make_batch(rng, tasks, tokenizer, tc, seq_len: int, num_rows: int, held_out: bool) -> dict:
  """{inputs, targets, weights, example} (num_rows, seq_len): a target's weight and example
  number are those of the token it predicts."""
  rows = [make_row(rng, tasks, tokenizer, tc, seq_len, held_out) for _ in range(num_rows)]
  ids = np.stack([r["ids"] for r in rows]).astype(np.int32)
  return {"inputs": ids[:, :-1], "targets": ids[:, 1:],
          "weights": np.stack([r["weights"][1:] for r in rows]),
          "example": np.stack([r["example"][1:] for r in rows])}


def train_dataset(tasks, tokenizer, tc, seq_len: int, batch_size: int, seed: int):
  """Endless batches; batch i is a pure function of (seed, i), so the iterator's state is
  its position (grain's get_state / set_state)."""
  def batch(_, rng: np.random.Generator):
    return make_batch(rng, tasks, tokenizer, tc, seq_len, batch_size, held_out=False)

  return grain.MapDataset.range(_ENDLESS).random_map(batch, seed=seed)


def eval_batches(tasks, tokenizer, tc, seq_len: int, batch_size: int, seed: int = 1234):
  """Fixed rows of held-out inputs: num_eval_rows rounded up to whole batches."""
  rng = np.random.default_rng(seed)
  num = -(-tc.num_eval_rows // batch_size)
  return [make_batch(rng, tasks, tokenizer, tc, seq_len, batch_size, True) for _ in range(num)]


# --- loss ----------------------------------------------------------------------------------

def icl_loss(model):
  """Weighted next-token cross-entropy, plus answer-token metrics by example number."""

  def loss_fn(params, batch, rng, deterministic=False):
    logits_BTV, _ = model.apply({"params": params}, batch["inputs"],
                                deterministic=deterministic, rngs={"dropout": rng})
    ce_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, batch["targets"])
    w_BT = batch["weights"]
    num_tokens = w_BT.sum()
    loss = (ce_BT * w_BT).sum() / jnp.maximum(num_tokens, 1.0)
    example_BT = batch["example"]
    answer_BT = (example_BT > 0).astype(jnp.float32)
    first_BT = (example_BT == 1).astype(jnp.float32)
    later_BT = (example_BT >= LATER_EXAMPLE).astype(jnp.float32)
    correct_BT = (jnp.argmax(logits_BTV, -1) == batch["targets"]).astype(jnp.float32)
    mean = lambda v, m: (v * m).sum() / jnp.maximum(m.sum(), 1.0)  # noqa: E731
    return loss, {"loss": loss, "num_tokens": num_tokens,
                  "output_accuracy": mean(correct_BT, answer_BT), "num_outputs": answer_BT.sum(),
                  "first_loss": mean(ce_BT, first_BT), "num_first": first_BT.sum(),
                  "later_loss": mean(ce_BT, later_BT), "num_later": later_BT.sum()}

  return loss_fn


# --- the task ------------------------------------------------------------------------------

def build(config, workdir: str):
  tc, d = config.task_config, config.data
  tokenizer = make_tokenizer()
  config = with_vocab(config, tokenizer.vocab_size)
  if d.seq_len > config.model.max_len:
    raise UserError(f"data.seq_len={d.seq_len} exceeds model.max_len={config.model.max_len}")
  train = string_tasks.parse_task_list(tc.train_tasks)
  shots = parse_shots(tc.eval_shots)

  def final_metrics(model, params) -> dict:
    results = harness.evaluate(model, params, tokenizer, eval_suite(tc), shots=shots,
                               num_eval=tc.eval_queries, method="generate")
    return {**harness.flat_metrics(results), "icl_queries_per_cell": tc.eval_queries}

  def sample(model, params) -> str:
    task = train[0]
    rng = np.random.default_rng(0)
    inputs = string_tasks.sample_inputs(rng, 4, tc.min_input_len, tc.max_input_len, True)
    examples = [suites.string_example(task, x, tc.separator) for x in inputs]
    prompt = build_prompt(examples[:3], examples[3])
    if len(prompt) > config.model.max_len:
      return prompt
    out = generate_batch(model, params, tokenizer.encode(prompt)[None],
                         max_new_tokens=2 * tc.max_input_len + 1, temperature=0.0)
    return prompt + tokenizer.decode(np.asarray(out)[0]).partition(END)[0]

  def save_files(run_dir: str):
    tokenizer.save(os.path.join(run_dir, workdir_lib.TOKENIZER))
    workdir_lib.save_token_prior(run_dir, np.zeros(tokenizer.vocab_size) - np.log(
        tokenizer.vocab_size))

  task = Task(
      tokenizer=tokenizer,
      train_iter=iter(train_dataset(train, tokenizer, tc, d.seq_len, d.batch_size,
                                    d.seed).to_iter_dataset()),
      eval_batches=eval_batches(train, tokenizer, tc, d.seq_len, d.eval_batch_size),
      tokens_per_step=d.batch_size * d.seq_len,
      make_loss=icl_loss,
      init_params=lambda model, seed: init_params(model, config.model.max_len, seed),
      sample=sample, final_metrics=final_metrics, save_files=save_files,
      eval_weights=EVAL_WEIGHTS)
  return config, task


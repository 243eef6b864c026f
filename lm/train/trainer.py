"""The training loop: data, model, optimizer, checkpoints, metrics, resume.

`train(config, workdir)` is all a runner needs. Rerunning it on the same workdir
resumes from the latest checkpoint: train state and data position together.
"""

import dataclasses
import json
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from lm import config as config_lib
from lm import workdir as workdir_lib
from lm.data.corpus import read_text, split_text
from lm.data.pipeline import eval_batches, next_chunk, train_iterator
from lm.data.tokenizers import build_tokenizer, load_tokenizer
from lm.errors import UserError
from lm.models.registry import build_model
from lm.objectives import causal_lm_loss
from lm.sampling import generate
from lm.train.checkpoint import Checkpointer
from lm.train.ema import find_ema
from lm.train.metrics import MetricsWriter, write_json
from lm.train.optimizer import learning_rate_schedule, make_optimizer
from lm.train.state import create_train_state
from lm.train.step import make_eval_step, make_multi_step


class TrainingDiverged(UserError):
  """The loss became NaN or infinite; the last good checkpoint is left untouched."""


def prepare_data(config: config_lib.ExperimentConfig, workdir: str):
  """Reads and splits the corpus; builds the tokenizer, or reloads the run's own."""
  text = read_text(config.data.path)
  train_text, val_text = split_text(text, config.data.val_fraction)
  tokenizer_path = os.path.join(workdir, workdir_lib.TOKENIZER)
  if os.path.exists(tokenizer_path):
    tokenizer = load_tokenizer(tokenizer_path)
  else:
    # The char alphabet comes from the whole text (nanoGPT's convention); learned
    # vocabularies (word, BPE) see the training split only.
    source = text if config.data.tokenizer == "char" else train_text
    tokenizer = build_tokenizer(config.data.tokenizer, source, config.data.vocab_size)
  return tokenizer, tokenizer.encode(train_text), tokenizer.encode(val_text)


def with_vocab(config: config_lib.ExperimentConfig, vocab_size: int):
  if config.model.vocab_size not in (0, vocab_size):
    raise UserError(f"model.vocab_size={config.model.vocab_size} but the tokenizer has "
                    f"{vocab_size} tokens; leave model.vocab_size at 0 to use the tokenizer's")
  return dataclasses.replace(config, model=dataclasses.replace(config.model, vocab_size=vocab_size))


def init_params(model, seq_len: int, seed: int):
  dummy = jnp.zeros((1, seq_len), jnp.int32)
  init_fn = jax.jit(lambda rng: nn.meta.unbox(model.init(rng, dummy)["params"]))
  return init_fn(jax.random.key(seed))


def _init_params_for(model, config: config_lib.ExperimentConfig):
  return init_params(model, config.data.seq_len, config.train.seed)


def abstract_train_state(config: config_lib.ExperimentConfig, model):
  tx = make_optimizer(config.optim, config.train.num_steps)
  return jax.eval_shape(lambda: create_train_state(_init_params_for(model, config), tx))


def evaluate(eval_step, params, batches) -> float:
  total, count = 0.0, 0.0
  for batch in batches:
    loss_sum, num = eval_step(params, batch)
    total, count = total + float(loss_sum), count + float(num)
  return total / count


def _next_boundary(step: int, t: config_lib.TrainConfig) -> int:
  """The next step at which we must stop the scan: log, eval, checkpoint or the end."""
  candidates = [t.num_steps, step + t.steps_per_call]
  candidates += [(step // every + 1) * every for every in (t.log_every, t.eval_every,
                                                           t.checkpoint_every)]
  return min(candidates)


def _read_json(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


class _Throughput:
  """Tokens/s over training calls only; the first call of each scan length compiles."""

  def __init__(self, tokens_per_step: int):
    self.tokens_per_step = tokens_per_step
    self.seconds, self.steps, self.compile_seconds = 0.0, 0, 0.0
    self._compiled = set()

  def add(self, num_steps: int, seconds: float):
    if num_steps in self._compiled:
      self.seconds, self.steps = self.seconds + seconds, self.steps + num_steps
    else:
      self._compiled.add(num_steps)
      self.compile_seconds += seconds

  @property
  def tokens_per_sec(self) -> float:
    return self.steps * self.tokens_per_step / self.seconds if self.seconds else float("nan")


def _check_finite(losses: np.ndarray, step: int, last_good_step: int | None):
  if np.all(np.isfinite(losses)):
    return
  first_bad = int(np.argmin(np.isfinite(losses)))
  last_good = "none" if last_good_step is None else f"step {last_good_step}"
  raise TrainingDiverged(f"loss became {losses[first_bad]} at step {step + first_bad + 1}; "
                         f"stopped without saving (last good checkpoint: {last_good})")


def _restore_or_init(config, model, tx, checkpointer, data_iter):
  if checkpointer.latest_step() is None:
    return create_train_state(_init_params_for(model, config), tx)
  state, data_state = checkpointer.restore(abstract_train_state(config, model))
  data_iter.set_state(data_state)
  print(f"resuming from {checkpointer.directory} at step {int(state.step)}")
  return state


def _save_run_files(workdir, config, tokenizer, train_ids):
  config_lib.save_json(config, os.path.join(workdir, workdir_lib.CONFIG))
  tokenizer.save(os.path.join(workdir, workdir_lib.TOKENIZER))
  workdir_lib.save_token_prior(workdir, workdir_lib.unigram_logprobs(train_ids,
                                                                      tokenizer.vocab_size))


def train(config: config_lib.ExperimentConfig, workdir: str) -> dict:
  start_time = time.time()
  os.makedirs(workdir, exist_ok=True)
  tokenizer, train_ids, val_ids = prepare_data(config, workdir)
  config = with_vocab(config, tokenizer.vocab_size)
  if config.data.seq_len > config.model.max_len:
    raise UserError(f"data.seq_len={config.data.seq_len} exceeds model.max_len="
                    f"{config.model.max_len}")
  model = build_model(config.family, config.model)
  tx = make_optimizer(config.optim, config.train.num_steps)
  loss_fn = causal_lm_loss(model)
  data_iter = train_iterator(train_ids, config.data.seq_len, config.data.batch_size,
                             config.data.seed)
  val_batches = eval_batches(val_ids, config.data.seq_len, config.data.eval_batch_size)
  checkpointer = Checkpointer(workdir, config.train.keep_checkpoints)
  state = _restore_or_init(config, model, tx, checkpointer, data_iter)
  # Written only after the checkpoint check, so a mismatched config never
  # overwrites the description of the checkpoints already in the workdir.
  _save_run_files(workdir, config, tokenizer, train_ids)

  multi_step = make_multi_step(loss_fn, tx)
  eval_step = make_eval_step(loss_fn)

  def evaluate_all(params_state) -> dict:
    metrics = {"val_loss": evaluate(eval_step, params_state.params, val_batches)}
    ema_params = find_ema(params_state.opt_state)
    if ema_params is not None:
      metrics["val_loss_ema"] = evaluate(eval_step, ema_params, val_batches)
    return metrics

  schedule = learning_rate_schedule(config.optim, config.train.num_steps)
  base_rng = jax.random.key(config.train.seed)
  t = config.train
  meter = _Throughput(config.data.batch_size * config.data.seq_len)
  step = int(state.step)
  writer = MetricsWriter(workdir, resume_step=step)
  last_good_step = checkpointer.latest_step()
  previous = _read_json(os.path.join(workdir, "summary.json"))
  train_loss = previous.get("train_loss", float("nan"))
  best_val = previous.get("best_val_loss", float("nan"))
  last_eval, window_losses = {}, []
  progress = tqdm(total=t.num_steps, initial=step, desc="train", unit="step",
                  dynamic_ncols=True, mininterval=0.5,
                  disable=not sys.stderr.isatty())  # keep logs and CI output clean
  try:
    while step < t.num_steps:
      num = _next_boundary(step, t) - step
      call_start = time.perf_counter()
      state, metrics = multi_step(state, next_chunk(data_iter, num), base_rng)
      losses = np.asarray(metrics["loss"])  # also waits for the device
      meter.add(num, time.perf_counter() - call_start)
      _check_finite(losses, step, last_good_step)
      step += num
      window_losses.extend(losses.tolist())
      progress.update(num)
      progress.set_postfix(loss=f"{losses.mean():.4f}", tok_s=f"{meter.tokens_per_sec:,.0f}",
                           refresh=False)

      done = step == t.num_steps
      record = {}
      if step % t.log_every == 0 or done:
        train_loss = float(np.mean(window_losses))
        window_losses = []
        record = {"train_loss": train_loss, "lr": float(schedule(step - 1)),
                  "grad_norm": float(np.asarray(metrics["grad_norm"])[-1]),
                  "tokens_per_sec": meter.tokens_per_sec,
                  "tokens_seen": step * meter.tokens_per_step}
      if step % t.eval_every == 0 or done:
        last_eval = evaluate_all(state)
        best_val = np.nanmin([best_val, last_eval["val_loss"]])
        record.update(last_eval)
        progress.write(f"step {step}: train_loss {train_loss:.4f} "
                       f"val_loss {last_eval['val_loss']:.4f}")
      if record:
        writer.write(step, record)
      if step % t.checkpoint_every == 0 or done:
        checkpointer.save(step, state, data_iter.get_state())
        last_good_step = step
  finally:
    progress.close()
    writer.close()
    checkpointer.close()

  if not last_eval:  # nothing left to train: report the checkpoint as it is
    last_eval = evaluate_all(state)
  summary = {
      **last_eval, "best_val_loss": float(np.nanmin([best_val, last_eval["val_loss"]])),
      "train_loss": train_loss, "steps": step,
      "params": sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params)),
      "tokens_per_sec": meter.tokens_per_sec if meter.steps else None,
      "compile_time_s": meter.compile_seconds, "wall_time_s": time.time() - start_time,
      "tokenizer": tokenizer.kind, "vocab_size": tokenizer.vocab_size,
  }
  s = config.sample
  sample_ids = generate(model, state.params, tokenizer.encode(s.prompt),
                        max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                        top_k=s.top_k, top_p=s.top_p, seed=s.seed)
  summary["sample"] = s.prompt + tokenizer.decode(sample_ids[0])
  # A rerun with nothing left to train keeps the earlier throughput figures.
  summary = {**previous, **{k: v if v is not None else previous.get(k)
                            for k, v in summary.items()}}
  write_json(os.path.join(workdir, "summary.json"), summary)
  return summary

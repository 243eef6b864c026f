"""The training loop: data, model, optimizer, checkpoints, metrics, resume.

`train(config, workdir)` is all a runner needs. Rerunning it on the same workdir
resumes from the latest checkpoint: train state and data position together.
"""

import dataclasses
import json
import math
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
from lm.train.state import TrainState, create_train_state
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


def init_params(model, config: config_lib.ExperimentConfig):
  dummy = jnp.zeros((1, config.data.seq_len), jnp.int32)
  init_fn = jax.jit(lambda rng: nn.meta.unbox(model.init(rng, dummy)["params"]))
  return init_fn(jax.random.key(config.train.seed))


def abstract_train_state(config: config_lib.ExperimentConfig, model):
  tx = make_optimizer(config.optim, config.train.num_steps)
  return jax.eval_shape(lambda: create_train_state(init_params(model, config), tx))


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
  if checkpointer.latest_step() is not None:
    state, data_state = checkpointer.restore(abstract_train_state(config, model))
    data_iter.set_state(data_state)
    print(f"resuming from {checkpointer.directory} at step {int(state.step)}")
  else:
    state = create_train_state(init_params(model, config), tx)
  # Written only after the checkpoint check, so a mismatched config never
  # overwrites the description of the checkpoints already in the workdir.
  config_lib.save_json(config, os.path.join(workdir, workdir_lib.CONFIG))
  tokenizer.save(os.path.join(workdir, workdir_lib.TOKENIZER))
  workdir_lib.save_token_prior(workdir, workdir_lib.unigram_logprobs(train_ids,
                                                                      tokenizer.vocab_size))

  num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
  multi_step = make_multi_step(loss_fn, tx)
  eval_step = make_eval_step(loss_fn)
  schedule = learning_rate_schedule(config.optim, config.train.num_steps)
  base_rng = jax.random.key(config.train.seed)
  tokens_per_step = config.data.batch_size * config.data.seq_len
  t = config.train

  step = int(state.step)
  writer = MetricsWriter(workdir, resume_step=step)
  last_good_step = checkpointer.latest_step()
  train_time, timed_steps, compile_time = 0.0, 0, 0.0
  compiled_sizes = set()
  window_losses, record = [], {}
  previous = _read_json(os.path.join(workdir, "summary.json"))
  train_loss = previous.get("train_loss", float("nan"))
  val_loss = float("nan")
  last_eval = {}
  best_val = previous.get("best_val_loss", float("nan"))
  progress = tqdm(total=t.num_steps, initial=step, desc="train", unit="step",
                  dynamic_ncols=True, mininterval=0.5,
                  disable=not sys.stderr.isatty())  # keep logs and CI output clean
  try:
    while step < t.num_steps:
      num = _next_boundary(step, t) - step
      call_start = time.perf_counter()
      chunk = next_chunk(data_iter, num)
      state, metrics = multi_step(state, chunk, base_rng)
      losses = np.asarray(metrics["loss"])  # also waits for the device
      elapsed = time.perf_counter() - call_start
      if num in compiled_sizes:
        train_time, timed_steps = train_time + elapsed, timed_steps + num
      else:  # the first call of each scan length includes its compilation
        compiled_sizes.add(num)
        compile_time += elapsed
      if not np.all(np.isfinite(losses)):
        bad = step + int(np.argmin(np.isfinite(losses))) + 1
        raise TrainingDiverged(
            f"loss became {losses[~np.isfinite(losses)][0]} at step {bad}; stopped without "
            f"saving (last good checkpoint: "
            f"{'none' if last_good_step is None else f'step {last_good_step}'})")
      step += num
      window_losses.extend(losses.tolist())
      tokens_per_sec = timed_steps * tokens_per_step / train_time if train_time else float("nan")
      progress.update(num)
      progress.set_postfix(loss=f"{losses.mean():.4f}", tok_s=f"{tokens_per_sec:,.0f}",
                           refresh=False)

      done = step == t.num_steps
      if step % t.log_every == 0 or done:
        train_loss = float(np.mean(window_losses))
        record = {"train_loss": train_loss, "lr": float(schedule(step - 1)),
                  "grad_norm": float(np.asarray(metrics["grad_norm"])[-1]),
                  "tokens_per_sec": tokens_per_sec, "tokens_seen": step * tokens_per_step}
        window_losses = []
      if step % t.eval_every == 0 or done:
        val_loss = evaluate(eval_step, state.params, val_batches)
        best_val = val_loss if math.isnan(best_val) else min(best_val, val_loss)
        record = {**record, "val_loss": val_loss}
        ema_params = find_ema(state.opt_state)
        if ema_params is not None:
          record["val_loss_ema"] = evaluate(eval_step, ema_params, val_batches)
        last_eval = {k: v for k, v in record.items() if k.startswith("val_")}
        progress.write(f"step {step}: train_loss {train_loss:.4f} val_loss {val_loss:.4f}")
      if record:
        writer.write(step, record)
        record = {}
      if step % t.checkpoint_every == 0 or done:
        checkpointer.save(step, state, data_iter.get_state())
        last_good_step = step
  finally:
    progress.close()
    writer.close()
    checkpointer.close()

  if math.isnan(val_loss):  # nothing left to train: report the checkpoint as it is
    val_loss = evaluate(eval_step, state.params, val_batches)
  summary = {
      "val_loss": val_loss, "best_val_loss": best_val, "train_loss": train_loss,
      "steps": step, "params": num_params,
      "tokens_per_sec": timed_steps * tokens_per_step / train_time if train_time else None,
      "compile_time_s": compile_time, "wall_time_s": time.time() - start_time,
      "tokenizer": tokenizer.kind, "vocab_size": tokenizer.vocab_size, **last_eval,
  }
  s = config.sample
  prompt_ids = tokenizer.encode(s.prompt)
  sample_ids = generate(model, state.params, prompt_ids, max_new_tokens=s.max_new_tokens,
                        temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, seed=s.seed)
  summary["sample"] = s.prompt + tokenizer.decode(sample_ids[0])
  write_json(os.path.join(workdir, "summary.json"), summary)
  return summary

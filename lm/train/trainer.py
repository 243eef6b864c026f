"""The training loop: data, model, optimizer, checkpoints, metrics, resume.

`train(config, workdir)` is all a runner needs. Rerunning it on the same workdir
resumes from the latest checkpoint: train state and data position together.
"""

import json
import os
import sys
import time

import jax
import numpy as np
from tqdm import tqdm

from lm import config as config_lib
from lm import workdir as workdir_lib
from lm.adapt import pretrained as pretrained_lib
from lm.adapt import trainable as trainable_lib
from lm.data.pipeline import next_chunk
from lm.errors import UserError
from lm.models.registry import build_model
from lm.tasks import build_task
from lm.train import data_parallel, mfu
from lm.train.checkpoint import Checkpointer
from lm.train.ema import find_ema
from lm.train.layout import Layout
from lm.train.metrics import MetricsWriter, write_json
from lm.train.monitor import LossMonitor, TrainingDiverged  # noqa: F401 (re-exported)
from lm.train.optimizer import learning_rate_schedule, make_optimizer
from lm.train.state import create_train_state
from lm.train.step import make_eval_step, make_multi_step
from lm.train.task import Task


def _standard_state(model, params, tx):
  return create_train_state(params, tx)


def abstract_train_state(config: config_lib.ExperimentConfig, model, init_params,
                         create_state=None, layout: Layout | None = None):
  """Shapes, dtypes and shardings of the train state, without computing it (to restore into).

  Without a layout: the config's own mesh and rules (on this process's devices).
  """
  tx = make_optimizer(config.optim, config.train.num_steps, config.trainable)
  layout = layout or Layout.from_config(config.sharding)
  abstract, _ = layout.state_shardings(_state_maker(config, model, tx, init_params, create_state))
  return abstract


def _state_maker(config, model, tx, init_params, create_state=None):
  create_state = create_state or _standard_state
  return lambda: create_state(model, init_params(model, config.train.seed), tx)


def evaluate(eval_step, params, batches) -> dict:
  """Every metric averaged over all batches, weighted by its count (see Task.eval_weights)."""
  sums, counts = {}, {}
  for batch in batches:
    for name, (total, count) in eval_step(params, batch).items():
      sums[name] = sums.get(name, 0.0) + float(total)
      counts[name] = counts.get(name, 0.0) + float(count)
  return {name: sums[name] / max(counts[name], 1e-12) for name in sums}


def _next_boundary(step: int, t: config_lib.TrainConfig) -> int:
  """The next step at which we must stop the scan: log, eval, checkpoint or the end."""
  candidates = [t.num_steps, step + t.steps_per_call]
  candidates += [(step // every + 1) * every for every in (t.log_every, t.eval_every,
                                                           t.checkpoint_every)]
  return min(candidates)


def _fetch(data_iter, step: int, t: config_lib.TrainConfig):
  """The batches of the call that starts at `step`, and the data position after them
  (what a checkpoint taken at the end of that call must record)."""
  num = _next_boundary(step, t) - step
  chunk = next_chunk(data_iter, num)
  return num, chunk, data_iter.get_state()


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


def _restore_or_init(config, model, tx, checkpointer, task: Task, layout: Layout):
  """The train state, placed by `layout`: restored if there is a checkpoint, else initialised."""
  make_state = _state_maker(config, model, tx, task.init_params, task.create_state)
  abstract, shardings = layout.state_shardings(make_state)
  if checkpointer.latest_step() is None:
    return layout.init_state(make_state, shardings), shardings
  state, data_state = checkpointer.restore(abstract)
  task.train_iter.set_state(data_state)
  print(f"resuming from {checkpointer.directory} at step {int(state.step)}")
  return state, shardings


def _save_run_files(workdir, config, task: Task):
  if jax.process_index() != 0:  # in a multi-process run the first process writes the files
    return
  config_lib.save_json(config, os.path.join(workdir, workdir_lib.CONFIG))
  if task.save_files is not None:
    task.save_files(workdir)


def train(config: config_lib.ExperimentConfig, workdir: str) -> dict:
  start_time = time.time()
  workdir_lib.ensure_writable(workdir)
  layout = Layout.from_config(config.sharding)
  pretrained_lib.copy_tokenizer(config, workdir)  # fine-tuning reads with the base's tokenizer
  config, task = build_task(config, workdir)
  task = pretrained_lib.with_pretrained(task, config, workdir)  # no-op without config.init_from
  accum = config.train.grad_accum_steps
  if config.data.batch_size % accum:
    raise UserError(f"data.batch_size={config.data.batch_size} is not divisible by "
                    f"train.grad_accum_steps={accum}")
  layout.check_batch(config.data.batch_size // accum, "data.batch_size / train.grad_accum_steps")
  for batch in task.eval_batches[:1]:
    layout.check_batch(len(next(iter(batch.values()))), "the eval batch size")
  model = build_model(config.family, config.model)
  tx = make_optimizer(config.optim, config.train.num_steps, config.trainable)
  loss_fn = task.make_loss(model)
  data_iter = task.train_iter
  t = config.train
  checkpointer = Checkpointer(workdir, t.keep_checkpoints, best_metric=t.best_metric or None,
                              best_mode=t.best_mode, keep_best=t.keep_best)
  state, state_shardings = _restore_or_init(config, model, tx, checkpointer, task, layout)
  # Written only after the checkpoint check, so a mismatched config never
  # overwrites the description of the checkpoints already in the workdir.
  _save_run_files(workdir, config, task)

  dp_axes = data_parallel.replicated_batch_axes(layout, state_shardings)
  if task.make_multi_step is not None:
    multi_step = task.make_multi_step(loss_fn, tx)
  elif dp_axes:  # params whole on every device: one all-reduce per step (data_parallel.py)
    multi_step = data_parallel.make_multi_step(loss_fn, tx, layout.mesh, dp_axes,
                                               task.eval_weights, accum)
  else:
    multi_step = make_multi_step(loss_fn, tx, state_shardings, accum)
  eval_step = make_eval_step(loss_fn, task.eval_weights)
  val_batches = [layout.put_batch(b) for b in task.eval_batches]

  def evaluate_all(params_state) -> dict:
    with layout.context():
      metrics = {f"val_{k}": v for k, v in evaluate(eval_step, params_state.params,
                                                     val_batches).items()}
      ema_params = find_ema(params_state.opt_state)
      if ema_params is not None:
        metrics.update({f"val_{k}_ema": v for k, v in evaluate(eval_step, ema_params,
                                                                val_batches).items()})
    return metrics

  num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
  trainable_lib.check_patterns(state.params, config.trainable)
  trainable = trainable_lib.count(state.params, config.trainable)
  if config.trainable:
    print(f"trainable: {trainable['trainable_params']:,} of {num_params:,} parameters "
          f"({100 * trainable['trainable_fraction']:.3f}%)")
  flops_per_token = mfu.run_flops_per_token(config, task, num_params)  # every family
  peak = mfu.peak_flops(mfu.peak_dtype(getattr(config.model, "matmul_dtype", "float32")))
  schedule = learning_rate_schedule(config.optim, config.train.num_steps)
  base_rng = jax.random.key(config.train.seed)
  t = config.train
  meter = _Throughput(task.tokens_per_step)
  step = int(state.step)
  is_chief = jax.process_index() == 0
  writer = MetricsWriter(workdir, resume_step=step) if is_chief else None
  last_good_step = checkpointer.latest_step()
  previous = _read_json(os.path.join(workdir, "summary.json"))
  train_loss = previous.get("train_loss", float("nan"))
  best_val = previous.get("best_val_loss", float("nan"))
  last_eval, window_losses = {}, []
  monitor = LossMonitor(config.optim.nonfinite == "skip", config.optim.max_nonfinite)
  progress = tqdm(total=t.num_steps, initial=step, desc="train", unit="step",
                  dynamic_ncols=True, mininterval=0.5,
                  disable=not sys.stderr.isatty())  # keep logs and CI output clean
  try:
    pending = _fetch(data_iter, step, t) if step < t.num_steps else None
    while step < t.num_steps:
      num, chunk, data_state = pending
      call_start = time.perf_counter()
      batches = layout.put_batch(chunk, leading_dims=1)
      with layout.context():
        state, metrics = multi_step(state, batches, base_rng)
      # The host reads the next chunk while the devices run this one (dispatch is async).
      pending = _fetch(data_iter, step + num, t) if step + num < t.num_steps else None
      losses = np.asarray(metrics["loss"])  # also waits for the device
      meter.add(num, time.perf_counter() - call_start)
      spikes_before = len(monitor.spikes)
      monitor.update(losses, step, last_good_step)
      for spike in monitor.spikes[spikes_before:]:
        progress.write(f"warning: loss spike at step {spike}")
      step += num
      window_losses.extend(losses[np.isfinite(losses)].tolist())
      progress.update(num)
      progress.set_postfix(loss=f"{losses.mean():.4f}", tok_s=f"{meter.tokens_per_sec:,.0f}",
                           refresh=False)

      done = step == t.num_steps
      record = {}
      if step % t.log_every == 0 or done:
        train_loss = float(np.mean(window_losses)) if window_losses else float("nan")
        window_losses = []
        record = {"train_loss": train_loss, "lr": float(schedule(step - 1)),
                  "grad_norm": float(np.asarray(metrics["grad_norm"])[-1]),
                  "tokens_per_sec": meter.tokens_per_sec,
                  "model_flops_per_sec": meter.tokens_per_sec * flops_per_token,
                  "mfu": meter.tokens_per_sec * flops_per_token / peak,
                  "tokens_seen": step * meter.tokens_per_step, **monitor.counts()}
      if step % t.eval_every == 0 or done:
        last_eval = evaluate_all(state)
        best_val = np.nanmin([best_val, last_eval["val_loss"]])
        record.update(last_eval)
        progress.write(f"step {step}: train_loss {train_loss:.4f} "
                       f"val_loss {last_eval['val_loss']:.4f}")
      if record:
        if writer is not None:
          writer.write(step, record)
      if step % t.checkpoint_every == 0 or done:
        checkpointer.save(step, state, data_state, metrics={**last_eval, **record})
        last_good_step = step
  finally:
    progress.close()
    if writer is not None:
      writer.close()
    checkpointer.close()

  if not last_eval:  # nothing left to train: report the checkpoint as it is
    last_eval = evaluate_all(state)
  summary = {
      **last_eval, "best_val_loss": float(np.nanmin([best_val, last_eval["val_loss"]])),
      "train_loss": train_loss, "steps": step,
      "params": num_params, **trainable,
      "model_flops_per_token": flops_per_token, "peak_flops": peak,
      "mfu": meter.tokens_per_sec * flops_per_token / peak if meter.steps else None,
      "tokens_per_sec": meter.tokens_per_sec if meter.steps else None,
      "compile_time_s": meter.compile_seconds, "wall_time_s": time.time() - start_time,
      "devices": jax.device_count(),
      "tokenizer": task.tokenizer.kind, "vocab_size": task.tokenizer.vocab_size,
  }
  if task.sample is not None:
    summary["sample"] = task.sample(model, state.params)
  if task.final_metrics is not None:
    summary.update(task.final_metrics(model, state.params))
  # A rerun with nothing left to train keeps the earlier throughput figures.
  summary = {**previous, **{k: v if v is not None else previous.get(k)
                            for k, v in summary.items()}}
  if is_chief:
    write_json(os.path.join(workdir, "summary.json"), summary)
    if config.init_from and config.trainable:  # the trained part, apart from the frozen base
      pretrained_lib.save_adapter(workdir, config, state.params, step)
  return summary

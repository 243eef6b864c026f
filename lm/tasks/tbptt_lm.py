"""Next-token prediction with truncated BPTT: consecutive windows and a carried state.

The causal-LM task for recurrent models (`family = "recurrent"`): same corpus split,
tokenizer, eval batches, sample and workdir files as `causal_lm`, but training
windows are consecutive per batch row (`consecutive_train_iterator`) and the model's
final state after each window starts the next one. The state lives in the train
state (`CarryTrainState`), so checkpoints and resumes keep it.
"""

import dataclasses

from lm.data.pipeline import consecutive_train_iterator, eval_batches
from lm.errors import UserError
from lm.models.rnn import create_carry_state, make_tbptt_multi_step, tbptt_loss
from lm.tasks import causal_lm
from lm.train.task import Task


@dataclasses.dataclass(frozen=True)
class TBPTTConfig:
  """data.seq_len is the truncation length. `reset_every = K > 0` zeroes each batch row's
  carried state every K windows (rows staggered), besides at each pass's start: without
  it the state is almost never zero in training, and sampling or scoring from an empty
  state (a prompt, a 64-token window) meets a state the model has barely seen."""
  reset_every: int = 0

  def __post_init__(self):
    if self.reset_every < 0:
      raise UserError(f"task_config.reset_every must be >= 0, got {self.reset_every}")


def state_factory(config):
  """(model, params, tx) -> CarryTrainState with a zero state for every batch row."""
  if not hasattr(config.model, "cell"):
    raise UserError(f"task 'tbptt_lm' needs a recurrent model (family 'recurrent'), got family "
                    f"{config.family!r}")

  def create_state(model, params, tx):
    return create_carry_state(params, tx, model.init_carry(config.data.batch_size))

  return create_state


def build(config, workdir: str):
  create_state = state_factory(config)
  config, tokenizer, train_ids, val_ids, sample, save_files = causal_lm.prepare(config,
                                                                               workdir)
  d = config.data
  task = Task(
      tokenizer=tokenizer,
      train_iter=consecutive_train_iterator(train_ids, d.seq_len, d.batch_size,
                                            config.task_config.reset_every),
      eval_batches=eval_batches(val_ids, d.seq_len, d.eval_batch_size),
      tokens_per_step=d.batch_size * d.seq_len,
      make_loss=tbptt_loss,
      init_params=lambda model, seed: causal_lm.init_params(model, d.seq_len, seed),
      sample=sample, save_files=save_files,
      create_state=create_state, make_multi_step=make_tbptt_multi_step)
  return config, task

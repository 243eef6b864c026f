"""Next-token prediction with truncated BPTT: consecutive windows and a carried state.

The causal-LM task for recurrent models (`family = "recurrent"`): same corpus split,
tokenizer, eval batches, sample and workdir files as `causal_lm`, but training
windows are consecutive per batch row (`consecutive_train_iterator`) and the model's
final state after each window starts the next one. The state lives in the train
state (`CarryTrainState`), so checkpoints and resumes keep it.
"""

import dataclasses
import os

from lm import workdir as workdir_lib
from lm.data.pipeline import consecutive_train_iterator, eval_batches
from lm.errors import UserError
from lm.models.rnn import create_carry_state, make_tbptt_multi_step, tbptt_loss
from lm.sampling import generate
from lm.tasks import causal_lm
from lm.train.task import Task


@dataclasses.dataclass(frozen=True)
class TBPTTConfig:
  """No knobs beyond `data.*`: data.seq_len is the truncation length."""


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
  tokenizer, train_ids, val_ids = causal_lm.prepare_data(config, workdir)
  config = causal_lm.with_vocab(config, tokenizer.vocab_size)
  d = config.data
  if d.seq_len > config.model.max_len:
    raise UserError(f"data.seq_len={d.seq_len} exceeds model.max_len={config.model.max_len}")
  s = config.sample

  def sample(model, params) -> str:
    ids = generate(model, params, tokenizer.encode(s.prompt), max_new_tokens=s.max_new_tokens,
                   temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, seed=s.seed)
    return s.prompt + tokenizer.decode(ids[0])

  def save_files(run_dir: str):
    tokenizer.save(os.path.join(run_dir, workdir_lib.TOKENIZER))
    workdir_lib.save_token_prior(run_dir, workdir_lib.unigram_logprobs(train_ids,
                                                                        tokenizer.vocab_size))

  task = Task(
      tokenizer=tokenizer,
      train_iter=consecutive_train_iterator(train_ids, d.seq_len, d.batch_size),
      eval_batches=eval_batches(val_ids, d.seq_len, d.eval_batch_size),
      tokens_per_step=d.batch_size * d.seq_len,
      make_loss=tbptt_loss,
      init_params=lambda model, seed: causal_lm.init_params(model, d.seq_len, seed),
      sample=sample, save_files=save_files,
      create_state=create_state, make_multi_step=make_tbptt_multi_step)
  return config, task

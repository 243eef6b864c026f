"""Next-token prediction on a text corpus: random windows to train, every token to evaluate.

The corpus is split into train/val (the last `data.val_fraction`), tokenized with the
run's tokenizer (built once, then reloaded from the workdir), and served by the grain
pipeline in lm/data/pipeline.py. The summary's sample continues `config.sample.prompt`.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp

from lm import workdir as workdir_lib
from lm.data.corpus import read_text, split_text
from lm.data.pipeline import eval_batches, train_iterator
from lm.data.tokenizers import build_tokenizer, load_tokenizer
from lm.errors import UserError
from lm.objectives import causal_lm_loss
from lm.sampling import generate
from lm.train.task import Task


@dataclasses.dataclass(frozen=True)
class CausalLMConfig:
  """No knobs beyond `data.*` yet; the section exists so every task has one."""


def prepare_data(config, workdir: str):
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


def with_vocab(config, vocab_size: int):
  if config.model.vocab_size not in (0, vocab_size):
    raise UserError(f"model.vocab_size={config.model.vocab_size} but the tokenizer has "
                    f"{vocab_size} tokens; leave model.vocab_size at 0 to use the tokenizer's")
  return dataclasses.replace(config, model=dataclasses.replace(config.model, vocab_size=vocab_size))


def init_params(model, seq_len: int, seed: int):
  """Params as `model.init` makes them: boxed with logical axis names (the trainer places
  and unboxes them; `nn.meta.unbox` gives plain arrays)."""
  dummy = jnp.zeros((1, seq_len), jnp.int32)
  return model.init(jax.random.key(seed), dummy)["params"]


def prepare(config, workdir: str):
  """What every next-token task shares: data, tokenizer, the filled-in config, the
  summary sample and the workdir files (tokenizer, first-token prior)."""
  tokenizer, train_ids, val_ids = prepare_data(config, workdir)
  config = with_vocab(config, tokenizer.vocab_size)
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

  return config, tokenizer, train_ids, val_ids, sample, save_files


def build(config, workdir: str):
  config, tokenizer, train_ids, val_ids, sample, save_files = prepare(config, workdir)
  d = config.data
  task = Task(
      tokenizer=tokenizer,
      train_iter=train_iterator(train_ids, d.seq_len, d.batch_size, d.seed),
      eval_batches=eval_batches(val_ids, d.seq_len, d.eval_batch_size),
      tokens_per_step=d.batch_size * d.seq_len,
      make_loss=causal_lm_loss,
      init_params=lambda model, seed: init_params(model, d.seq_len, seed),
      sample=sample, save_files=save_files)
  return config, task

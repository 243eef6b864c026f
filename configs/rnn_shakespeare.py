"""Recurrent LMs (LSTM by default, or GRU / vanilla RNN) on tiny Shakespeare, char level.

Truncated BPTT: each batch row reads the corpus consecutively, 64 characters per step,
and the final state of one window starts the next (task `tbptt_lm`), so context is
unbounded while gradients stop at window boundaries. Same tokenizer, data split,
optimizer, eval and runner as configs/shakespeare_char.py.

Run:
  python -m experiments.run --config=configs/rnn_shakespeare.py --workdir=/tmp/lstm
  python -m experiments.run --config=configs/rnn_shakespeare.py:cell=gru --workdir=/tmp/gru
  python -m experiments.run --config=configs/rnn_shakespeare.py:cell=rnn --workdir=/tmp/rnn
Expected (2-layer, 256 hidden, 2000 steps of 12 x 64 characters, 2 CPU cores, a few
minutes): LSTM val_loss ~1.6 (see docs/classic_lms.md for measured figures).
Sample from it like any run:
  python -m experiments.run --workdir=/tmp/lstm --mode=sample --prompt="ROMEO:"

Variants (`--config=configs/rnn_shakespeare.py:ARGS`, comma separated):
  smoke          a few-seconds run (1 layer, 64 hidden, 40 steps)
  cell=lstm|gru|rnn
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = base.parse_arg(arg, smoke=False, cell="lstm")
  c = ml_collections.ConfigDict()
  c.kind = "train_lm"
  c.family = "recurrent"
  c.task = "tbptt_lm"
  # reset_every=K: zero each lane's carried state every K windows (staggered), so the
  # model also learns to start from an empty state, as sampling from a prompt does.
  c.task_config = ml_collections.ConfigDict(dict(reset_every=0))

  c.data = ml_collections.ConfigDict()
  c.data.path = base.TINY_SHAKESPEARE
  c.data.tokenizer = "char"
  c.data.vocab_size = 0
  c.data.val_fraction = 0.1
  c.data.seq_len = 64  # the truncation length of BPTT
  c.data.batch_size = 12  # parallel lanes through the corpus
  c.data.eval_batch_size = 128
  c.data.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.vocab_size = 0  # from the tokenizer
  c.model.cell = args.cell
  c.model.num_layers = 2
  c.model.embed_dim = 128
  c.model.hidden_dim = 256
  c.model.dropout = 0.0
  c.model.max_len = 1024
  c.model.tie_embeddings = False

  c.optim = base.optim(lr=2e-3, min_lr=2e-4, weight_decay=0.0)

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 2000
  c.train.log_every = 10
  c.train.eval_every = 250
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 3
  c.train.steps_per_call = 10
  c.train.seed = 0

  c.sample = ml_collections.ConfigDict()
  c.sample.prompt = "ROMEO:"
  c.sample.max_new_tokens = 200
  c.sample.temperature = 0.8
  c.sample.top_k = 40
  c.sample.top_p = 0.95
  c.sample.seed = 0

  if args.smoke:
    c.model.num_layers = 1
    c.model.embed_dim = 32
    c.model.hidden_dim = 64
    c.data.seq_len = 32
    c.data.batch_size = 8
    c.optim.warmup_steps = 5
    c.train.num_steps = 40
    c.train.eval_every = 20
    c.train.checkpoint_every = 20
    c.sample.max_new_tokens = 50
  return c

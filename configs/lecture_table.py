"""The lecture's table: Kneser-Ney n-gram vs LSTM vs Transformer on tiny Shakespeare (char).

Run (trains both neural models, ~40 min on 2 quiet CPU cores; a rerun resumes):
  python -m experiments.run --config=configs/lecture_table.py --workdir=/tmp/lecture_table
Expected: the n-gram (n chosen on a dev split, ~7) reaches ~1.52 nats/char (ppl ~4.6);
the Transformer beats it (~1.46); the LSTM lands between the two (docs/classic_lms.md).
Writes table.md, table.json and table.png (val loss vs training wall-clock).

Budgets: both neural models see the same number of training tokens (8.2M, ~8 passes over
the 1M training characters):
  Transformer  LLaMA-style decoder (RoPE, RMSNorm, SwiGLU, no biases), 4 layers x 256,
               256-token context, batch 16, 2000 steps, dropout 0.1, lr 2e-3, bf16 matmuls
  LSTM         configs/rnn_shakespeare.py (2 x 256), truncated BPTT over 64 characters,
               32 lanes, each lane's state reset every 16 windows, 4000 steps
The default 4 x 128 GPT of configs/shakespeare_char.py (64-token context, 1.5M tokens)
does not beat the n-gram: its row was 1.887 (docs/classic_lms.md).

Variants (`--config=configs/lecture_table.py:ARGS`):
  smoke     n-gram orders 2..3 and the two neural configs' :smoke variants (a minute or two)
  steps=N   the Transformer's steps (default 2000); the LSTM trains the same tokens
Overrides: --config.lstm.train.num_steps=... --config.transformer.model.num_layers=...
"""

import ml_collections

from configs import base, rnn_shakespeare, shakespeare_char

TRANSFORMER_STEPS = 2000


def transformer(smoke: bool) -> ml_collections.ConfigDict:
  c = shakespeare_char.recipe("arch=llama" + (",smoke" if smoke else ""))
  if smoke:
    return c
  c.model.update(num_layers=4, num_heads=4, num_kv_heads=0, embed_dim=256, mlp_dim=688,
                 max_len=256, dropout=0.1, matmul_dtype="bfloat16")
  c.data.update(seq_len=256, batch_size=16)
  c.optim.update(lr=2e-3, min_lr=2e-4, warmup_steps=200)
  c.train.update(num_steps=TRANSFORMER_STEPS, eval_every=250, checkpoint_every=500)
  return c


def lstm(smoke: bool) -> ml_collections.ConfigDict:
  c = rnn_shakespeare.get_config("smoke" if smoke else None)
  if not smoke:
    c.data.batch_size = 32
    # Every lane restarts from an empty state every 16 windows (1024 characters): with 32
    # lanes the state is otherwise zero only once a pass, and samples from a prompt
    # (an empty state) degenerate ("ROMEO:QQVVVQ...", measured without it).
    c.task_config.reset_every = 16
    c.train.update(eval_every=500, checkpoint_every=1000)
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = base.parse_arg(arg, smoke=False, steps=0)
  c = ml_collections.ConfigDict()
  c.kind = "lecture_table"
  c.data = ml_collections.ConfigDict()
  c.data.path = base.TINY_SHAKESPEARE
  c.data.tokenizer = "char"
  c.data.vocab_size = 0
  c.data.val_fraction = 0.1
  c.ngram_orders = "2,3" if args.smoke else "4,5,6,7,8,10"
  c.dev_fraction = 0.1
  c.sample_chars = 50 if args.smoke else 200
  c.lstm = lstm(args.smoke)
  c.transformer = transformer(args.smoke)
  for sub in (c.lstm, c.transformer):
    for field in ("path", "tokenizer", "vocab_size", "val_fraction"):
      sub.data[field] = c.data[field]
  if args.steps:
    c.transformer.train.num_steps = args.steps
  # The same training tokens for both: LSTM steps = Transformer tokens / LSTM tokens per step.
  tokens = c.transformer.train.num_steps * c.transformer.data.batch_size * \
      c.transformer.data.seq_len
  lstm_step = c.lstm.data.batch_size * c.lstm.data.seq_len
  if tokens % lstm_step:
    raise ValueError(f"the Transformer's {tokens} training tokens are not a whole number of "
                     f"LSTM steps of {lstm_step} tokens")
  c.lstm.train.num_steps = tokens // lstm_step
  return c

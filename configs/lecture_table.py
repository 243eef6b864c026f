"""The lecture's table: Kneser-Ney n-gram vs LSTM vs Transformer on tiny Shakespeare (char).

Run (trains both neural models: tens of minutes on 2 busy CPU cores; a rerun resumes):
  python -m experiments.run --config=configs/lecture_table.py --workdir=/tmp/lecture_table
Expected: the n-gram (n chosen on a dev split, ~7) reaches ~1.52 nats/char (ppl ~4.6);
the Transformer beats it; where the LSTM lands is in docs/classic_lms.md. Writes
table.md, table.json and table.png (val loss vs training wall-clock).

Budgets: the LSTM (configs/rnn_shakespeare.py) and the Transformer
(configs/shakespeare_char.py) train for the same steps x batch x 64-token windows.

Variants (`--config=configs/lecture_table.py:ARGS`):
  smoke     n-gram orders 2..3 and the two neural configs' :smoke variants (a minute or two)
  steps=N   train both neural models for N steps (same tokens each; default 2000)
Overrides: --config.lstm.train.num_steps=... --config.transformer.model.num_layers=...
"""

import ml_collections

from configs import base, rnn_shakespeare, shakespeare_char


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = base.parse_arg(arg, smoke=False, steps=0)
  sub_arg = "smoke" if args.smoke else None
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
  c.lstm = rnn_shakespeare.get_config(sub_arg)
  c.transformer = shakespeare_char.get_config(sub_arg)
  for sub in (c.lstm, c.transformer):
    for field in ("path", "tokenizer", "vocab_size", "val_fraction"):
      sub.data[field] = c.data[field]
    if args.steps:
      sub.train.num_steps = args.steps
  return c

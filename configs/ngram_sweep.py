""""n too small or too big?": n-gram orders 1..10 on tiny Shakespeare, char and word level.

Run:
  python -m experiments.run --config=configs/ngram_sweep.py --workdir=/tmp/ngram_sweep
Expected (about a minute on 2 CPU cores): Kneser-Ney char perplexity falls from 28.4
(n=1) to ~4.57 (n=8) and then flattens, word perplexity bottoms out at n=4 (~1490);
add-k (k=0.01) shows the lecture's U-curve, best at n=4 (char) and n=1 (word), as the
fraction of val n-grams never seen in training climbs towards 1. Writes sweep.md,
sweep.json and sweep.png.

Variants (`--config=configs/ngram_sweep.py:ARGS`):
  smoke   orders 1..3 only (a few seconds)
Overrides: --config.orders=1,2,3  --config.tokenizers=char  --config.smoothings=kneser_ney
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = base.parse_arg(arg, smoke=False)
  c = ml_collections.ConfigDict()
  c.kind = "ngram_sweep"
  c.data = ml_collections.ConfigDict()
  c.data.path = base.TINY_SHAKESPEARE
  c.data.val_path = ""
  c.data.val_fraction = 0.1
  c.data.vocab_size = 0  # word: keep every training word; the rest of val is <unk>
  c.data.per_line = False  # one token stream, as the neural models see it
  c.orders = ",".join(str(n) for n in range(1, 11))
  c.tokenizers = "char,word"
  c.smoothings = "kneser_ney,add_k"
  c.k = 0.01
  if args.smoke:
    c.orders = "1,2,3"
  return c

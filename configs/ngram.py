"""A Kneser-Ney n-gram LM (NumPy counts, no training loop): fit, score, export ARPA, sample.

Run (char-level 6-gram on tiny Shakespeare, the last 10% of the text is validation):
  python -m experiments.run --config=configs/ngram.py --workdir=/tmp/ngram
Expected: val_loss ~1.52 nats/char (val_ppl ~4.58), build_time_s ~1.5 s on 2 CPU cores.

Word level, one sentence per line, a separate validation file (KenLM's conventions;
`lmplz -o 3` + `query` on the same files give the same perplexities):
  python -m experiments.run --config=configs/ngram.py --workdir=W --config.data.path=FILE \
      --config.data.val_path=FILE2 --config.data.tokenizer=word --config.model.order=3 \
      --config.data.per_line=True

Variants (`--config=configs/ngram.py:ARGS`, comma separated):
  smoke           order 3 (at most) and a 50-token sample: about a second
  order=N         n-gram order (default 6)
  smoothing=add_k add-k instead of interpolated modified Kneser-Ney (`k=0.01` sets k)
  tokenizer=word  whitespace words (with per_line for sentence mode)
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = base.parse_arg(arg, smoke=False, order=6, smoothing="kneser_ney", k=1.0,
                        tokenizer="char", per_line=False)
  c = ml_collections.ConfigDict()
  c.kind = "ngram"
  c.family = "ngram"

  c.data = ml_collections.ConfigDict()
  c.data.path = base.TINY_SHAKESPEARE
  c.data.val_path = ""  # "": the last val_fraction of data.path
  c.data.val_fraction = 0.1
  c.data.tokenizer = args.tokenizer
  c.data.vocab_size = 0
  c.data.per_line = args.per_line

  c.model = ml_collections.ConfigDict()
  c.model.order = args.order
  c.model.smoothing = args.smoothing
  c.model.k = args.k
  c.model.vocab_size = 0  # from the tokenizer

  c.sample = ml_collections.ConfigDict()
  c.sample.prompt = "ROMEO:"
  c.sample.max_new_tokens = 200
  c.sample.temperature = 1.0
  c.sample.top_k = 0
  c.sample.top_p = 1.0
  c.sample.seed = 0

  if args.smoke:
    c.model.order = min(args.order, 3)
    c.sample.max_new_tokens = 50
  return c

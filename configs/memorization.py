"""Memorisation study: canary exposure vs repeats and model size, extraction, PII scrubbing.

Run:
  python -m experiments.run --config=configs/memorization.py --workdir=/tmp/mem
Expected (measured in docs/privacy.md, shared 2-core CPU): exposure rises with the number
of repeats k, from chance (~1.4 bits) at k=0 and 1 to 7.5 bits (L2_d64) and the 13.3-bit
maximum (L4_d128) at k=64; no ordinary training window is extractable (0/256, as for
held-out text); the planted card number's exposure falls from 12.3 bits to 3.8 (chance)
when the corpus is PII-scrubbed. Writes table.md and exposure.png.

Variants: `:smoke` (tiny models, 3 secret digits, 30 steps; ~1 min of CPU).
"""

import ml_collections

from configs import base, shakespeare_char


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = base.parse_arg(arg, smoke=False)
  c = ml_collections.ConfigDict()
  c.kind = "memorization"

  c.study = ml_collections.ConfigDict()
  c.study.corpus = base.TINY_SHAKESPEARE
  c.study.corpus_chars = 300_000  # a third of tiny Shakespeare: several epochs in minutes
  c.study.val_fraction = 0.1
  c.study.repeats = (0, 1, 4, 16, 64)
  c.study.canaries_per_repeat = 3
  c.study.secret_digits = 4  # 10^4 candidates, all scored: ~3 s a canary
  c.study.pii_repeats = 64
  c.study.scrub_size = "L2_d64"
  c.study.extraction_sequences = 256
  c.study.prefix_len = 32
  c.study.suffix_len = 32
  c.study.seed = 0

  # The LM recipe every size trains with (configs/shakespeare_char.py); data.path is set to
  # the canaried corpus by the study.
  lm = shakespeare_char.recipe()
  lm.kind = "train_lm"
  lm.train.num_steps = 1500
  lm.train.eval_every = 500
  lm.train.checkpoint_every = 1500
  lm.train.log_every = 50
  lm.train.steps_per_call = 50
  lm.data.batch_size = 16
  lm.data.eval_batch_size = 256
  lm.sample.max_new_tokens = 100
  c.lm = lm

  c.sizes = ml_collections.ConfigDict()
  # Two model sizes (names sort in size order).
  c.sizes.L2_d64 = dict(num_layers=2, num_heads=2, embed_dim=64, mlp_dim=256)
  c.sizes.L4_d128 = dict(num_layers=4, num_heads=4, embed_dim=128, mlp_dim=512)

  if args.smoke:
    c.study.corpus_chars = 20_000
    c.study.repeats = (0, 8)
    c.study.canaries_per_repeat = 1
    c.study.secret_digits = 3
    c.study.pii_repeats = 8
    c.study.extraction_sequences = 16
    c.study.prefix_len = 16
    c.study.suffix_len = 16
    lm.train.num_steps = 30
    lm.train.eval_every = 30
    lm.train.checkpoint_every = 30
    lm.train.log_every = 10
    lm.train.steps_per_call = 10
    lm.data.seq_len = 32
    lm.model.max_len = 32
    c.sizes.L2_d64 = dict(num_layers=1, num_heads=2, embed_dim=32, mlp_dim=128)
    c.sizes.L4_d128 = dict(num_layers=2, num_heads=2, embed_dim=32, mlp_dim=128)
  return c

"""BERT pretraining (masked LM + next-sentence prediction) on tiny Shakespeare, char level.

Run:
  python -m experiments.run --config=configs/bert_shakespeare.py --workdir=/tmp/bert
Expected (docs/bert.md has the measured run): after 1000 steps val_mlm_accuracy ~0.54,
val_mlm_loss ~1.55, val_nsp_accuracy ~0.64; 0.46 already at step 500. ~225 CPU-seconds:
229 s wall on the 2-core CPU at load ~4 (481 s at load ~9), less when quiet.
summary.json shows a masked validation pair filled in by the model.

BERT's post-LN blocks, heads, masking and NSP, with one change: RoPE instead of the
learned position table. With the table the MLM loss sits on the unigram plateau (~2.85,
accuracy ~0.23) for 1000+ steps at this size, whatever the learning rate or norm position
(docs/bert.md has the comparison); relative positions find the neighbouring characters
from the start.

Sentence pairs are consecutive lines of one speech (50%) or a random line (50%); 15% of
the characters are predicted, 80/10/10 [MASK]/random/unchanged (lm/tasks/mlm_nsp.py).

Variants (`--config=configs/bert_shakespeare.py:ARGS`, comma separated):
  smoke            a few-seconds run (2 layers, 64 dims, 40 steps)
  position=learned   BERT's learned absolute positions (or alibi)
  norm_position=pre  pre-LN blocks (the shared PreLNBlock) instead of BERT's post-LN
  tokenizer=word|bpe, vocab_size=N   other base tokenizers ([CLS] etc. are appended)
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = base.parse_arg(arg, smoke=False, tokenizer="char", vocab_size=0, norm_position="post",
                        position="rope")
  c = ml_collections.ConfigDict()
  c.kind = "train_lm"
  c.family = "bert"
  c.task = "mlm_nsp"

  c.data = ml_collections.ConfigDict()
  c.data.path = base.TINY_SHAKESPEARE
  c.data.tokenizer = args.tokenizer
  c.data.vocab_size = args.vocab_size or (1024 if args.tokenizer == "bpe" else 0)
  c.data.val_fraction = 0.1
  c.data.seq_len = 96  # [CLS] A [SEP] B [SEP]: 99% of lines have <= 53 characters
  c.data.batch_size = 16
  c.data.eval_batch_size = 256
  c.data.seed = 0

  c.task_config = ml_collections.ConfigDict()
  c.task_config.mask_prob = 0.15
  c.task_config.mask_token_prob = 0.8
  c.task_config.random_token_prob = 0.1
  c.task_config.nsp_random_prob = 0.5
  c.task_config.max_predictions = 0  # MLM head slots per row; 0: 15% + 5 sigma (32 here)
  c.task_config.eval_examples = 1024
  c.task_config.eval_seed = 1

  c.model = ml_collections.ConfigDict()
  c.model.vocab_size = 0  # from the tokenizer, plus [PAD] [CLS] [SEP] [MASK]
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.embed_dim = 128
  c.model.mlp_dim = 512
  c.model.max_len = 96
  c.model.type_vocab_size = 2
  c.model.dropout = 0.0  # BERT: 0.1; less than one pass over the pairs (and CPU dropout is slow)
  c.model.use_bias = True
  c.model.matmul_dtype = "float32"
  c.model.norm_position = args.norm_position  # post (BERT) | pre
  c.model.layer_norm_eps = 1e-12
  c.model.mlp = "gelu_exact"
  c.model.position = args.position  # rope: no plateau (docs/bert.md); learned: BERT's table

  c.optim = base.optim(lr=2e-3, warmup_steps=150, weight_decay=0.01)

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 1000
  c.train.log_every = 50
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 2
  c.train.steps_per_call = 50
  c.train.seed = 0

  c.sample = ml_collections.ConfigDict()  # unused by mlm_nsp (its summary sample is a fill-in)
  c.sample.max_new_tokens = 200
  base.adaptation(c)  # --config.init_from, --config.trainable, PEFT model options

  if args.smoke:
    base.make_smoke(c)
    c.data.seq_len = 64  # pairs of lines need more than make_smoke's 32
    c.model.max_len = 64
    c.data.eval_batch_size = 64
    c.task_config.eval_examples = 128
  return c

"""A non-Transformer LM on tiny Shakespeare (char): Hawk-style gated linear recurrence.

The "ssm" family (lm/models/ssm.py): 4 residual layers of RG-LRU temporal mixing
(Griffin, De et al. 2024; trained with a parallel scan, lm/layers/scan.py) + MLP, the
same size (~0.86M params), data, tokenizer, optimizer, task (causal_lm on 64-token
windows) and token budget (2000 steps x 12 x 64) as the Transformer of
configs/shakespeare_char.py, so the two rows of the lecture table compare directly.

Run:
  python -m experiments.run --config=configs/ssm_shakespeare.py --workdir=/tmp/ssm
Expected (measured, docs/multimodal.md, 2-core CPU, shared): val_loss 1.782 after 2000
steps (64-token windows; the Transformer with the same AdamW beta1 0.9: 1.912); decoding
keeps 8 KB of state per sequence whatever the context
(python -m experiments.bench_ssm --ssm_workdir=/tmp/ssm).
Sample from it like any run:
  python -m experiments.run --workdir=/tmp/ssm --mode=sample --prompt="ROMEO:"

Variants (`--config=configs/ssm_shakespeare.py:ARGS`): smoke (a few seconds).
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = base.parse_arg(arg, smoke=False)
  c = ml_collections.ConfigDict()
  c.kind = "train_lm"
  c.family = "ssm"
  c.task = "causal_lm"

  c.data = ml_collections.ConfigDict()
  c.data.path = base.TINY_SHAKESPEARE
  c.data.tokenizer = "char"
  c.data.vocab_size = 0
  c.data.val_fraction = 0.1
  c.data.seq_len = 64
  c.data.batch_size = 12
  c.data.eval_batch_size = 128
  c.data.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.vocab_size = 0  # from the tokenizer
  c.model.num_layers = 4
  c.model.embed_dim = 128
  c.model.recurrence_dim = 128
  c.model.mlp_dim = 512
  c.model.conv_width = 4
  c.model.max_len = 256  # generation cache; training windows are data.seq_len
  c.model.dropout = 0.0
  c.model.norm = "rmsnorm"
  c.model.mlp = "gelu"
  c.model.use_bias = True
  c.model.tie_embeddings = True
  c.model.min_decay = 0.9
  c.model.max_decay = 0.999

  c.optim = base.optim()

  c.train = base.train()  # the lecture table's Transformer budget: 2000 steps

  c.sharding = base.sharding()

  c.sample = ml_collections.ConfigDict()
  c.sample.prompt = "ROMEO:"
  c.sample.max_new_tokens = 200
  c.sample.temperature = 0.8
  c.sample.top_k = 40
  c.sample.top_p = 0.95
  c.sample.seed = 0

  if args.smoke:
    c.model.num_layers = 2
    c.model.embed_dim = c.model.recurrence_dim = 64
    c.model.mlp_dim = 256
    c.model.max_len = 64
    c.data.seq_len = 32
    c.data.batch_size = 8
    c.optim.warmup_steps = 5
    c.train.num_steps = 40
    c.train.eval_every = 20
    c.train.checkpoint_every = 20
    c.sample.max_new_tokens = 50
  return c

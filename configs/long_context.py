"""Context extension of a RoPE char GPT: train at 256, extend to 1024 (docs/long_context.md).

Run:
  python -m experiments.run --config=configs/long_context.py --workdir=/tmp/long_context
Expected (measured, docs/long_context.md; 2-core shared CPU, 6 CPU-minutes, 35 min wall
under load): base val_loss 1.89 at 256; at 1024 without scaling the perplexity of
positions 512-1024 rises to 9.13 (6.49 at 0-256); NTK-aware scaling without training
7.72; after 40 fine-tuning steps at 1024: no scaling 6.59, YaRN 6.65, position
interpolation 9.22 (it needs a longer fine-tune).

Stages (experiments/long_context.py): (1) a LLaMA-style char GPT (RoPE, RMSNorm, SwiGLU)
trained at seq_len 256 (an ordinary train_lm run in WORKDIR/base); (2) per-position
validation perplexity at `extension.target_len` (1024) with each RoPE scaling and no
fine-tuning; (3) a short fine-tune at that length per method in `finetune_methods` (WORKDIR/ft_<method>, each a
sampleable workdir), evaluated again. The table lands in WORKDIR/summary.json and
WORKDIR/table.md.

Args: smoke (a seconds-long run: tiny model, 32 -> 128).
--config.extension.target_len=2048 --config.extension.buckets=256,512,1024,2048 goes further.
"""

import ml_collections

from configs import base, shakespeare_char


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = base.parse_arg(arg, smoke=False)
  c = shakespeare_char.recipe("arch=llama")
  c.kind = "long_context"
  c.model.num_kv_heads = 0
  c.model.max_len = 256
  c.model.rope_scaling = "none"  # the base model; the extension stage sets it per method
  c.model.rope_scaling_factor = 1.0
  c.model.rope_original_max_len = 0
  c.data.seq_len = 256
  c.data.batch_size = 8
  c.data.eval_batch_size = 32
  c.train.num_steps = 400
  c.train.eval_every = 200
  c.train.checkpoint_every = 400
  c.train.steps_per_call = 20
  c.train.log_every = 20
  c.optim.warmup_steps = 100
  c.extension = ml_collections.ConfigDict(dict(
      target_len=1024,  # evaluation and fine-tuning context
      methods="none,linear,ntk,yarn",  # evaluated without fine-tuning
      finetune_methods="none,linear,yarn",  # each fine-tuned at target_len, then evaluated
      finetune_steps=40,
      finetune_batch_size=2,
      finetune_lr=3e-4,
      eval_windows=16,  # validation windows of target_len
      buckets="256,512,1024",  # upper ends of the position buckets
  ))
  if args.smoke:
    base.make_smoke(c)
    c.data.seq_len = c.model.max_len = 32
    c.extension.target_len = 128
    c.extension.finetune_steps = 4
    c.extension.eval_windows = 4
    c.extension.buckets = "32,64,128"
  return c

"""T5-style encoder-decoder pretrained by span corruption on tiny Shakespeare (characters).

Run:
  python -m experiments.run --config=configs/t5_shakespeare.py --workdir=/tmp/t5
Expected (measured, docs/encoder_decoder.md): val_loss falls from ln(vocab) = 4.3 to
2.38 after 800 steps, teacher-forced val_accuracy 0.34 on the target tokens; summary.json
also has greedy_exact_match (0.0) / greedy_token_accuracy (0.16) of the regenerated spans.

Each example is a random window of `data.seq_len` = 128 characters; T5's
random_spans_noise_mask hides 15% of them (19) in spans of mean length 3 (6 spans);
the encoder reads the window with each span replaced by a sentinel, the decoder writes
sentinel, span, sentinel, span, ..., EOS (lm/tasks/span_corruption.py).

Args (`--config=configs/t5_shakespeare.py:ARGS`): smoke (seconds-long run),
arch=t5|bart (T5 v1.1 layers: relative position bias, RMSNorm, GeGLU, no biases; or
BART's: learned positions, LayerNorm, GELU, biases).

This file also holds the builder the other encoder-decoder configs use.
"""

import ml_collections

from configs import base

ARCHS = {
    # T5 v1.1 (Raffel et al. 2020; Shazeer 2020): relative buckets shared per stack.
    "t5": dict(position="t5", norm="rmsnorm", mlp="geglu", use_bias=False),
    # BART (Lewis et al. 2020): learned absolute positions, LayerNorm, GELU (pre-LN here).
    "bart": dict(position="learned", norm="layernorm", mlp="gelu", use_bias=True),
}


def encdec_config(task: str, arch: str, *, seq_len: int, max_len: int, max_target_len: int,
                  num_steps: int, task_config: dict, batch_size: int = 12,
                  smoke: bool = False) -> ml_collections.ConfigDict:
  if arch not in ARCHS:
    raise ValueError(f"arch={arch!r}; choose one of {sorted(ARCHS)}")
  c = ml_collections.ConfigDict()
  c.kind = "train_lm"
  c.family = "encdec"
  c.task = task
  c.task_config = ml_collections.ConfigDict(task_config)

  c.data = ml_collections.ConfigDict()
  c.data.path = base.TINY_SHAKESPEARE
  c.data.tokenizer = "char"
  c.data.vocab_size = 0
  c.data.val_fraction = 0.1
  c.data.seq_len = seq_len
  c.data.batch_size = batch_size
  c.data.eval_batch_size = 128
  c.data.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.vocab_size = 0  # from the tokenizer (specials + characters)
  c.model.num_encoder_layers = 2
  c.model.num_decoder_layers = 2
  c.model.num_heads = 4
  c.model.embed_dim = 128
  c.model.mlp_dim = 256
  c.model.max_len = max_len
  c.model.max_target_len = max_target_len
  c.model.dropout = 0.0
  c.model.use_bias = True
  c.model.matmul_dtype = "float32"
  c.model.position = "t5"
  c.model.rope_base = 10000.0
  c.model.relative_buckets = 32
  c.model.relative_max_distance = 128
  c.model.num_kv_heads = 0
  c.model.norm = "layernorm"
  c.model.mlp = "gelu"
  c.model.update(ARCHS[arch])

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 2e-3
  c.optim.min_lr = 1e-4
  c.optim.warmup_steps = 100
  c.optim.weight_decay = 0.1
  c.optim.grad_clip = 1.0

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = num_steps
  c.train.log_every = 25
  c.train.eval_every = 250
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 2
  c.train.steps_per_call = 25
  c.train.seed = 0

  if smoke:  # base.make_smoke's sizes, for the encoder-decoder's field names
    c.model.num_encoder_layers = c.model.num_decoder_layers = 1
    c.model.num_heads = 2
    c.model.embed_dim = 64
    c.model.mlp_dim = 256
    c.data.batch_size = 8
    c.data.eval_batch_size = 32
    c.optim.warmup_steps = 5
    c.train.num_steps = 40
    c.train.log_every = 10
    c.train.eval_every = 20
    c.train.checkpoint_every = 20
    c.train.steps_per_call = 10
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = base.parse_arg(arg, smoke=False, arch="t5")
  seq_len = 64 if args.smoke else 128
  task_config = {"noise_density": 0.15, "mean_noise_span_length": 3.0,
                 "num_eval_examples": 64 if args.smoke else 512}
  # inputs: L - noise + spans + EOS; targets: noise + spans + EOS (<= 27 for L = 128).
  return encdec_config("span_corruption", args.arch, seq_len=seq_len, max_len=seq_len,
                       max_target_len=32, num_steps=800, task_config=task_config,
                       smoke=args.smoke)

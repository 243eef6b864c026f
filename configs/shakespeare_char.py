"""Character-level GPT on tiny Shakespeare: the classic small CPU recipe.

Run:
  python -m experiments.run --config=configs/shakespeare_char.py --workdir=/tmp/shakespeare
Expected: val_loss 1.874-1.877 after 2000 steps (<= 1.88; seeds 0-2 give 1.866-1.886,
README), 48-50k tokens/s on a quiet 2-core CPU, 30-35k in its slow spells (bf16 matmul
operands, data-parallel over 2 CPU devices).

The recipe is nanoGPT's CPU one except AdamW's beta1: 0.7 instead of 0.9, chosen by a
seeded sweep (README "Results"; 3 seeds: mean val loss 1.876 vs 1.902 at 0.9, in f32).
Configs built on this model (MoE, scaling, long context, post-training, ...) start from
`recipe()`, which keeps beta1 = 0.9, f32 matmuls and JAX's own devices.

Variants (`--config=configs/shakespeare_char.py:ARGS`, comma separated):
  smoke           a few-seconds run (2 layers, 64 dims, 40 steps), val_loss ~3
  tokenizer=word  whitespace words with <unk> (vocab_size=0 keeps every word)
  tokenizer=bpe   byte-level BPE with `vocab_size` merges-and-bytes
  vocab_size=N    vocabulary size for word/bpe
  arch=llama      LLaMA-style decoder: RoPE, RMSNorm, SwiGLU, no biases, 2 KV heads (GQA)
                  (arch=gpt2, the default: learned positions, LayerNorm, GELU, biases)

Layer-library choices are model flags, e.g. a LLaMA-style block with GPT-3's
alternating dense/local layers:
  --config.model.position=rope --config.model.num_kv_heads=1 --config.model.norm=rmsnorm
  --config.model.mlp=swiglu --config.model.attention_pattern=alternating_local
"""

import ml_collections

from configs import base

# Decoder-only variants: GPT-2's choices, and LLaMA's (Touvron et al. 2023) with GQA.
ARCHS = {
    "gpt2": dict(position="learned", norm="layernorm", mlp="gelu", use_bias=True,
                 num_kv_heads=0),
    "llama": dict(position="rope", norm="rmsnorm", mlp="swiglu", use_bias=False,
                  num_kv_heads=2, mlp_dim=344),  # 2/3 * 4d, rounded to 8: same MLP params
}


# AdamW beta1 of the default 2000-step run: at batch 12 x 64 a shorter momentum memory
# helps (val loss 0.6: 1.876, 0.7: 1.876, 0.8: 1.889, 0.9: 1.912 on seed 0).
TUNED_B1 = 0.7


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The default run: `recipe(arg)` with the tuned AdamW beta1, made fast on a 2-core CPU.

  bf16 matmul operands (f32 accumulation, params and everything else f32) and the batch
  split over 2 CPU devices, one per core (lm/train/data_parallel.py): ~1.8x the f32
  single-device step (README "Throughput"). `--config.model.matmul_dtype=float32
  --config.sharding.cpu_devices=0` gives the plain f32 run.
  """
  c = recipe(arg)
  c.optim.b1 = TUNED_B1
  c.model.matmul_dtype = "bfloat16"
  c.sharding.cpu_devices = 2
  return c


def recipe(arg: str | None = None) -> ml_collections.ConfigDict:
  """The model, data and training sections other configs build on (AdamW beta1 = 0.9)."""
  args = base.parse_arg(arg, smoke=False, tokenizer="char", vocab_size=0, arch="gpt2")
  if args.arch not in ARCHS:
    raise ValueError(f"arch={args.arch!r}; choose one of {sorted(ARCHS)}")
  c = ml_collections.ConfigDict()
  c.kind = "train_lm"
  c.family = "gpt"

  c.data = ml_collections.ConfigDict()
  c.data.path = base.TINY_SHAKESPEARE
  c.data.tokenizer = args.tokenizer
  c.data.vocab_size = args.vocab_size or (1024 if args.tokenizer == "bpe" else 0)
  c.data.val_fraction = 0.1
  c.data.seq_len = 64
  c.data.batch_size = 12
  c.data.eval_batch_size = 128
  c.data.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.vocab_size = 0  # from the tokenizer
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.embed_dim = 128
  c.model.mlp_dim = 512
  c.model.max_len = 64
  c.model.dropout = 0.0
  c.model.use_bias = True
  c.model.tie_embeddings = True
  c.model.matmul_dtype = "float32"
  # Layer library (docs/layers.md); the defaults are GPT-2's choices.
  c.model.position = "learned"  # learned | sinusoidal | rope | alibi | t5 | none
  c.model.rope_base = 10000.0
  c.model.relative_buckets = 32
  c.model.relative_max_distance = 128
  c.model.num_kv_heads = 0  # 0 = num_heads; 1 = multi-query; divisors = grouped-query
  c.model.qk_norm = False
  c.model.logit_softcap = 0.0
  c.model.norm = "layernorm"  # layernorm | rmsnorm
  c.model.mlp = "gelu"  # gelu | swiglu | geglu
  c.model.attention_pattern = "dense"  # dense | local | strided | alternating_local | local_strided
  c.model.attention_window = 32
  c.model.attention_stride = 8
  c.model.remat = "none"  # none | full | dots: rematerialise block activations
  c.model.scan_layers = False  # one nn.scan over identical blocks (compile time flat in depth)

  c.optim = base.optim()

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 2000
  c.train.log_every = 10
  c.train.eval_every = 250
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 3
  c.train.best_metric = ""  # "val_loss": also keep the best checkpoint by validation loss
  c.train.best_mode = "min"
  c.train.keep_best = 1
  c.train.steps_per_call = 10
  c.train.grad_accum_steps = 1  # > 1: sequential microbatches (same update, less memory)
  c.train.seed = 0

  # All devices data-parallel; e.g. --config.sharding.rules=fsdp --config.sharding.fsdp=-1
  # --config.sharding.data=1 shards params and optimizer state instead (docs/sharding.md).
  c.sharding = base.sharding()

  c.sample = ml_collections.ConfigDict()
  c.sample.prompt = "ROMEO:"
  c.sample.max_new_tokens = 200
  c.sample.temperature = 0.8
  c.sample.top_k = 40
  c.sample.top_p = 0.95
  c.sample.seed = 0

  c.model.update(ARCHS[args.arch])
  base.adaptation(c)  # --config.init_from, --config.trainable, PEFT model options
  if args.smoke:
    base.make_smoke(c)
  return c

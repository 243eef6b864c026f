"""The model zoo: published architectures at their published sizes (docs/zoo.md).

Run (planning; nothing is allocated, every model is instantiated with jax.eval_shape):
  python -m experiments.plan --config=configs/zoo.py:name=llama2_70b --mesh=fsdp:256 --rules=fsdp
Expected: 68.98B params (Llama 2 paper: 70B; HF count 68,976,648,192), 16 bytes/param of
train state = 4.0 GiB per device on 256 devices (docs/zoo.md has the table).
Training at full size needs a real tokenizer and a pod; `:smoke` shrinks the model
(architecture choices kept) to a seconds-long run on the shipped Shakespeare data:
  python -m experiments.run --config=configs/zoo.py:name=deepseek_v3,smoke --workdir=/tmp/z

Args: name=NAME (default gpt2_small; one of ZOO), smoke.

Families: bert (BERT, post-LN, MLM+NSP heads), gpt (GPT-2, GPT-3 with alternating dense /
locally banded attention, Llama 2, DeepSeek-V3 with MLA + MoE + MTP), encdec (T5 v1.1:
RMSNorm, GeGLU, relative bias, no biases). Shapes that our configs cannot express exactly
are noted next to the entry and in docs/zoo.md.
"""

import ml_collections

from configs import base, bert_shakespeare, deepseek_mini, shakespeare_char, t5_shakespeare

GPT2 = dict(vocab_size=50257, max_len=1024, position="learned", norm="layernorm", mlp="gelu",
            use_bias=True, tie_embeddings=True)
# GPT-3 (Brown et al. 2020, Table 2.1): GPT-2's layers, context 2048, dense and locally
# banded sparse attention alternating (the band width is not published: 256 here).
GPT3 = dict(GPT2, max_len=2048, attention_pattern="alternating_local", attention_window=256)
LLAMA2 = dict(vocab_size=32000, max_len=4096, position="rope", norm="rmsnorm", mlp="swiglu",
              use_bias=False, tie_embeddings=False, num_kv_heads=0)
T5_V1_1 = dict(vocab_size=32128, max_len=512, max_target_len=114, position="t5", norm="rmsnorm",
               mlp="geglu", use_bias=False, relative_buckets=32, relative_max_distance=128)
BERT = dict(vocab_size=30522, max_len=512, type_vocab_size=2, dropout=0.1, mlp="gelu_exact",
            norm_position="post", position="learned")


def _gpt(layers, d, heads, mlp=None, **extra):
  return dict(num_layers=layers, embed_dim=d, num_heads=heads, mlp_dim=mlp or 4 * d, **extra)


def _t5(layers, d, heads, mlp):
  return dict(T5_V1_1, num_encoder_layers=layers, num_decoder_layers=layers, embed_dim=d,
              num_heads=heads, mlp_dim=mlp)


# name -> (family, model fields)
ZOO = {
    "bert_base": ("bert", dict(BERT, **_gpt(12, 768, 12))),
    "bert_large": ("bert", dict(BERT, **_gpt(24, 1024, 16))),
    "gpt2_small": ("gpt", dict(GPT2, **_gpt(12, 768, 12))),
    "gpt2_medium": ("gpt", dict(GPT2, **_gpt(24, 1024, 16))),
    "gpt2_large": ("gpt", dict(GPT2, **_gpt(36, 1280, 20))),
    "gpt2_xl": ("gpt", dict(GPT2, **_gpt(48, 1600, 25))),
    "gpt3_125m": ("gpt", dict(GPT3, **_gpt(12, 768, 12))),
    "gpt3_350m": ("gpt", dict(GPT3, **_gpt(24, 1024, 16))),
    "gpt3_760m": ("gpt", dict(GPT3, **_gpt(24, 1536, 16))),
    # Table 2.1 lists 24 heads of 128 for d_model 2048; its parameter count (1.3B) is that
    # of d_attn = d_model, which 16 heads of 128 give.
    "gpt3_1p3b": ("gpt", dict(GPT3, **_gpt(24, 2048, 16))),
    "gpt3_2p7b": ("gpt", dict(GPT3, **_gpt(32, 2560, 32))),
    "gpt3_6p7b": ("gpt", dict(GPT3, **_gpt(32, 4096, 32))),
    # Table 2.1 prints d_model 5140, not divisible by its 40 heads of 128: 5120 here.
    "gpt3_13b": ("gpt", dict(GPT3, **_gpt(40, 5120, 40))),
    "gpt3_175b": ("gpt", dict(GPT3, **_gpt(96, 12288, 96))),
    # T5 v1.1 small has 6 heads of 64 (inner dim 384 < d_model 512); ours need
    # heads x head_dim = d_model: 8 heads of 64. Our encoder-decoder ties the output
    # projection to the embedding (v1.1 unties it).
    "t5_v1_1_small": ("encdec", _t5(8, 512, 8, 1024)),
    "t5_v1_1_base": ("encdec", _t5(12, 768, 12, 2048)),
    "t5_v1_1_large": ("encdec", _t5(24, 1024, 16, 2816)),
    "t5_v1_1_xl": ("encdec", _t5(24, 2048, 32, 5120)),
    "t5_v1_1_xxl": ("encdec", _t5(24, 4096, 64, 10240)),
    "llama2_7b": ("gpt", dict(LLAMA2, **_gpt(32, 4096, 32, 11008))),
    "llama2_70b": ("gpt", dict(LLAMA2, **_gpt(80, 8192, 64, 28672, num_kv_heads=8))),
    # DeepSeek-V3 (arXiv:2412.19437 sec. 4.2): 61 layers, d 7168, 128 heads; MLA with
    # d_c 512, d_c' 1536, head dim 128, decoupled RoPE dim 64; MoE in all but the first 3
    # layers: 1 shared + 256 routed experts of width 2048, 8 per token, sigmoid
    # affinities; dense layers' SwiGLU width 18432; one MTP module (task mtp_lm, depth 1).
    "deepseek_v3": ("gpt", dict(
        LLAMA2, vocab_size=129280, **_gpt(61, 7168, 128, 18432), position="none",
        attention="mla", mla_kv_rank=512, mla_q_rank=1536, mla_rope_dim=64, mla_head_dim=128,
        mlp="moe", moe_num_experts=256, moe_top_k=8, moe_expert_dim=2048, moe_num_shared=1,
        moe_activation="swiglu", moe_router="sigmoid", moe_normalize_gates=True,
        moe_capacity_factor=0.0, moe_every=1, moe_first_dense=3)),
}


def _family_config(name: str) -> ml_collections.ConfigDict:
  """The family's Shakespeare config: data, task, optimizer and training sections."""
  family, model = ZOO[name]
  if family == "bert":
    return bert_shakespeare.get_config()
  if family == "encdec":
    return t5_shakespeare.get_config("arch=t5")
  if model.get("attention") == "mla":
    return deepseek_mini.get_config()  # task mtp_lm: MTP depth 1, aux-loss-free balancing
  return shakespeare_char.recipe("arch=llama" if model["position"] == "rope" else "")


def _shrink(c: ml_collections.ConfigDict, family: str):
  """Seconds-long run, every architecture choice kept; the vocabulary is the tokenizer's."""
  m = c.model
  m.vocab_size = 0
  m.embed_dim, m.num_heads = 64, 2
  m.mlp_dim = 128
  if family == "encdec":
    m.num_encoder_layers = m.num_decoder_layers = 1
    m.max_len, m.max_target_len = t5_shakespeare.get_config("smoke").model.max_len, 32
    return
  if family == "bert":
    m.num_layers, m.dropout = 2, 0.0
    c.data.seq_len = m.max_len = 64
    return
  m.num_layers = 2
  c.data.seq_len = m.max_len = 32
  if m.get("num_kv_heads"):
    m.num_kv_heads = 1
  if m.get("attention_pattern", "dense") != "dense":
    m.attention_window = 8
  if m.get("mlp") == "moe":
    m.moe_num_experts, m.moe_top_k, m.moe_expert_dim, m.moe_first_dense = 4, 2, 32, 1
  if m.get("attention") == "mla":
    m.mla_kv_rank, m.mla_q_rank, m.mla_rope_dim, m.mla_head_dim = 16, 32, 8, 16


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = base.parse_arg(arg, name="gpt2_small", smoke=False)
  if args.name not in ZOO:
    raise ValueError(f"name={args.name!r}; choose one of {sorted(ZOO)}")
  family, model = ZOO[args.name]
  c = _family_config(args.name)
  c.model.update(model)
  c.data.seq_len = model["max_len"]  # the published training context
  if args.smoke:
    smoke = (t5_shakespeare.get_config("arch=t5,smoke") if family == "encdec"
             else base.make_smoke(_family_config(args.name)))
    c.data, c.train, c.optim = smoke.data, smoke.train, smoke.optim
    _shrink(c, family)
  return c

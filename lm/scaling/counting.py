"""Exact parameter counts (every family) and FLOPs per token (GPT family) of a config.

FLOPs of the other families (BERT, encoder-decoder, RNN, SSM) and of MTP heads:
lm/scaling/flops.py.

Scaling laws are stated in terms of N, the *non-embedding* parameter count (Kaplan
et al. 2020: token and position embeddings, and an untied unembedding matrix, are
excluded; we count T5's relative-position biases as position embeddings too), and C,
the training compute. Counting by formula, rather than only from a
param tree, lets a sweep plan its runs before building anything; the tests check every
formula against the real param tree and the real forward pass's matmuls.

The config is read with `getattr` and defaults, so fields the GPT config may gain
(`num_kv_heads`, `position`, `norm`, `mlp`, ...) are honoured when present and the
foundation's defaults apply when absent.

Legend: L layers, d model dim, nq query heads, nkv key/value heads, H head dim,
F MLP hidden dim, V vocab, T context length.
"""

import dataclasses

GATED_MLPS = ("swiglu", "geglu", "glu", "reglu")
NO_PARAM_POSITIONS = ("rope", "sinusoidal", "alibi", "none", "nope")


@dataclasses.dataclass(frozen=True)
class ParamCounts:
  total: int
  embedding: int  # token (+ learned position) embeddings and an untied unembedding
  non_embedding: int  # Kaplan's N


def _shape(config) -> dict:
  """The fields the formulas need, with the foundation's defaults for absent ones."""
  num_heads = config.num_heads
  num_kv_heads = getattr(config, "num_kv_heads", None) or num_heads
  head_dim = getattr(config, "head_dim", None) or config.embed_dim // num_heads
  return dict(
      L=getattr(config, "num_layers", 0), d=config.embed_dim, nq=num_heads, nkv=num_kv_heads, H=head_dim,
      F=config.mlp_dim, V=config.vocab_size, max_len=config.max_len,
      bias=getattr(config, "use_bias", True), tied=getattr(config, "tie_embeddings", True),
      norm=str(getattr(config, "norm", "layernorm")).lower(),
      mlp=str(getattr(config, "mlp", getattr(config, "mlp_type", "gelu"))).lower(),
      position=str(getattr(config, "position", "learned")).lower(),
      qk_norm=bool(getattr(config, "qk_norm", False)),
      buckets=getattr(config, "relative_buckets", 32))


def _norm_params(s: dict) -> int:
  if s["norm"] in ("rmsnorm", "rms"):
    return s["d"]
  return s["d"] * (2 if s["bias"] else 1)  # LayerNorm: scale, and a bias with use_bias


def _block_matrices(s: dict) -> tuple[int, int]:
  """(matmul weights, biases) of one block."""
  d, H, nq, nkv, F = s["d"], s["H"], s["nq"], s["nkv"], s["F"]
  attn_w = d * nq * H + 2 * d * nkv * H + nq * H * d  # q, k, v, out
  attn_b = nq * H + 2 * nkv * H + d
  mlp_in = 2 if s["mlp"] in GATED_MLPS else 1
  mlp_w = mlp_in * d * F + F * d
  mlp_b = mlp_in * F + d
  return attn_w + mlp_w, (attn_b + mlp_b) if s["bias"] else 0


def param_counts(config) -> ParamCounts:
  """Total, embedding and non-embedding parameters of a model config of any family."""
  counter = _COUNTERS.get(type(config).__name__)
  if counter is None:
    raise ValueError(f"no parameter formula for {type(config).__name__}")
  return counter(config)


def _gpt_counts(config) -> ParamCounts:
  if getattr(config, "mlp", "") == "moe" or getattr(config, "attention", "mha") == "mla":
    return _moe_mla_counts(config)
  s = _shape(config)
  if s["position"] not in ("learned", "t5", *NO_PARAM_POSITIONS):
    raise ValueError(f"no parameter formula for model.position={s['position']!r}")
  weights, biases = _block_matrices(s)
  qk_norm = 2 * s["H"] if s["qk_norm"] else 0  # a scale over head_dim for queries and keys
  block = weights + biases + 2 * _norm_params(s) + qk_norm
  non_embedding = s["L"] * block + _norm_params(s)  # + the final norm
  embedding = s["V"] * s["d"]
  if s["position"] == "learned":
    embedding += s["max_len"] * s["d"]
  elif s["position"] == "t5":  # one bias per (bucket, head), shared by the layers
    embedding += s["buckets"] * s["nq"]
  if not s["tied"]:
    embedding += s["d"] * s["V"]
  return ParamCounts(embedding + non_embedding, embedding, non_embedding)


def _bert_counts(config) -> ParamCounts:
  """BERT: the GPT blocks, an embedding LayerNorm, the pooler, and the MLM and NSP heads.

  The MLM head's output bias (one per vocabulary entry) belongs to the tied unembedding.
  """
  s = _shape(config)
  d, V = s["d"], s["V"]
  weights, biases = _block_matrices(s)
  blocks = s["L"] * (weights + biases + 2 * _norm_params(s))
  bias = d if s["bias"] else 0
  heads = (d * d + bias) + (d * 2 + 2) + (d * d + bias) + _norm_params(s)  # pooler, NSP, transform
  non_embedding = blocks + _norm_params(s) + heads
  embedding = (V + s["max_len"] + config.type_vocab_size) * d + V
  return ParamCounts(embedding + non_embedding, embedding, non_embedding)


def _encdec_counts(config) -> ParamCounts:
  """T5/BART: encoder blocks, decoder blocks with cross-attention, a final norm per stack,
  one token embedding shared by both stacks and the output, positions per stack."""
  s = _shape(config)
  d, H, nq, nkv = s["d"], s["H"], s["nq"], s["nkv"]
  weights, biases = _block_matrices(s)
  cross = d * nq * H + 2 * d * nkv * H + nq * H * d
  cross_b = (nq * H + 2 * nkv * H + d) if s["bias"] else 0
  qk_norm = 2 * H if s["qk_norm"] else 0
  encoder = config.num_encoder_layers * (weights + biases + 2 * _norm_params(s) + qk_norm)
  decoder = config.num_decoder_layers * (weights + biases + cross + cross_b +
                                         3 * _norm_params(s) + 2 * qk_norm)
  non_embedding = encoder + decoder + 2 * _norm_params(s)
  embedding = s["V"] * d
  if s["position"] == "learned":
    embedding += (config.max_len + config.max_target_len) * d
  elif s["position"] == "t5":
    embedding += 2 * s["buckets"] * nq
  return ParamCounts(embedding + non_embedding, embedding, non_embedding)


def _recurrent_counts(config) -> ParamCounts:
  """RNN/GRU/LSTM stacks: per layer an input kernel and bias and a recurrent kernel for each
  gate (GRU: a recurrent bias too); an output head unless tied to the embedding."""
  gates = {"rnn": 1, "gru": 3, "lstm": 4}[config.cell]
  E, Hd, V = config.embed_dim, config.hidden_dim, config.vocab_size
  non_embedding = 0
  for i in range(config.num_layers):
    width = E if i == 0 else Hd
    non_embedding += width * gates * Hd + gates * Hd + Hd * gates * Hd
    non_embedding += Hd if config.cell == "gru" else 0
  embedding = V * E + (0 if config.tie_embeddings else Hd * V + V)
  return ParamCounts(embedding + non_embedding, embedding, non_embedding)


def _mla_params(c) -> int:
  """DeepSeek-V2/V3 latent attention (lm/layers/mla.py); no biases."""
  d, n, r, kv, q = c.embed_dim, c.num_heads, c.mla_rope_dim, c.mla_kv_rank, c.mla_q_rank
  h = getattr(c, "mla_head_dim", 0) or c.embed_dim // c.num_heads
  query = (d * q + q + q * n * (h + r)) if q else d * n * (h + r)  # (down, norm,) content+rope
  return query + d * kv + kv + d * r + 2 * kv * n * h + n * h * d  # kv down+norm, k_rope, up, out


def _mlp_params(d: int, width: int, activation: str, bias: bool) -> int:
  inputs = 2 if activation in GATED_MLPS else 1
  return inputs * d * width + width * d + ((inputs * width + d) if bias else 0)


def _is_moe_layer(c, layer: int) -> bool:
  every = getattr(c, "moe_every", 1)
  return (c.mlp == "moe" and layer % every == every - 1
          and layer >= getattr(c, "moe_first_dense", 0))


def _moe_block(c, layer: int, active: bool) -> int:
  """One block's attention + MLP (or MoE) + norms; `active`: only the top-k routed experts."""
  s = _shape(c)
  if getattr(c, "attention", "mha") == "mla":
    attn = _mla_params(c)
  else:
    weights, biases = _block_matrices(dict(s, F=0, mlp="gelu"))
    attn = weights + biases - (s["d"] if s["bias"] else 0)  # minus the MLP output bias F=0 leaves
    attn += 2 * s["H"] if s["qk_norm"] else 0
  act = c.moe_activation if c.mlp == "moe" else c.mlp
  if _is_moe_layer(c, layer):
    width = c.moe_expert_dim or c.mlp_dim
    routed = c.moe_top_k if active else c.moe_num_experts
    mlp = (s["d"] * c.moe_num_experts + c.moe_num_experts  # router and balance bias
           + routed * _mlp_params(s["d"], width, act, False)
           + (_mlp_params(s["d"], c.moe_num_shared * width, act, False)
              if c.moe_num_shared else 0))
  else:
    mlp = _mlp_params(s["d"], s["F"], act, s["bias"])
  return attn + mlp + 2 * _norm_params(s)


def _moe_mla_counts(config, active: bool = False) -> ParamCounts:
  """GPTs with MoE layers and/or MLA: per-layer sums (dense first layers, moe_every)."""
  s = _shape(config)
  non_embedding = sum(_moe_block(config, i, active) for i in range(s["L"])) + _norm_params(s)
  embedding = s["V"] * s["d"] * (1 if s["tied"] else 2)
  if s["position"] == "learned":
    embedding += s["max_len"] * s["d"]
  elif s["position"] == "t5":
    embedding += s["buckets"] * s["nq"]
  return ParamCounts(embedding + non_embedding, embedding, non_embedding)


def active_param_counts(config) -> ParamCounts:
  """Parameters one token uses: a MoE layer counts only its top-k routed experts (+ shared)."""
  if type(config).__name__ == "GPTConfig" and getattr(config, "mlp", "") == "moe":
    return _moe_mla_counts(config, active=True)
  return param_counts(config)


def mtp_params(config, depth: int) -> int:
  """DeepSeek-V3 multi-token prediction modules (lm/objectives_mtp.py): per depth two
  RMSNorms, a 2d -> d projection, one block like the last layer, a final norm; the
  embedding and output head are shared with the main model."""
  s = _shape(config)
  block = (_moe_block(config, s["L"] - 1, False) if getattr(config, "mlp", "") == "moe"
           or getattr(config, "attention", "mha") == "mla" else
           sum(_block_matrices(s)) + 2 * _norm_params(s) + (2 * s["H"] if s["qk_norm"] else 0))
  return depth * (2 * s["d"] + 2 * s["d"] * s["d"] + block + _norm_params(s))


_COUNTERS = {"GPTConfig": _gpt_counts, "BertConfig": _bert_counts,
             "EncDecConfig": _encdec_counts, "RecurrentConfig": _recurrent_counts}


def attention_dim(config) -> int:
  s = _shape(config)
  return s["nq"] * s["H"]


def attended_context(config, seq_len: int) -> list[int]:
  """Keys each query attends to, per layer: T (dense), the window (local), T/stride (strided)."""
  layout = getattr(config, "attention_pattern", "dense")
  cycle = {"dense": ("dense",), "local": ("local",), "strided": ("strided",),
           "alternating_local": ("dense", "local"), "local_strided": ("local", "strided")}
  if layout not in cycle:
    raise ValueError(f"no FLOP formula for model.attention_pattern={layout!r}")
  context = {"dense": seq_len, "local": min(seq_len, getattr(config, "attention_window", seq_len)),
             "strided": -(-seq_len // getattr(config, "attention_stride", 1))}
  return [context[cycle[layout][i % len(cycle[layout])]] for i in range(config.num_layers)]


def kaplan_flops_per_token(config, seq_len: int) -> float:
  """Training FLOPs per token, Kaplan et al. (2020) Table 1: 6N + 6 L T d_attn.

  The forward pass costs 2N (a multiply and an add per weight) plus 2 L T d_attn for
  the attention scores and weighted sums over the context; the backward pass costs
  twice the forward. Embedding lookups, norms and nonlinearities are ignored. Sparse
  layouts (GPT-3's alternating local bands) attend to fewer keys per layer: T becomes
  each layer's attended context.
  """
  n = param_counts(config).non_embedding
  return 6.0 * n + 6.0 * sum(attended_context(config, seq_len)) * attention_dim(config)


def forward_matmul_flops(config, seq_len: int) -> int:
  """Exact matmul FLOPs (2 per multiply-add) of one forward pass over one sequence.

  Counts every dense matmul as computed: the projections and MLP, attention scores
  and weighted sums over the full T x T square (the causal mask is applied after the
  product, so the masked half is computed too), and the output logits. Block-sparse
  layouts skip blocks, so for them this is the dense upper bound. MoE layers count the
  router, the top-k routed experts and the shared experts a token actually uses (not
  the padding rows of the grouped matmul); MLA counts its down/up projections and its
  scores over content + RoPE dims.
  """
  s = _shape(config)
  T = seq_len
  logits = 2 * T * s["d"] * s["V"]
  if getattr(config, "mlp", "") == "moe" or getattr(config, "attention", "mha") == "mla":
    return sum(layer_forward_flops(config, i, T) for i in range(s["L"])) + logits
  weights, _ = _block_matrices(s)
  per_layer = 2 * T * weights + 2 * 2 * T * T * s["nq"] * s["H"]
  return s["L"] * per_layer + logits


def layer_forward_flops(config, layer: int, seq_len: int) -> int:
  """Matmul FLOPs of block `layer` of a GPT (any attention and MLP kind) over T tokens."""
  c, T = config, seq_len
  s = _shape(c)
  d = s["d"]
  if getattr(c, "attention", "mha") == "mla":
    norms = (c.mla_q_rank or 0) + c.mla_kv_rank  # the RMSNorm scales inside _mla_params
    attn_weights = _mla_params(c) - norms
    h = getattr(c, "mla_head_dim", 0) or c.embed_dim // c.num_heads
    score_width = c.num_heads * (h + c.mla_rope_dim) + c.num_heads * h  # q.k, then p.v
  else:
    attn_weights, _ = _block_matrices(dict(s, F=0, mlp="gelu"))
    score_width = 2 * s["nq"] * s["H"]
  act = c.moe_activation if getattr(c, "mlp", "") == "moe" else c.mlp
  if _is_moe_layer(c, layer):
    width = c.moe_expert_dim or c.mlp_dim
    expert = _mlp_params(d, width, act, False)
    mlp_weights = d * c.moe_num_experts + c.moe_top_k * expert  # router + top-k experts
    if c.moe_num_shared:
      mlp_weights += _mlp_params(d, c.moe_num_shared * width, act, False)
  else:
    mlp_weights = _mlp_params(d, s["F"], act, False)
  return 2 * T * (attn_weights + mlp_weights) + 2 * T * T * score_width


def train_matmul_flops_per_token(config, seq_len: int) -> float:
  """Exact matmul FLOPs per training token: backward = 2 x forward for every matmul."""
  return 3.0 * forward_matmul_flops(config, seq_len) / seq_len

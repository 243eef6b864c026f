"""Matmul FLOPs of every family's forward pass, and training FLOPs per token for MFU.

The convention is PaLM's (lm/train/mfu.py): every matmul as computed, 2 FLOPs per
multiply-add, training = 3 x forward (the backward pass does two matmuls per forward
one); embedding lookups, norms, nonlinearities, softmax, the SSM's depthwise conv and
its elementwise recurrence are not counted. What "a token" is follows each task's
`tokens_per_step`, so tokens/s x FLOPs per token is FLOP/s:

| family | FLOPs of | per |
| --- | --- | --- |
| gpt | blocks (MoE: router + top-k + shared experts; MLA), logits; + MTP depths | input token |
| bert | encoder over all T positions, MLM head over the P prediction slots the task gathers (mlm_nsp's `mlm_positions`; all T without them), pooler + NSP once per sequence | input position |
| encdec | encoder over S source tokens, decoder over T targets with self- and cross-attention (keys/values of the S encoder outputs in every decoder layer), logits over T | source + target token (S + T) |
| recurrent | input and recurrent kernels of every gate, the output head | token |
| ssm | gate/input/output projections, the RG-LRU's two gate matrices, the MLP, logits | token |

Legend: L layers, d model dim, nq / nkv query / key-value heads, H head dim, V vocab,
S source length, T (target) length, G gates x hidden.
"""

from lm.scaling.counting import (
  _block_matrices,
  _mlp_params,
  _shape,
  forward_matmul_flops,
  layer_forward_flops,
)

gpt_forward_flops = forward_matmul_flops  # dense, MoE (active experts) and MLA GPTs


def mtp_forward_flops(config, seq_len: int, depth: int) -> int:
  """DeepSeek-V3 MTP modules (lm/objectives_mtp.py), per depth: the 2d -> d projection,
  one block like the last layer, and the shared output head."""
  s = _shape(config)
  T, d = seq_len, s["d"]
  per_depth = 2 * T * 2 * d * d + layer_forward_flops(config, s["L"] - 1, T) + 2 * T * d * s["V"]
  return depth * per_depth


def _attention_scores(T: int, S: int, s: dict) -> int:
  """q.k scores and the probability-weighted sum of values, T queries over S keys."""
  return 2 * 2 * T * S * s["nq"] * s["H"]


def bert_forward_flops(config, seq_len: int, mlm_positions: int | None = None) -> int:
  """`mlm_positions`: the MLM head's slots per sequence (None: every position)."""
  s = _shape(config)
  T, d = seq_len, s["d"]
  P = T if mlm_positions is None else mlm_positions
  weights, _ = _block_matrices(s)
  encoder = s["L"] * (2 * T * weights + _attention_scores(T, T, s))
  mlm = 2 * P * (d * d + d * s["V"])  # transform, then the tied embedding matrix
  pooler_nsp = 2 * (d * d + d * 2)  # the [CLS] position only
  return encoder + mlm + pooler_nsp


def encdec_forward_flops(config, source_len: int, target_len: int) -> int:
  s = _shape(config)
  S, T, d, H, nq, nkv = source_len, target_len, s["d"], s["H"], s["nq"], s["nkv"]
  weights, _ = _block_matrices(s)
  encoder = config.num_encoder_layers * (2 * S * weights + _attention_scores(S, S, s))
  cross = (2 * T * (d * nq * H + nq * H * d)  # queries and output from the decoder
           + 2 * S * 2 * d * nkv * H  # keys and values of the encoder output
           + _attention_scores(T, S, s))
  decoder = config.num_decoder_layers * (2 * T * weights + _attention_scores(T, T, s) + cross)
  return encoder + decoder + 2 * T * d * s["V"]


def recurrent_forward_flops(config, seq_len: int) -> int:
  G = {"rnn": 1, "gru": 3, "lstm": 4}[config.cell] * config.hidden_dim
  per_token = 0
  for i in range(config.num_layers):
    width = config.embed_dim if i == 0 else config.hidden_dim
    per_token += 2 * (width * G + config.hidden_dim * G)  # input kernel, recurrent kernel
  per_token += 2 * config.hidden_dim * config.vocab_size
  return seq_len * per_token


def ssm_forward_flops(config, seq_len: int) -> int:
  d, R = config.embed_dim, config.width
  per_layer = (2 * d * R + 2 * R * R + R * d  # gate, input; RG-LRU's r and i gates; output
               + _mlp_params(d, config.mlp_dim, config.mlp, False))
  return seq_len * 2 * (config.num_layers * per_layer + d * config.vocab_size)


def train_flops_per_token(family: str, model_config, seq_len: int, *, target_len: int = 0,
                          mtp_depth: int = 0, mlm_positions: int | None = None) -> float | None:
  """3 x forward matmul FLOPs per token (see the table above); None: no formula."""
  c = model_config
  if family == "gpt":
    forward = gpt_forward_flops(c, seq_len) + mtp_forward_flops(c, seq_len, mtp_depth)
  elif family == "bert":
    forward = bert_forward_flops(c, seq_len, mlm_positions)
  elif family == "encdec":
    return 3.0 * encdec_forward_flops(c, seq_len, target_len) / (seq_len + target_len)
  elif family == "recurrent":
    forward = recurrent_forward_flops(c, seq_len)
  elif family == "ssm":
    forward = ssm_forward_flops(c, seq_len)
  else:
    return None
  return 3.0 * forward / seq_len

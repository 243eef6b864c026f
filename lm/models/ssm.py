"""A non-Transformer LM: Hawk-style gated linear recurrence (Griffin's RG-LRU, De et al. 2024).

Legend: B batch, T time, S cache length, D model dim, R recurrence width, K conv width - 1,
V vocab.

Each layer is two pre-norm residual branches: a temporal-mixing block in place of
attention, then the shared MLP (lm/layers/mlp.py). The temporal block is
  gate = gelu(x W_g);  u = causal depthwise conv(x W_u);  h = RG-LRU(u);  out = (h * gate) W_o
and the RG-LRU is a diagonal, input-gated linear recurrence
  r_t = sigmoid(u_t W_a + b_a),  i_t = sigmoid(u_t W_x + b_x),  a_t = sigmoid(L)^(c r_t)
  h_t = a_t * h_{t-1} + sqrt(1 - a_t^2) * (i_t * u_t)
which is linear in h, so training runs it for all t at once with a parallel scan
(lm/layers/scan.py) while decoding carries only (h, the last K conv inputs) per layer:
O(1) memory per generated token, where a Transformer's KV cache grows with the context.

Three ways to run the model:
- training/eval: `__call__(tokens_BT)` from a zero state (one window at a time);
- O(1) decoding: `__call__(tokens_BT, state=...)` starts from `state` (`init_state`) and,
  with `return_state`, returns the state after the last token; T = 1 is a decode step;
- the KV-cache interface of the Transformer (`init_cache`, `caches=`, `cache_index=`),
  where the "cache" keeps the state and conv input after every position, so
  `lm.sampling.generate` and `lm.scoring` work unchanged (its padded prefill makes
  this O(S) memory; use `state=` for constant-memory decoding).
"""

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lm.layers import init
from lm.layers.embed import TokenEmbedding
from lm.layers.mlp import ACTIVATIONS, MLP
from lm.layers.norms import NORMS, make_norm
from lm.layers.scan import linear_recurrence, linear_recurrence_step

GATE_POWER = 8.0  # Griffin's constant c: a_t = sigmoid(L)^(c r_t)


@dataclasses.dataclass(frozen=True)
class SSMConfig:
  vocab_size: int = 0  # 0: taken from the tokenizer
  num_layers: int = 4
  embed_dim: int = 128
  recurrence_dim: int = 0  # R; 0: embed_dim
  mlp_dim: int = 512
  conv_width: int = 4  # causal depthwise conv before the recurrence (1 = none)
  max_len: int = 256  # positions of the generation cache; training windows may not exceed it
  dropout: float = 0.0
  norm: str = "rmsnorm"
  mlp: str = "gelu"
  use_bias: bool = True
  tie_embeddings: bool = True
  min_decay: float = 0.9  # a^c at init is uniform in [min_decay, max_decay] (Griffin)
  max_decay: float = 0.999

  def __post_init__(self):
    if self.vocab_size < 0:
      raise ValueError(f"model.vocab_size must be >= 0, got {self.vocab_size}")
    if min(self.num_layers, self.embed_dim, self.mlp_dim, self.conv_width, self.max_len) <= 0:
      raise ValueError("model sizes (num_layers, embed_dim, mlp_dim, conv_width, max_len) "
                       "must be positive")
    if self.recurrence_dim < 0:
      raise ValueError(f"model.recurrence_dim must be >= 0, got {self.recurrence_dim}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
    if self.norm not in NORMS or self.mlp not in ACTIVATIONS:
      raise ValueError(f"model.norm must be one of {NORMS} and model.mlp one of "
                       f"{tuple(ACTIVATIONS)}, got {self.norm!r}, {self.mlp!r}")
    if not 0.0 < self.min_decay < self.max_decay < 1.0:
      raise ValueError(f"need 0 < model.min_decay < model.max_decay < 1, got "
                       f"{self.min_decay}, {self.max_decay}")

  @property
  def width(self) -> int:
    return self.recurrence_dim or self.embed_dim


class SSMState(NamedTuple):
  """A layer's decoding state: the last K conv inputs and the recurrence state."""
  conv_BKR: jnp.ndarray
  h_BR: jnp.ndarray


class SSMCache(NamedTuple):
  """The generation-cache form: conv input and state after every position."""
  u_BSR: jnp.ndarray
  h_BSR: jnp.ndarray


def _decay_init(min_decay: float, max_decay: float):
  """L such that sigmoid(L)^c is uniform in [min_decay, max_decay]."""
  def initializer(key, shape, dtype=jnp.float32):
    a_c = jax.random.uniform(key, shape, dtype, min_decay, max_decay)
    a = a_c ** (1.0 / GATE_POWER)
    return jnp.log(a) - jnp.log1p(-a)
  return initializer


class RGLRU(nn.Module):
  """The real-gated linear recurrent unit over a whole window, from state h0."""
  width: int
  min_decay: float
  max_decay: float

  @nn.compact
  def __call__(self, u_BTR, h0_BR):
    def gate(name):
      return nn.Dense(self.width, name=name,
                      kernel_init=init.normal(self.width ** -0.5, (None, "mlp")),
                      bias_init=init.zeros(("mlp",)))(u_BTR)
    decay_R = self.param("decay", init.with_names(_decay_init(self.min_decay, self.max_decay),
                                                  ("mlp",)), (self.width,))
    r_BTR, i_BTR = jax.nn.sigmoid(gate("recurrence_gate")), jax.nn.sigmoid(gate("input_gate"))
    # log a_t = c r_t log sigmoid(L); computed in log space for stability near a = 1.
    log_a_BTR = GATE_POWER * r_BTR * jax.nn.log_sigmoid(decay_R)
    a_BTR = jnp.exp(log_a_BTR)
    scale_BTR = jnp.sqrt(-jnp.expm1(2.0 * log_a_BTR))  # sqrt(1 - a^2), keeps h at unit scale
    b_BTR = scale_BTR * i_BTR * u_BTR
    if u_BTR.shape[1] == 1:  # one decoding step: no scan needed
      return linear_recurrence_step(a_BTR[:, 0], b_BTR[:, 0], h0_BR)[:, None]
    return linear_recurrence(a_BTR, b_BTR, h0_BR)


class TemporalBlock(nn.Module):
  """gelu(x W_g) * RG-LRU(conv(x W_u)), projected back to D; returns per-step (u, h) too."""
  config: SSMConfig

  @nn.compact
  def __call__(self, x_BTD, state: SSMState):
    c = self.config
    R, K = c.width, c.conv_width - 1
    T = x_BTD.shape[1]

    def dense(features, names, stddev, name):
      return nn.Dense(features, use_bias=c.use_bias, name=name,
                      kernel_init=init.normal(stddev, names), bias_init=init.zeros(names[1:]))

    gate_BTR = jax.nn.gelu(dense(R, ("embed", "mlp"), init.DEFAULT_STDDEV, "gate")(x_BTD))
    u_BTR = dense(R, ("embed", "mlp"), init.DEFAULT_STDDEV, "input")(x_BTD)
    # Causal depthwise conv: out_t = sum_k w_k u_{t-k}; the state holds u_{-K..-1}.
    conv_KR = self.param("conv", init.normal(c.conv_width ** -0.5, (None, "mlp")),
                         (c.conv_width, R))
    history_BXR = jnp.concatenate([state.conv_BKR, u_BTR], axis=1)  # X = K + T
    conv_BTR = sum(conv_KR[k] * history_BXR[:, K - k:K - k + T] for k in range(c.conv_width))
    conv_BTR = conv_BTR + self.param("conv_bias", init.zeros(("mlp",)), (R,))
    h_BTR = RGLRU(R, c.min_decay, c.max_decay, name="rg_lru")(conv_BTR, state.h_BR)
    out_stddev = init.DEFAULT_STDDEV / (2 * c.num_layers) ** 0.5
    y_BTD = dense(x_BTD.shape[-1], ("mlp", "embed"), out_stddev, "output")(h_BTR * gate_BTR)
    new_state = SSMState(history_BXR[:, T:], h_BTR[:, -1])
    return y_BTD, new_state, u_BTR, h_BTR


class SSMBlock(nn.Module):
  config: SSMConfig

  @nn.compact
  def __call__(self, x_BTD, state: SSMState, deterministic: bool = True):
    c = self.config
    dropout = nn.Dropout(c.dropout, deterministic=deterministic)
    h_BTD, new_state, u_BTR, h_BTR = TemporalBlock(c, name="temporal")(
        make_norm(c.norm, "ln_temporal", c.use_bias)(x_BTD), state)
    x_BTD = x_BTD + dropout(h_BTD)
    h_BTD = MLP(c.mlp_dim, c.num_layers, c.use_bias, activation=c.mlp, name="mlp")(
        make_norm(c.norm, "ln_mlp", c.use_bias)(x_BTD))
    x_BTD = x_BTD + dropout(h_BTD)
    return nn.with_logical_constraint(x_BTD, ("batch", "length", "act_embed")), new_state, \
        u_BTR, h_BTR


class SSMLM(nn.Module):
  config: SSMConfig

  def init_state(self, batch: int) -> list[SSMState]:
    c = self.config
    return [SSMState(jnp.zeros((batch, c.conv_width - 1, c.width), jnp.float32),
                     jnp.zeros((batch, c.width), jnp.float32)) for _ in range(c.num_layers)]

  def init_cache(self, batch: int, length: int | None = None) -> list[SSMCache]:
    c = self.config
    shape = (batch, length or c.max_len, c.width)
    return [SSMCache(jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32))
            for _ in range(c.num_layers)]

  def _state_from_cache(self, cache: SSMCache, index) -> SSMState:
    """The state just before position `index`: h_{index-1} and u_{index-K..index-1}."""
    K = self.config.conv_width - 1
    B, _, R = cache.u_BSR.shape
    padded_BXR = jnp.concatenate([jnp.zeros((B, K, R), cache.u_BSR.dtype), cache.u_BSR], axis=1)
    conv_BKR = jax.lax.dynamic_slice_in_dim(padded_BXR, index, K, axis=1)
    h_BR = jax.lax.dynamic_index_in_dim(cache.h_BSR, jnp.maximum(index - 1, 0), 1, keepdims=False)
    return SSMState(conv_BKR, jnp.where(index > 0, h_BR, 0.0))

  @nn.compact
  def __call__(self, tokens_BT, *, state: list[SSMState] | None = None, caches=None,
               cache_index=0, deterministic: bool = True, return_state: bool = False):
    """Returns (logits_BTV, caches), or (logits_BTV, final state) with `return_state`."""
    c = self.config
    B = tokens_BT.shape[0]
    if caches is not None:
      state = [self._state_from_cache(cache, cache_index) for cache in caches]
    elif state is None:
      state = self.init_state(B)
    embed = TokenEmbedding(c.vocab_size, c.embed_dim, name="token_embed")
    x_BTD = nn.Dropout(c.dropout, deterministic=deterministic)(embed(tokens_BT))
    x_BTD = nn.with_logical_constraint(x_BTD, ("batch", "length", "act_embed"))
    new_state, new_caches = [], []
    for i in range(c.num_layers):
      x_BTD, layer_state, u_BTR, h_BTR = SSMBlock(c, name=f"block_{i}")(
          x_BTD, state[i], deterministic)
      new_state.append(layer_state)
      if caches is not None:
        new_caches.append(SSMCache(
            jax.lax.dynamic_update_slice_in_dim(caches[i].u_BSR, u_BTR, cache_index, 1),
            jax.lax.dynamic_update_slice_in_dim(caches[i].h_BSR, h_BTR, cache_index, 1)))
    x_BTD = make_norm(c.norm, "ln_final", c.use_bias)(x_BTD)
    if c.tie_embeddings:
      logits_BTV = embed.attend(x_BTD)
    else:
      logits_BTV = nn.DenseGeneral(c.vocab_size, use_bias=False, name="lm_head",
                                   kernel_init=init.normal(init.DEFAULT_STDDEV,
                                                           ("embed", "vocab")))(x_BTD)
    logits_BTV = nn.with_logical_constraint(logits_BTV.astype(jnp.float32),
                                            ("batch", "length", "act_vocab"))
    if caches is not None:
      return logits_BTV, new_caches
    return logits_BTV, (new_state if return_state else None)


def state_bytes(state) -> int:
  """Bytes of a decoding state (or a KV cache): what decoding must keep per sequence."""
  return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state)))

"""Parameter-efficient fine-tuning (PEFT) layers: LoRA, adapters, prefix and prompt tuning.

Legend: B batch, T length, D model dim, N heads, K key/value heads, H head dim, r LoRA
rank, m adapter width, P prefix/prompt length, L layers.

Each is a layer option of the model families (`PEFTFields` below, mixed into their
configs); which parameters train is decided separately, by regexes over parameter paths
(lm/adapt/trainable.py). With every option at 0 a model is exactly what it was.
  LoRA     (Hu et al. 2021)     W x + (alpha / r) B A x on chosen attention projections;
                                A random, B zero, so training starts at the base model.
  Adapters (Houlsby et al. 2019) h + W_up gelu(W_down h) after the attention and the MLP
                                sublayers of every block, near-identity at init.
  Prefix   (Li & Liang 2021)    P learned keys/values per layer that every query attends
                                to; trained through an MLP reparameterisation.
  Prompt   (Lester et al. 2021) P learned input embeddings before the tokens (the model
                                runs them through its own layers; lm/models/gpt.py).
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.layers import init

LORA_TARGETS = ("query", "key", "value", "out")


@dataclasses.dataclass(frozen=True)
class PEFTFields:
  """Config fields shared by the model families that support PEFT (0 = off)."""
  lora_rank: int = 0
  lora_alpha: float = 8.0  # the update is scaled by alpha / rank
  lora_targets: str = "query,value"  # comma-separated subset of LORA_TARGETS
  adapter_dim: int = 0  # bottleneck width m of the adapters
  prefix_len: int = 0  # P learned key/value vectors per layer
  prefix_hidden: int = 0  # > 0: reparameterise the prefix through an MLP of this width
  prompt_len: int = 0  # P soft-prompt embeddings (decoder family)

  def check_peft(self):
    if min(self.lora_rank, self.adapter_dim, self.prefix_len, self.prefix_hidden,
           self.prompt_len) < 0:
      raise ValueError("model.lora_rank, adapter_dim, prefix_len, prefix_hidden and prompt_len "
                       "must be >= 0")
    unknown = set(self.lora_target_tuple) - set(LORA_TARGETS)
    if self.lora_rank and (unknown or not self.lora_target_tuple):
      raise ValueError(f"model.lora_targets={self.lora_targets!r}; choose from {LORA_TARGETS}")
    if self.lora_rank and self.lora_alpha <= 0:
      raise ValueError(f"model.lora_alpha must be > 0, got {self.lora_alpha}")

  @property
  def lora_target_tuple(self) -> tuple[str, ...]:
    return tuple(t.strip() for t in self.lora_targets.split(",") if t.strip())


class LoRA(nn.Module):
  """The low-rank update (alpha / r) x A B of one DenseGeneral projection.

  `out_names` are the projection's output axes (e.g. ("heads", "head_dim")); for the
  output projection `in_axes` = 2 contracts (heads, head_dim) instead of embed.
  """
  rank: int
  alpha: float
  out_shape: tuple[int, ...]
  in_names: tuple[str, ...] = ("embed",)
  out_names: tuple[str, ...] = ("heads", "head_dim")

  @nn.compact
  def __call__(self, x):
    n_in = len(self.in_names)
    in_shape = x.shape[-n_in:]
    fan_in = math.prod(in_shape)
    # A ~ N(0, 1 / fan_in) keeps x A at the scale of x; B = 0 makes the update start at 0.
    a = self.param("a", init.normal(fan_in ** -0.5, (*self.in_names, None)),
                   (*in_shape, self.rank))
    b = self.param("b", init.zeros((None, *self.out_names)), (self.rank, *self.out_shape))
    letters = "ijk"[:n_in]
    out_letters = "uvw"[:len(self.out_shape)]
    h = jnp.einsum(f"...{letters},{letters}r->...r", x, a)
    return (self.alpha / self.rank) * jnp.einsum(f"...r,r{out_letters}->...{out_letters}", h, b)


def lora_delta_kernel(a, b, alpha: float):
  """The dense-kernel equivalent of a LoRA update: (alpha / r) A B, shaped like the kernel."""
  rank = a.shape[-1]
  return (alpha / rank) * jnp.tensordot(a, b, axes=[[a.ndim - 1], [0]])


class Adapter(nn.Module):
  """h + W_up gelu(W_down h + b_down) + b_up (Houlsby et al.), near-identity at init."""
  dim: int
  init_stddev: float = 1e-3  # small: the adapter starts as (almost) the identity

  @nn.compact
  def __call__(self, h_BTD):
    D = h_BTD.shape[-1]
    down = nn.Dense(self.dim, kernel_init=init.normal(self.init_stddev, ("embed", None)),
                    bias_init=init.zeros((None,)), name="down")
    up = nn.Dense(D, kernel_init=init.normal(self.init_stddev, (None, "embed")),
                  bias_init=init.zeros(("embed",)), name="up")
    return h_BTD + up(jax.nn.gelu(down(h_BTD)))


class PrefixKV(nn.Module):
  """Per-layer prefix keys and values, (k_PKH, v_PKH) for each of L layers.

  With `hidden` > 0 (Li & Liang's reparameterisation, which they found trains more
  stably) the prefix is MLP(E): a P x hidden table E through tanh and a linear map to
  all layers' keys and values; `lm.adapt.merge.bake_prefix` computes it once and stores
  it directly (hidden = 0) for inference.
  """
  length: int
  num_layers: int
  num_kv_heads: int
  head_dim: int
  hidden: int = 0

  @nn.compact
  def __call__(self):
    L, P, K, H = self.num_layers, self.length, self.num_kv_heads, self.head_dim
    if self.hidden <= 0:
      kv = self.param("kv", init.normal(init.DEFAULT_STDDEV, (None, None, None, "kv_heads",
                                                              "head_dim")), (L, 2, P, K, H))
    else:
      table = self.param("table", init.normal(1.0, (None, None)), (P, self.hidden))
      proj = nn.Dense(L * 2 * K * H,
                      kernel_init=init.normal(init.DEFAULT_STDDEV / self.hidden ** 0.5,
                                              (None, None)),
                      bias_init=init.zeros((None,)), name="mlp")
      kv = proj(jnp.tanh(table)).reshape(P, L, 2, K, H).transpose(1, 2, 0, 3, 4)
    return [(kv[i, 0], kv[i, 1]) for i in range(L)]


def prepend_prefix(k_BSKH, v_BSKH, mask_B1TS, prefix_kv):
  """Keys/values with the prefix in front, and a mask where every query sees the prefix."""
  k_PKH, v_PKH = prefix_kv
  B, T = mask_B1TS.shape[0], mask_B1TS.shape[2]
  P = k_PKH.shape[0]
  k_BSKH = jnp.concatenate([jnp.broadcast_to(k_PKH[None], (B, *k_PKH.shape)).astype(
      k_BSKH.dtype), k_BSKH], axis=1)
  v_BSKH = jnp.concatenate([jnp.broadcast_to(v_PKH[None], (B, *v_PKH.shape)).astype(
      v_BSKH.dtype), v_BSKH], axis=1)
  mask_B1TS = jnp.concatenate([jnp.ones((B, 1, T, P), bool),
                               jnp.broadcast_to(mask_B1TS, (B, 1, T, mask_B1TS.shape[-1]))],
                              axis=-1)
  return k_BSKH, v_BSKH, mask_B1TS

"""Mixture-of-experts feed-forward layer with DeepSeek-V3 routing, dropless by default.

Legend: B batch, T length, D model dim, F expert hidden dim, E routed experts, K experts
per token, N = B*T tokens, A = N*K token-expert assignments, J row blocks of Q rows.

Routing (DeepSeek-V3, arXiv:2412.19437 sec. 2.1.2): affinities s = softmax or sigmoid of
x W_r; the top-K experts are chosen by s + b, where b is a per-expert balancing bias that
only steers *selection*: the gate weights are the chosen experts' s (normalised over the
K chosen), and b never receives a gradient. b is a parameter named `balance_bias` so that
checkpoints, evaluation and sampling see it; the MoE training task moves it by +-gamma
after every step from that step's loads (lm/tasks/mtp_lm.py), and the optimizer leaves it
alone (its gradient is exactly zero, so AdamW's update is zero; it is 1-D, so undecayed).

Computation: the A assignments are sorted by expert and laid out in blocks of Q rows,
each block owned by one expert (every expert's rows padded to a multiple of Q), so the
experts' matmuls are one batched einsum over J <= A/Q + E blocks: no token is dropped
and no expert runs on tokens it was not chosen for (the dense all-experts computation
lives only in the tests, as the reference). `capacity_factor > 0` keeps at most
ceil(cf * A / E) assignments per expert, first come first served (GShard/Switch), and
drops the rest (their contribution is zero; the residual carries the token). With no more
assignments than experts (decoding a token), each assignment is its own one-row block.

Statistics are sown into the `moe_stats` collection (a no-op unless the caller makes
it mutable): `load` (E,) fraction of assignments per expert, `aux_loss` (Switch/GShard,
batch-wise), `seq_aux_loss` (DeepSeek-V3's sequence-wise balance loss) and
`dropped` (fraction of assignments dropped by the capacity).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.layers import init
from lm.layers.mlp import ACTIVATIONS, GATED, MLP

ROUTERS = ("softmax", "sigmoid")
STATS = "moe_stats"  # the flax collection the layer sows its statistics into


@dataclasses.dataclass(frozen=True)
class MoEConfig:
  num_experts: int = 8
  top_k: int = 2
  expert_dim: int = 128  # hidden width F of each routed (and each shared) expert
  num_shared: int = 0  # always-on shared experts (one MLP of width num_shared * F)
  activation: str = "swiglu"  # any lm.layers.mlp activation
  router: str = "softmax"  # softmax | sigmoid affinities
  normalize_gates: bool = True  # gates = s_k / sum of the chosen s (top-1 softmax: set False)
  capacity_factor: float = 0.0  # 0: dropless; else per-expert capacity ceil(cf * A / E)
  block_size: int = 32  # rows per expert block Q in the grouped matmul
  matmul_dtype: str = "float32"  # bfloat16: bf16 operands, f32 accumulation
  num_layers_for_init: int = 1

  def __post_init__(self):
    if not 1 <= self.top_k <= self.num_experts:
      raise ValueError(f"moe top_k={self.top_k} must be in [1, num_experts={self.num_experts}]")
    if self.router not in ROUTERS:
      raise ValueError(f"moe router {self.router!r}; known: {ROUTERS}")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"moe activation {self.activation!r}; known: {sorted(ACTIVATIONS)}")
    if self.capacity_factor < 0 or self.block_size <= 0 or self.expert_dim <= 0 \
        or self.num_shared < 0:
      raise ValueError("moe capacity_factor, num_shared must be >= 0; block_size, expert_dim > 0")


def route(logits_NE, bias_E, top_k: int, router: str = "softmax", normalize: bool = True):
  """(gates_NK, experts_NK, affinity_NE): top-k of affinity + bias; gates from affinity only."""
  logits_NE = logits_NE.astype(jnp.float32)
  affinity_NE = jax.nn.softmax(logits_NE) if router == "softmax" else jax.nn.sigmoid(logits_NE)
  _, experts_NK = jax.lax.top_k(affinity_NE + jax.lax.stop_gradient(bias_E), top_k)
  gates_NK = jnp.take_along_axis(affinity_NE, experts_NK, axis=-1)
  if normalize:
    gates_NK = gates_NK / (gates_NK.sum(-1, keepdims=True) + 1e-20)
  return gates_NK, experts_NK, affinity_NE


def expert_counts(experts_NK, num_experts: int):
  return jnp.zeros((num_experts,), jnp.float32).at[experts_NK.reshape(-1)].add(1.0)


def balance_loss(affinity_NE, experts_NK):
  """E * sum_e f_e P_e with f_e the fraction of the N*K assignments routed to e and P_e the
  mean (sum-normalised) affinity: 1 when perfectly balanced (GShard / DeepSeek-V2 form)."""
  N, E = affinity_NE.shape
  f_E = expert_counts(experts_NK, E) / (N * experts_NK.shape[-1])
  p_NE = affinity_NE / (affinity_NE.sum(-1, keepdims=True) + 1e-20)
  return E * jnp.sum(jax.lax.stop_gradient(f_E) * p_NE.mean(0))


def max_violation(load_E):
  """max load / mean load - 1 (DeepSeek's MaxVio); loads in any unit."""
  return load_E.max(-1) / jnp.maximum(load_E.mean(-1), 1e-20) - 1.0


def group_by_expert(experts_A, num_experts: int, block_size: int, capacity: int | None):
  """Where each assignment goes in the expert-blocked layout.

  Returns (dest_A, block_expert_J, num_rows): assignment a (in token order) is row dest_A[a]
  (== num_rows when dropped) of a (num_rows, D) buffer whose block j of `block_size` rows
  belongs to expert block_expert_J[j]. Within an expert, rows keep token order.
  """
  A, E, Q = experts_A.shape[0], num_experts, block_size
  J = A // Q + E  # sum_e ceil(n_e / Q) <= A / Q + E (static bound)
  order_A = jnp.argsort(experts_A, stable=True)
  sorted_e_A = experts_A[order_A]
  sizes_E = jnp.zeros((E,), jnp.int32).at[experts_A].add(1)
  starts_E = jnp.cumsum(sizes_E) - sizes_E
  rank_sorted_A = jnp.arange(A) - starts_E[sorted_e_A]
  rank_A = jnp.zeros((A,), jnp.int32).at[order_A].set(rank_sorted_A)
  if capacity is not None:
    sizes_E = jnp.minimum(sizes_E, capacity)
  padded_E = (sizes_E + Q - 1) // Q * Q
  pstarts_E = jnp.cumsum(padded_E) - padded_E
  keep_A = rank_A < sizes_E[experts_A]
  dest_A = jnp.where(keep_A, pstarts_E[experts_A] + rank_A, J * Q)
  # Block j belongs to the expert whose padded range contains row j * Q: the number of
  # experts whose range ends at or before it (blocks past the last range are unused).
  block_expert_J = (jnp.cumsum(padded_E)[None, :] <= jnp.arange(J)[:, None] * Q).sum(-1)
  return dest_A, jnp.minimum(block_expert_J, E - 1), J * Q


def _einsum(spec, a, b, matmul_dtype):
  if matmul_dtype == "bfloat16":
    a, b = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


class MoE(nn.Module):
  config: MoEConfig

  @nn.compact
  def __call__(self, x_BTD):
    c = self.config
    B, T, D = x_BTD.shape
    E, K, F, Q = c.num_experts, c.top_k, c.expert_dim, c.block_size
    x_ND = x_BTD.reshape(B * T, D)
    N = B * T
    router_WE = self.param("router", init.normal(init.DEFAULT_STDDEV, ("embed", None)), (D, E))
    bias_E = self.param("balance_bias", init.zeros((None,)), (E,))
    gates_NK, experts_NK, affinity_NE = route(x_ND.astype(jnp.float32) @ router_WE, bias_E, K,
                                              c.router, c.normalize_gates)

    capacity = None
    if c.capacity_factor > 0:
      capacity = max(1, int(-(-c.capacity_factor * N * K // E)))
    experts_A = experts_NK.reshape(-1)
    tokens_A = jnp.repeat(jnp.arange(N), K)
    if N * K <= E:
      # Few assignments (decoding one token): one row per block, in token order, each
      # block with its own expert's weights; no padding to E blocks.
      Q, J, R = 1, N * K, N * K
      same_AA = experts_A[:, None] == experts_A[None, :]
      rank_A = jnp.sum(jnp.tril(same_AA, -1), axis=1)  # earlier assignments to my expert
      keep_A = rank_A < capacity if capacity is not None else jnp.ones((R,), bool)
      dest_A, block_expert_J = jnp.where(keep_A, jnp.arange(R), R), experts_A
    else:
      dest_A, block_expert_J, R = group_by_expert(experts_A, E, Q, capacity)
      J = R // Q
    x_RD = jnp.zeros((R, D), x_ND.dtype).at[dest_A].set(x_ND[tokens_A], mode="drop")
    x_JQD = x_RD.reshape(J, Q, D)

    names = ("expert", "embed", "mlp")
    w_init = init.normal(init.DEFAULT_STDDEV, names)
    act = ACTIVATIONS[c.activation]
    if c.activation in GATED:
      wg_EDF = self.param("wi_gate", w_init, (E, D, F))
      wu_EDF = self.param("wi_up", w_init, (E, D, F))
      h_JQF = act(_einsum("jqd,jdf->jqf", x_JQD, wg_EDF[block_expert_J], c.matmul_dtype)) \
          * _einsum("jqd,jdf->jqf", x_JQD, wu_EDF[block_expert_J], c.matmul_dtype)
    else:
      wi_EDF = self.param("wi", w_init, (E, D, F))
      h_JQF = act(_einsum("jqd,jdf->jqf", x_JQD, wi_EDF[block_expert_J], c.matmul_dtype))
    out_stddev = init.DEFAULT_STDDEV / (2 * c.num_layers_for_init) ** 0.5
    wo_EFD = self.param("wo", init.normal(out_stddev, ("expert", "mlp", "embed")), (E, F, D))
    y_RD = _einsum("jqf,jfd->jqd", h_JQF, wo_EFD[block_expert_J], c.matmul_dtype).reshape(R, D)
    y_AD = y_RD.at[dest_A].get(mode="fill", fill_value=0.0)
    y_ND = jnp.zeros((N, D), jnp.float32).at[tokens_A].add(
        y_AD * gates_NK.reshape(-1, 1))
    y_BTD = y_ND.reshape(B, T, D).astype(x_BTD.dtype)

    if c.num_shared:
      y_BTD = y_BTD + MLP(c.num_shared * F, c.num_layers_for_init, False, c.matmul_dtype,
                          c.activation, name="shared")(x_BTD)

    counts_E = expert_counts(experts_NK, E)
    self.sow(STATS, "load", counts_E / (N * K))
    self.sow(STATS, "aux_loss", balance_loss(affinity_NE, experts_NK))
    self.sow(STATS, "seq_aux_loss", jax.vmap(balance_loss)(
        affinity_NE.reshape(B, T, E), experts_NK.reshape(B, T, K)).mean())
    self.sow(STATS, "dropped", (dest_A == R).sum() / (N * K))
    return y_BTD

"""Recurrent LMs: vanilla RNN (Elman), LSTM and GRU, multi-layer, `nn.scan` over time.

Legend: B batch, T time, S cache length, D embedding dim, H hidden dim, G gates * H,
V vocab.

Each layer projects its whole input sequence at once (one (B*T, D) x (D, G) matmul),
then scans only the recurrent part `h_{t-1} U` over time, which is all an RNN must do
sequentially. The state of a layer is a tuple: (c, h) for the LSTM, (h,) otherwise.

Two ways to run the model:
- training/eval: `__call__(tokens_BT, carry=...)` starts from `carry` (zeros if None)
  and returns the final carry, so truncated BPTT can feed it to the next window;
- generation/scoring: the KV-cache interface of the Transformer (`init_cache`,
  `caches=`, `cache_index=`), where the "cache" holds the state after every position;
  decoding at position i starts from the state stored at i-1. So `lm.sampling.generate`
  and `lm.scoring` work unchanged, carrying the state token by token.
"""

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from lm.layers import init
from lm.objectives import token_cross_entropy
from lm.train.state import TrainState
from lm.train.step import train_step

CELLS = ("rnn", "lstm", "gru")
_GATES = {"rnn": 1, "lstm": 4, "gru": 3}


@dataclasses.dataclass(frozen=True)
class RecurrentConfig:
  vocab_size: int = 0  # 0: taken from the tokenizer
  cell: str = "lstm"  # rnn (tanh Elman) | lstm | gru
  num_layers: int = 2
  embed_dim: int = 128
  hidden_dim: int = 256
  dropout: float = 0.0  # on the embeddings and between layers (not on the recurrence)
  # Positions kept by the generation/scoring state cache; training context is unbounded
  # (the state is carried across windows), so this only bounds sampling's refills.
  max_len: int = 1024
  tie_embeddings: bool = False  # needs embed_dim == hidden_dim

  def __post_init__(self):
    if self.cell not in CELLS:
      raise ValueError(f"model.cell={self.cell!r}; choose one of {CELLS}")
    if min(self.num_layers, self.embed_dim, self.hidden_dim, self.max_len) <= 0:
      raise ValueError("model sizes (num_layers, embed_dim, hidden_dim, max_len) must be positive")
    if self.vocab_size < 0:
      raise ValueError(f"model.vocab_size must be >= 0, got {self.vocab_size}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
    if self.tie_embeddings and self.embed_dim != self.hidden_dim:
      raise ValueError("model.tie_embeddings needs model.embed_dim == model.hidden_dim")


def cell_step(cell: str, xproj_BG, carry, u_HG, b_hn_H=None):
  """One time step given the input projection x W + b. Returns (new carry, output h).

  LSTM (gates i, f, g, o):  c' = s(f) c + s(i) tanh(g);  h' = s(o) tanh(c')
  GRU (r, z, n; cuDNN/PyTorch form):  n = tanh(x_n + r (h U_n + b_hn));  h' = (1-z) n + z h
  RNN:  h' = tanh(x W + h U + b)
  """
  if cell == "lstm":
    c_BH, h_BH = carry
    i, f, g, o = jnp.split(xproj_BG + h_BH @ u_HG, 4, axis=-1)
    c_BH = jax.nn.sigmoid(f) * c_BH + jax.nn.sigmoid(i) * jnp.tanh(g)
    h_BH = jax.nn.sigmoid(o) * jnp.tanh(c_BH)
    return (c_BH, h_BH), h_BH
  (h_BH,) = carry
  if cell == "gru":
    x_r, x_z, x_n = jnp.split(xproj_BG, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(h_BH @ u_HG, 3, axis=-1)
    r, z = jax.nn.sigmoid(x_r + h_r), jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * (h_n + b_hn_H))
    h_BH = (1.0 - z) * n + z * h_BH
    return (h_BH,), h_BH
  h_BH = jnp.tanh(xproj_BG + h_BH @ u_HG)
  return (h_BH,), h_BH


def zero_carry(cell: str, batch: int, hidden: int, num_layers: int):
  """Per layer: (c, h) for the LSTM, (h,) for RNN/GRU; all zeros, float32."""
  # Distinct arrays (not one repeated): the train step donates the carry's buffers.
  per_layer = 2 if cell == "lstm" else 1
  return tuple(tuple(jnp.zeros((batch, hidden), jnp.float32) for _ in range(per_layer))
               for _ in range(num_layers))


class _Recurrence(nn.Module):
  """The part that must run step by step; scanned over time by `nn.scan`."""
  cell: str
  hidden_dim: int

  @nn.compact
  def __call__(self, carry, xproj_BG):
    H, G = self.hidden_dim, _GATES[self.cell] * self.hidden_dim
    # Orthogonal recurrent weights keep the early gradients from exploding or vanishing.
    u_HG = self.param("recurrent", nn.with_logical_partitioning(
        nn.initializers.orthogonal(), ("embed", "mlp")), (H, G))
    b_hn_H = None
    if self.cell == "gru":
      b_hn_H = self.param("recurrent_bias", init.zeros(("embed",)), (H,))
    carry, h_BH = cell_step(self.cell, xproj_BG, carry, u_HG, b_hn_H)
    return carry, (h_BH, carry)


class RecurrentLayer(nn.Module):
  cell: str
  hidden_dim: int

  @nn.compact
  def __call__(self, x_BTD, carry):
    """Returns (h_BTH, final carry, carry after every step (leaves B, T, H))."""
    G = _GATES[self.cell] * self.hidden_dim
    bias = nn.initializers.zeros
    if self.cell == "lstm":  # forget-gate bias 1: remember by default (Jozefowicz et al. 2015)
      H = self.hidden_dim
      bias = lambda key, shape, dtype=jnp.float32: jnp.zeros(shape, dtype).at[H:2 * H].set(1.0)
    xproj_BTG = nn.Dense(G, name="input", kernel_init=nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), ("embed", "mlp")),
        bias_init=nn.with_logical_partitioning(bias, ("mlp",)))(x_BTD)
    scan = nn.scan(_Recurrence, variable_broadcast="params", split_rngs={"params": False},
                   in_axes=1, out_axes=1)
    carry, (h_BTH, carries_BT) = scan(self.cell, self.hidden_dim, name="recurrence")(
        carry, xproj_BTG)
    return h_BTH, carry, carries_BT


class RecurrentLM(nn.Module):
  config: RecurrentConfig

  def init_carry(self, batch: int):
    c = self.config
    return zero_carry(c.cell, batch, c.hidden_dim, c.num_layers)

  def init_cache(self, batch: int, length: int | None = None):
    """The state after every position, for `lm.sampling.generate`'s cache interface."""
    c = self.config
    return jax.tree.map(lambda z: jnp.zeros((batch, length or c.max_len) + z.shape[1:], z.dtype),
                        self.init_carry(batch))

  @nn.compact
  def __call__(self, tokens_BT, *, carry=None, caches=None, cache_index=0,
               deterministic: bool = True, return_carry: bool = False):
    """Returns (logits_BTV, caches), or (logits_BTV, final carry) with `return_carry`."""
    c = self.config
    B, T = tokens_BT.shape
    if caches is not None:  # start from the state stored just before `cache_index`
      prev = jnp.maximum(cache_index - 1, 0)
      stored = jax.tree.map(lambda s: jax.lax.dynamic_index_in_dim(s, prev, 1, keepdims=False),
                            caches)
      carry = jax.tree.map(lambda s: jnp.where(cache_index > 0, s, 0.0), stored)
    elif carry is None:
      carry = self.init_carry(B)

    embed = nn.Embed(c.vocab_size, c.embed_dim, name="token_embed",
                     embedding_init=init.normal(init.DEFAULT_STDDEV, ("vocab", "embed")))
    x = nn.Dropout(c.dropout, deterministic=deterministic)(embed(tokens_BT))
    new_carry, per_step = [], []
    for i in range(c.num_layers):
      x, layer_carry, layer_steps = RecurrentLayer(c.cell, c.hidden_dim, name=f"layer_{i}")(
          x, carry[i])
      x = nn.Dropout(c.dropout, deterministic=deterministic)(x)
      new_carry.append(layer_carry)
      per_step.append(layer_steps)
    if c.tie_embeddings:
      logits_BTV = embed.attend(x)
    else:
      logits_BTV = nn.Dense(c.vocab_size, name="lm_head", kernel_init=nn.with_logical_partitioning(
          nn.initializers.lecun_normal(), ("embed", "vocab")),
          bias_init=init.zeros(("vocab",)))(x)
    logits_BTV = logits_BTV.astype(jnp.float32)
    if caches is not None:
      caches = jax.tree.map(
          lambda cache, steps: jax.lax.dynamic_update_slice_in_dim(cache, steps, cache_index, 1),
          caches, tuple(per_step))
      return logits_BTV, caches
    if return_carry:
      return logits_BTV, tuple(new_carry)
    return logits_BTV, None


# ------------------------------------------------------------------ truncated BPTT
# The state after one training window seeds the next: row b of batch i+1 continues
# row b of batch i (`lm.data.pipeline.consecutive_train_iterator`), so the model sees
# unbounded context while gradients stop at window boundaries.


@flax.struct.dataclass
class CarryTrainState:
  """`TrainState` plus the recurrent state carried into the next batch (checkpointed too)."""
  step: jax.Array
  params: Any
  opt_state: optax.OptState
  carry: Any


def create_carry_state(params, tx: optax.GradientTransformation, carry) -> CarryTrainState:
  return CarryTrainState(step=jnp.zeros((), jnp.int32), params=params,
                         opt_state=tx.init(params), carry=carry)


def tbptt_loss(model: RecurrentLM):
  """Causal-LM loss from `batch["carry"]` (zeros if absent, and in rows where `batch["reset"]`).

  The final state comes back as `metrics["carry"]`, without gradient: the truncation.
  """

  def loss_fn(params, batch, rng, deterministic=False):
    carry = batch.get("carry")
    if carry is not None and "reset" in batch:
      carry = jax.tree.map(lambda s_BH: jnp.where(batch["reset"][:, None], 0.0, s_BH), carry)
    logits_BTV, new_carry = model.apply({"params": params}, batch["inputs"], carry=carry,
                                        return_carry=True, deterministic=deterministic,
                                        rngs={"dropout": rng})
    loss, num_tokens = token_cross_entropy(logits_BTV, batch["targets"], batch.get("weights"))
    metrics = {"loss": loss, "num_tokens": num_tokens}
    if carry is not None:
      metrics["carry"] = jax.lax.stop_gradient(new_carry)
    return loss, metrics

  return loss_fn


def make_tbptt_multi_step(loss_fn, tx):
  """`lm.train.step.make_multi_step` for a `CarryTrainState`: the same `train_step`, with
  the state's carry passed in through the batch and the loss's final carry kept."""
  step = functools.partial(train_step, loss_fn=loss_fn, tx=tx)

  def carry_step(state: CarryTrainState, batch, base_rng):
    inner = TrainState(step=state.step, params=state.params, opt_state=state.opt_state)
    inner, metrics = step(inner, dict(batch, carry=state.carry), base_rng)
    carry = metrics.pop("carry")
    return CarryTrainState(inner.step, inner.params, inner.opt_state, carry), metrics

  @functools.partial(jax.jit, donate_argnums=(0,))
  def multi_step(state, batches_K, base_rng):
    return jax.lax.scan(lambda s, b: carry_step(s, b, base_rng), state, batches_K)

  return multi_step


def stream_nll(model: RecurrentLM, params, ids, chunk: int = 1024) -> tuple[float, int]:
  """Summed -log p(x_i | x_<i) over tokens 1.. of `ids`, reading them as one stream.

  The state is carried from chunk to chunk, so every token is conditioned on the whole
  text before it (the RNN's unbounded context), unlike windowed evaluation.
  Returns (total nats, number of predicted tokens).
  """

  @jax.jit
  def run(carry, inputs_1T, targets_1T, weights_1T):
    logits_1TV, carry = model.apply({"params": params}, inputs_1T, carry=carry,
                                    return_carry=True)
    logp_1TV = jax.nn.log_softmax(logits_1TV)
    nll_1T = -jnp.take_along_axis(logp_1TV, targets_1T[..., None], -1)[..., 0]
    return carry, (nll_1T * weights_1T).sum()

  ids = jnp.asarray(ids, jnp.int32)
  num = int(ids.shape[0]) - 1
  padded = jnp.zeros(-(-num // chunk) * chunk + 1, jnp.int32).at[:num + 1].set(ids)
  weights = (jnp.arange(padded.shape[0] - 1) < num).astype(jnp.float32)
  carry, total = model.init_carry(1), 0.0
  for start in range(0, num, chunk):
    sl = slice(start, start + chunk)
    carry, nll = run(carry, padded[:-1][sl][None], padded[1:][sl][None], weights[sl][None])
    total += float(nll)
  return total, num

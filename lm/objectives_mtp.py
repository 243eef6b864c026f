"""Multi-token prediction (DeepSeek-V3, arXiv:2412.19437 sec. 2.2) and the MoE balance losses.

Legend: B batch, T length, D model dim, V vocab, E experts.

D sequential MTP modules sit on top of a GPT. Module k (1..D) at position i combines the
previous depth's hidden state h^{k-1}_i (h^0: the GPT's last hidden state, before its final
norm) with the embedding of token t_{i+k}:
    h^k_i = Block(W_k [RMSNorm(h^{k-1}_i); RMSNorm(Emb(t_{i+k}))])
and predicts t_{i+k+1} through the GPT's own output head (the tied embedding or lm_head)
after the module's final norm. Depth k thus sees tokens <= i+k and predicts i+k+1: the
causal chain is kept at every depth, and the last k positions have no target. The loss is
    L = L_main + lambda / D * sum_k L_k.
The modules' params live beside the GPT's in the same tree (`mtp_1`, ..., `mtp_D`); at
inference they are dropped (`gpt_params`) and the GPT runs alone.

The same loss function adds the MoE balance terms the layers sow (lm/layers/moe.py):
alpha * mean-over-layers Switch/GShard loss + alpha_seq * sequence-wise loss, and reports
per-layer loads for the auxiliary-loss-free bias update (lm/tasks/mtp_lm.py).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from lm.layers import init
from lm.layers import masks as masks_lib
from lm.layers.block import block_class
from lm.layers.moe import STATS, max_violation
from lm.layers.norms import make_norm, rms_norm
from lm.objectives import token_cross_entropy

MTP_PREFIX = "mtp_"


def gpt_params(params):
  """The GPT's own params: what inference needs (the MTP modules dropped)."""
  return {k: v for k, v in params.items() if not k.startswith(MTP_PREFIX)}


def mtp_inputs_and_targets(inputs_BT, targets_BT, weights_BT, k: int):
  """Depth k at position i embeds t_{i+k} = inputs[i+k] and predicts t_{i+k+1} = targets[i+k].

  Returns (tokens_BT, targets_BT, weights_BT) shifted left by k; the last k positions
  (beyond the window) get weight 0.
  """
  T = inputs_BT.shape[1]
  if weights_BT is None:
    weights_BT = jnp.ones(inputs_BT.shape, jnp.float32)

  def shift(a):
    return jnp.concatenate([a[:, k:], jnp.zeros_like(a[:, :k])], axis=1)

  valid_1T = (jnp.arange(T) < T - k)[None]
  return shift(inputs_BT), shift(targets_BT), shift(weights_BT) * valid_1T


class MTPModule(nn.Module):
  """One depth: norms, concat, projection, one Transformer block, final norm."""
  config: object  # the GPTConfig

  @nn.compact
  def __call__(self, h_BTD, emb_BTD, positions_BT, *, deterministic: bool = True):
    c = self.config
    x_BT2D = jnp.concatenate([rms_norm("hidden_norm")(h_BTD), rms_norm("embed_norm")(emb_BTD)],
                             axis=-1)
    x_BTD = nn.Dense(c.embed_dim, use_bias=False, name="proj",
                     kernel_init=init.normal(init.DEFAULT_STDDEV, (None, "embed")))(x_BT2D)
    mask_B1TS = masks_lib.causal_mask(positions_BT, positions_BT)
    block = block_class(c.remat)(c.block_config("dense", c.num_layers - 1), name="block")
    x_BTD, _ = block(x_BTD, mask_B1TS, None, positions_BT=positions_BT,
                     deterministic=deterministic)
    return x_BTD, make_norm(c.norm, "out_norm", c.use_bias)(x_BTD)


def shared_head(model_config, params, x_BTD):
  """The GPT's output projection applied to x: tied embedding or lm_head."""
  if model_config.tie_embeddings:
    logits_BTV = jnp.einsum("btd,vd->btv", x_BTD, params["token_embed"]["embedding"])
  else:
    logits_BTV = jnp.einsum("btd,dv->btv", x_BTD, params["lm_head"]["kernel"])
  return logits_BTV.astype(jnp.float32)


def mtp_forward(model, params, inputs_BT, depth: int, *, deterministic=True, rng=None):
  """Main logits, per-depth logits [(B,T,V)] * depth, and the sown MoE stats by module path."""
  c = model.config
  rngs = {"dropout": rng if rng is not None else jax.random.key(0)}
  (logits_BTV, _), state = model.apply({"params": gpt_params(params)}, inputs_BT,
                                       deterministic=deterministic, rngs=rngs,
                                       mutable=["intermediates", STATS])
  stats = {path: value for path, value in _flat(state.get(STATS, {})).items()}
  h_BTD = state["intermediates"]["final_hidden_BTD"][0]
  B, T = inputs_BT.shape
  positions_BT = jnp.broadcast_to(jnp.arange(T)[None], (B, T))
  depth_logits = []
  for k in range(1, depth + 1):
    tokens_BT, _, _ = mtp_inputs_and_targets(inputs_BT, inputs_BT, None, k)
    emb_BTD = jnp.take(params["token_embed"]["embedding"], tokens_BT, axis=0)
    name = f"{MTP_PREFIX}{k}"
    (h_BTD, out_BTD), st = MTPModule(c).apply(
        {"params": params[name]}, h_BTD, emb_BTD, positions_BT, deterministic=deterministic,
        rngs={"dropout": jax.random.fold_in(rngs["dropout"], k)}, mutable=[STATS])
    stats.update({f"{name}/{path}": v for path, v in _flat(st.get(STATS, {})).items()})
    depth_logits.append(shared_head(c, params, out_BTD))
  return logits_BTV, depth_logits, stats


def _flat(tree) -> dict:
  """{'block_1/moe': {'load': x, ...}} from the sown collection (each value a 1-tuple)."""
  out = {}
  for key, value in traverse_util.flatten_dict(tree).items():
    out.setdefault("/".join(key[:-1]), {})[key[-1]] = value[0]
  return out


def init_mtp_params(model, seq_len: int, depth: int, seed: int):
  """Boxed params of the D MTP modules, keyed `mtp_k` (to merge into the GPT's)."""
  c = model.config
  h_BTD = jnp.zeros((1, seq_len, c.embed_dim))
  positions_BT = jnp.arange(seq_len)[None]
  return {f"{MTP_PREFIX}{k}": MTPModule(c).init(jax.random.key(seed + 1000 * k), h_BTD, h_BTD,
                                                positions_BT)["params"]
          for k in range(1, depth + 1)}


def mtp_lm_loss(model, depth: int = 1, weight: float = 0.3, aux_weight: float = 0.0,
                seq_aux_weight: float = 0.0):
  """loss_fn(params, batch, rng, deterministic=False, with_loads=False) -> (total, metrics).

  metrics["loss"] is the main head's cross-entropy (comparable with causal_lm); the
  optimised total adds the MTP and balance terms. with_loads=True also returns the loads
  of every MoE layer, {module path: (E,)}, under "balance_loads" (not a scalar: the train
  step consumes it, evaluation never asks for it).
  """

  def loss_fn(params, batch, rng, deterministic=False, with_loads=False):
    inputs_BT, targets_BT = batch["inputs"], batch["targets"]
    weights_BT = batch.get("weights")
    logits_BTV, depth_logits, stats = mtp_forward(model, params, inputs_BT, depth,
                                                  deterministic=deterministic, rng=rng)
    loss, num_tokens = token_cross_entropy(logits_BTV, targets_BT, weights_BT)
    metrics = {"loss": loss, "num_tokens": num_tokens}
    total = loss
    for k, logits_k in enumerate(depth_logits, start=1):
      _, targets_k, weights_k = mtp_inputs_and_targets(inputs_BT, targets_BT, weights_BT, k)
      loss_k, tokens_k = token_cross_entropy(logits_k, targets_k, weights_k)
      total = total + weight / depth * loss_k
      metrics[f"mtp_loss_{k}"], metrics[f"mtp_tokens_{k}"] = loss_k, tokens_k
    if stats:
      loads_LE = jnp.stack([s["load"] for s in stats.values()])
      aux = jnp.mean(jnp.stack([s["aux_loss"] for s in stats.values()]))
      seq_aux = jnp.mean(jnp.stack([s["seq_aux_loss"] for s in stats.values()]))
      total = total + aux_weight * aux + seq_aux_weight * seq_aux
      violation_L = max_violation(loads_LE)
      metrics.update(aux_loss=aux, seq_aux_loss=seq_aux, max_violation=violation_L.mean(),
                     max_violation_worst=violation_L.max(),
                     dropped=jnp.mean(jnp.stack([s["dropped"] for s in stats.values()])))
      metrics.update({f"load_{e}": load for e, load in enumerate(loads_LE.mean(0))})
      if with_loads:
        metrics["balance_loads"] = {path: s["load"] for path, s in stats.items()}
    metrics["total_loss"] = total
    return total, metrics

  return loss_fn

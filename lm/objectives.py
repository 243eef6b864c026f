"""Training objectives as loss functions `loss_fn(params, batch, rng) -> (loss, metrics)`.

Each family's objective is a separate function; the train step only sees the loss
function, so new objectives never touch the trainer.
"""

import jax.numpy as jnp
import optax


def token_cross_entropy(logits_BTV, targets_BT, weights_BT=None):
  """Mean next-token cross-entropy over the weighted tokens, and the weight total."""
  losses_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, targets_BT)
  if weights_BT is None:
    weights_BT = jnp.ones_like(losses_BT)
  total = weights_BT.sum()
  return (losses_BT * weights_BT).sum() / jnp.maximum(total, 1.0), total


def causal_lm_loss(model):
  """Next-token prediction: batch = {"inputs": (B,T), "targets": (B,T), ["weights"]}."""

  def loss_fn(params, batch, rng, deterministic=False):
    logits_BTV, _ = model.apply({"params": params}, batch["inputs"],
                                deterministic=deterministic, rngs={"dropout": rng})
    loss, num_tokens = token_cross_entropy(logits_BTV, batch["targets"], batch.get("weights"))
    return loss, {"loss": loss, "num_tokens": num_tokens}

  return loss_fn

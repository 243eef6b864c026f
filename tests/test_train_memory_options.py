"""Gradient accumulation and rematerialisation change memory, never the update.

References: the plain full-batch gradient of the same loss (accumulation), and the
same model without remat (every policy).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_helpers import random_params

from lm.models.gpt import GPT, GPTConfig
from lm.objectives import causal_lm_loss
from lm.train.step import accumulated_grads

CFG = GPTConfig(vocab_size=19, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32, max_len=8)


def _batch(rows=8, seed=0):
  x = np.random.default_rng(seed).integers(0, CFG.vocab_size, (rows, CFG.max_len + 1))
  return {"inputs": jnp.asarray(x[:, :-1], jnp.int32), "targets": jnp.asarray(x[:, 1:], jnp.int32)}


@pytest.mark.parametrize("microbatches", [2, 4])
def test_accumulated_gradient_equals_full_batch_gradient(microbatches):
  model = GPT(CFG)
  params = random_params(model, 0)
  loss_fn = causal_lm_loss(model)
  batch = _batch()
  (_, _), want = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, jax.random.key(0))
  got, metrics = jax.jit(lambda p, b: accumulated_grads(loss_fn, p, b, jax.random.key(0),
                                                        microbatches))(params, batch)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-5, atol=2e-7)
  full_loss = loss_fn(params, batch, jax.random.key(0))[0]
  np.testing.assert_allclose(metrics["loss"], full_loss, rtol=1e-6)


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_keeps_loss_and_gradients(policy):
  # ALiBi: the block's bias function is a static (non-array) argument of the remat.
  plain = GPT(dataclasses.replace(CFG, position="alibi"))
  remat = GPT(dataclasses.replace(CFG, remat=policy, position="alibi"))
  params = random_params(plain, 1)
  batch = _batch(4, seed=1)
  grads = [jax.jit(jax.grad(lambda p, m=m: causal_lm_loss(m)(p, batch, jax.random.key(0))[0]))(
      params) for m in (plain, remat)]
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)

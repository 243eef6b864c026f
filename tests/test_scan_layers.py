"""model.scan_layers: the scanned stack against the unrolled one on the same (stacked) params."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_helpers import random_params

from lm import sharding
from lm.models.gpt import GPT, GPTConfig
from lm.models.scan_layers import stack_caches, stack_layers, unstack_caches, unstack_layers

VARIANTS = {
    "gpt2": {},
    "llama_remat_lora": dict(position="rope", norm="rmsnorm", mlp="swiglu", num_kv_heads=2,
                             use_bias=False, remat="full", tie_embeddings=False, lora_rank=2,
                             lora_targets="query,value", adapter_dim=4),
    "alibi_local": dict(position="alibi", attention_pattern="local", attention_window=4),
    "mla": dict(attention="mla", position="none", mla_kv_rank=8, mla_rope_dim=4),
}


def _pair(num_layers=3, **kw):
  cfg = GPTConfig(vocab_size=29, num_layers=num_layers, num_heads=4, embed_dim=16, mlp_dim=24, max_len=12,
                  **kw)
  return cfg, dataclasses.replace(cfg, scan_layers=True)


def _tokens(cfg, batch=2):
  return jax.random.randint(jax.random.key(7), (batch, cfg.max_len), 0, cfg.vocab_size)


def test_scanned_forward_and_grads_equal_unrolled():
  cfg, scfg = _pair(**VARIANTS["llama_remat_lora"])
  params = random_params(GPT(cfg), seed=0)
  stacked = stack_layers(params, cfg.num_layers)
  tokens = _tokens(cfg)

  def loss(model, p):
    logits = model.apply({"params": p}, tokens)[0]
    return -jnp.mean(jax.nn.log_softmax(logits)[..., 3])

  want, want_grads = jax.jit(jax.value_and_grad(lambda p: loss(GPT(cfg), p)))(params)
  got, got_grads = jax.jit(jax.value_and_grad(lambda p: loss(GPT(scfg), p)))(stacked)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(unstack_layers(got_grads)),
                          jax.tree.leaves(want_grads), strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_stack_unstack_round_trip_and_init_layout():
  cfg, scfg = _pair()
  params = random_params(GPT(cfg), seed=1)
  stacked = stack_layers(params, cfg.num_layers)
  assert "block_0" not in stacked
  kernel = stacked["blocks"]["block"]["attn"]["query"]["kernel"]
  np.testing.assert_array_equal(kernel[2], params["block_2"]["attn"]["query"]["kernel"])
  back = unstack_layers(stacked)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
    np.testing.assert_array_equal(a, b)
  # The scanned model's own init has exactly this layout, with a `layers` logical axis.
  boxed = jax.eval_shape(lambda: GPT(scfg).init(jax.random.key(0), _tokens(scfg, 1)))["params"]
  assert jax.tree.map(lambda x: x.shape, nn.meta.unbox(boxed)) == \
      jax.tree.map(lambda x: x.shape, stacked)
  names = boxed["blocks"]["block"]["attn"]["query"]["kernel"].names
  assert names == ("layers", "embed", "heads", "head_dim")
  rules = sharding.make_rules("fsdp_tp")
  assert sharding.logical_to_spec(names, rules) == \
      jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)


@pytest.mark.parametrize("variant", ["gpt2", "alibi_local", "mla"])
def test_scanned_forward_and_kv_cache_decode_equal_unrolled_forward(variant):
  cfg, scfg = _pair(**VARIANTS[variant])
  params = random_params(GPT(cfg), seed=2)
  stacked = stack_layers(params, cfg.num_layers)
  tokens = _tokens(cfg)
  want = jax.jit(GPT(cfg).apply)({"params": params}, tokens)[0]  # unrolled, no cache
  model = GPT(scfg)
  full = jax.jit(model.apply)({"params": stacked}, tokens)[0]  # scanned, no cache
  np.testing.assert_allclose(full, want, rtol=1e-5, atol=1e-6)
  caches = model.init_cache(tokens.shape[0])
  assert jax.tree.leaves(caches)[0].shape[:3] == (cfg.num_layers, 2, cfg.max_len)
  prefill = 5
  apply = jax.jit(lambda tokens_BT, caches, index: model.apply(
      {"params": stacked}, tokens_BT, caches=caches, cache_index=index))
  logits, caches = apply(tokens[:, :prefill], caches, 0)
  got = [logits]
  for t in range(prefill, cfg.max_len):
    logits, caches = apply(tokens[:, t:t + 1], caches, jnp.int32(t))
    got.append(logits)
  np.testing.assert_allclose(jnp.concatenate(got, axis=1), want, rtol=1e-4, atol=1e-5)
  per_layer = unstack_caches(caches)
  assert len(per_layer) == cfg.num_layers
  np.testing.assert_array_equal(jax.tree.leaves(stack_caches(per_layer))[0],
                                jax.tree.leaves(caches)[0])


def _count_dots(jaxpr) -> int:
  """dot_general equations in the program text (a scan body counts once, not per layer)."""
  total = 0
  for eqn in jaxpr.eqns:
    total += eqn.primitive.name == "dot_general"
    for sub in jax.core.jaxprs_in_params(eqn.params):
      total += _count_dots(sub)
  return total


def test_scanned_program_has_one_block_body():
  """Compile time follows program size: scanned, it does not grow with depth."""
  counts = {}
  for scan in (False, True):
    for layers in (2, 8):
      cfg = GPTConfig(vocab_size=29, num_layers=layers, num_heads=2, embed_dim=8, mlp_dim=8,
                      max_len=4, scan_layers=scan, remat="full")
      model = GPT(cfg)
      tokens = jnp.zeros((1, 4), jnp.int32)
      params = jax.eval_shape(lambda m=model: m.init(jax.random.key(0), tokens))
      grad = jax.grad(lambda p, m=model: m.apply(p, tokens)[0].sum())
      counts[scan, layers] = _count_dots(jax.make_jaxpr(grad)(params).jaxpr)
  assert counts[True, 8] == counts[True, 2]
  assert counts[False, 8] > 3 * counts[False, 2] // 2 > 0  # unrolled: grows with depth


def test_dropout_is_keyed_and_active_in_the_scan():
  cfg, scfg = _pair(num_layers=2, dropout=0.5)
  params = stack_layers(random_params(GPT(cfg), seed=3), cfg.num_layers)
  tokens = _tokens(cfg)
  model = GPT(scfg)

  @jax.jit
  def run(key):
    return model.apply({"params": params}, tokens, deterministic=False,
                       rngs={"dropout": key})[0]
  a, b, again = run(jax.random.key(0)), run(jax.random.key(1)), run(jax.random.key(0))
  np.testing.assert_array_equal(a, again)
  assert not np.allclose(a, b)
  assert not np.allclose(a, model.apply({"params": params}, tokens)[0])


@pytest.mark.parametrize("kw, what", [
    (dict(attention_pattern="alternating_local"), "attention_pattern"),
    (dict(mlp="moe"), "mlp=moe"),
    (dict(prefix_len=2), "prefix_len"),
    (dict(position="t5"), "position=t5"),
])
def test_heterogeneous_layers_are_a_config_error(kw, what):
  with pytest.raises(ValueError, match=f"scan_layers.*{what}"):
    GPTConfig(scan_layers=True, **kw)

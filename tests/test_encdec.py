"""Encoder-decoder family: what each output depends on (via gradients), padding, KV cache.

Dependence is read from gradients with respect to the shared embedding table: every
token id appears at one position only, so the gradient on a token's row is the
dependence on that position. Masked attention gives exactly zero gradient, so the
"does not depend" checks are exact; the "depends" checks need a non-zero gradient.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.layers.attention import CROSS_KV
from lm.models.encdec import EncDecConfig, EncoderDecoder, cross_kv_of, shift_right

V, S, T = 32, 7, 6


def make(position, **kw):
  cfg = EncDecConfig(vocab_size=V, num_encoder_layers=2, num_decoder_layers=2, num_heads=2,
                     embed_dim=16, mlp_dim=32, max_len=12, max_target_len=10,
                     position=position, **kw)
  return EncoderDecoder(cfg)


def random_params(model, seed, scale=0.3):
  """Random O(scale) parameters (norm scales around 1): far from the near-uniform init."""
  c = model.config
  shapes = jax.eval_shape(lambda: nn.meta.unbox(model.init(
      jax.random.key(0), jnp.zeros((1, c.max_len), jnp.int32),
      jnp.zeros((1, c.max_target_len), jnp.int32))["params"]))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    x = scale * rng.standard_normal(leaf.shape)
    if jax.tree_util.keystr(path).endswith("['scale']"):
      x = x + 1.0
    return jnp.asarray(x, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


# Distinct ids: source 2..8 (real) then padding; decoder inputs 20..25.
SRC_LEN = 5
SOURCE = np.array([[2, 3, 4, 5, 6, 0, 0]], np.int32)
DEC_IN = np.array([[20, 21, 22, 23, 24, 25]], np.int32)
PROBE = 31  # a vocabulary entry used nowhere in the inputs: read logits at it


def _embedding_jacobian(params, f):
  """d f(params) / d embedding table, summed over the embedding dim: (outputs..., V)."""
  def g(table):
    return f(dict(params, embed={"embedding": table}))
  jac = jax.jit(jax.jacrev(g))(params["embed"]["embedding"])
  return np.abs(np.asarray(jac)).sum(-1)


@pytest.fixture(scope="module", params=["t5", "learned", "rope"])
def fx(request):
  model = make(request.param)
  return model, random_params(model, seed=0)


def test_encoder_output_depends_on_every_real_token_and_no_padding(fx):
  model, params = fx
  dep_TV = _embedding_jacobian(params, lambda p: model.apply(
      {"params": p}, SOURCE, method="encode")[0, :SRC_LEN].sum(-1))
  for t in range(SRC_LEN):
    assert (dep_TV[t, SOURCE[0, :SRC_LEN]] > 1e-6).all(), (t, dep_TV[t, :10])
    # The pad row (id 0) is used only at padding positions, which no real query sees.
    assert dep_TV[t, 0] == 0.0


def test_decoder_depends_on_the_past_and_the_whole_source_only(fx):
  model, params = fx
  dep_TV = _embedding_jacobian(params, lambda p: model.apply(
      {"params": p}, SOURCE, DEC_IN)[0, :, PROBE])
  for t in range(DEC_IN.shape[1]):
    past, future = DEC_IN[0, :t + 1], DEC_IN[0, t + 1:]
    assert (dep_TV[t, past] > 1e-6).all(), (t, dep_TV[t, past])
    assert (dep_TV[t, future] == 0.0).all(), (t, dep_TV[t, future])
    assert (dep_TV[t, SOURCE[0, :SRC_LEN]] > 1e-6).all()
    assert dep_TV[t, 0] == 0.0  # source padding


@pytest.mark.parametrize("position", ["t5", "learned", "alibi"])
def test_padding_length_does_not_change_outputs(position):
  model = make(position)
  params = random_params(model, seed=1)
  short = SOURCE[:, :SRC_LEN + 1]
  long = np.zeros((1, 12), np.int32)
  long[:, :SRC_LEN] = SOURCE[:, :SRC_LEN]
  apply = jax.jit(model.apply)
  a = apply({"params": params}, short, DEC_IN)
  b = apply({"params": params}, long, DEC_IN)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("position", ["t5", "learned", "rope"] + [
    pytest.param(p, marks=pytest.mark.slow) for p in ("sinusoidal", "alibi", "none")])
def test_cached_decoding_equals_the_full_decoder_forward(position):
  model = make(position)
  params = random_params(model, seed=2)
  rng = np.random.default_rng(3)
  source = rng.integers(1, V, (2, S)).astype(np.int32)
  source[1, 4:] = 0  # padding in the second row
  targets = rng.integers(1, V, (2, T)).astype(np.int32)
  dec_in = np.asarray(shift_right(jnp.asarray(targets)))
  full = np.asarray(jax.jit(model.apply)({"params": params}, source, dec_in))
  encoded = jax.jit(lambda src: model.apply({"params": params}, src, method="encode"))(source)
  # Prefill two tokens (sowing the cross-attention keys/values), then one token at a time
  # against those keys/values, as lm/decoding.py does.
  (logits, caches), sown = jax.jit(lambda toks, caches: model.apply(
      {"params": params}, toks, encoded, source, caches=caches, cache_index=0, method="decode",
      mutable=[CROSS_KV]))(dec_in[:, :2], model.init_cache(2))
  cross_kv = cross_kv_of(sown)
  decode = jax.jit(lambda toks, caches, i: model.apply(
      {"params": params}, toks, cross_kv, source, caches=caches, cache_index=i, method="decode"))
  got = [np.asarray(logits)]
  for i in range(2, T):
    logits, caches = decode(dec_in[:, i:i + 1], caches, i)
    got.append(np.asarray(logits))
  np.testing.assert_allclose(np.concatenate(got, axis=1), full, rtol=1e-4, atol=1e-5)


def test_parameters_shared_and_tied_as_in_t5_and_bart():
  t5 = jax.eval_shape(lambda: make("t5").init(jax.random.key(0), SOURCE, DEC_IN)["params"])
  t5 = nn.meta.unbox(t5)
  # One relative-bias table per stack (buckets x heads), none inside the blocks.
  assert t5["enc_rel_bias"]["embedding"].shape == (32, 2)
  assert t5["dec_rel_bias"]["embedding"].shape == (32, 2)
  flat = jax.tree_util.tree_flatten_with_path(t5)[0]
  assert sum("rel_bias" in jax.tree_util.keystr(p) for p, _ in flat) == 2
  # One embedding table, tied to the output: no output projection parameter.
  assert [k for k in t5 if "embed" in k] == ["embed"]
  assert all("cross_attn" in t5[f"decoder_blocks_{i}"] for i in range(2))
  assert all("cross_attn" not in t5[f"encoder_blocks_{i}"] for i in range(2))
  bart = nn.meta.unbox(jax.eval_shape(
      lambda: make("learned").init(jax.random.key(0), SOURCE, DEC_IN)["params"]))
  assert bart["enc_pos"]["embedding"].shape == (12, 16)
  assert bart["dec_pos"]["embedding"].shape == (10, 16)


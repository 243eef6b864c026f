"""The BERT family: bidirectional dependence (gradients), padding invariance, heads by hand.

The forward pass itself is compared with a float64 NumPy BERT in tests/test_hf_bert.py.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from lm.models.bert import Bert, BertConfig, init_params, mean_pool
from lm.models.registry import build_model, model_config_class

T = 8


def _model(norm_position: str):
  # vocab > T so every position can hold a distinct token.
  return Bert(BertConfig(vocab_size=20, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32,
                         max_len=12, dropout=0.0, norm_position=norm_position))


@pytest.fixture(scope="module", params=["post", "pre"])
def bert(request):
  model = _model(request.param)
  return model, init_params(model, T, seed=0)


def test_registered_as_a_family():
  assert model_config_class("bert") is BertConfig
  assert isinstance(build_model("bert", BertConfig(vocab_size=5)), Bert)


def test_every_output_depends_on_every_input_position(bert):
  """d hidden[t] / d embedding[token at s] != 0 for all (s, t): no causal mask."""
  model, params = bert
  tokens = jnp.arange(1, T + 1)[None]  # distinct ids: embedding row s+1 is position s
  segments = jnp.array([[0] * 4 + [1] * 4])
  # A random projection: the sum of a LayerNorm output barely depends on its input.
  w_D = jnp.asarray(np.random.default_rng(0).normal(size=16), jnp.float32)

  @jax.jit
  def jacobian(p):
    def outputs(table):
      q = {**p, "token_embed": {"embedding": table}}
      hidden, pooled = model.apply({"params": q}, tokens, segments, method=Bert.encode)
      return jnp.concatenate([hidden[0] @ w_D, pooled[0, :1]])  # (T + 1,)
    return jax.jacrev(outputs)(p["token_embed"]["embedding"])  # (T + 1, V, D)

  norms_OS = np.linalg.norm(np.asarray(jacobian(params))[:, 1:T + 1], axis=-1)
  # Every output t (and the pooled [CLS] vector) depends on every position s; in a
  # causal model the entries above the diagonal would be exactly 0.
  assert (norms_OS > 1e-6).all(), norms_OS


def test_padding_does_not_affect_real_tokens(bert):
  model, params = bert
  rng = np.random.default_rng(0)
  real = 5
  base = rng.integers(0, 20, (1, real))
  outputs = []
  for pad_len, pad_token in [(0, 0), (3, 0), (7, 13)]:
    tokens = np.concatenate([base, np.full((1, pad_len), pad_token)], 1)
    valid = np.arange(real + pad_len)[None] < real
    segments = np.where(valid, 0, 1)  # even a different segment on the padding
    hidden, pooled = model.apply({"params": params}, tokens, segments, valid,
                                 method=Bert.encode)
    outputs.append((np.asarray(hidden)[0, :real], np.asarray(pooled)[0],
                    np.asarray(mean_pool(hidden, valid))[0]))
  for h, p, m in outputs[1:]:
    np.testing.assert_allclose(h, outputs[0][0], atol=1e-5)
    np.testing.assert_allclose(p, outputs[0][1], atol=1e-5)
    np.testing.assert_allclose(m, outputs[0][2], atol=1e-5)


def test_segment_embeddings_change_the_output(bert):
  model, params = bert
  tokens = jnp.arange(1, T + 1)[None]
  a, _ = model.apply({"params": params}, tokens, jnp.zeros((1, T), int), method=Bert.encode)
  b, _ = model.apply({"params": params}, tokens, jnp.ones((1, T), int), method=Bert.encode)
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3


@pytest.mark.parametrize("position", ["rope", "alibi", "learned"])
def test_relative_positions_see_distances_only(position):
  """RoPE / ALiBi: shifting the tokens right (masked padding in front) leaves their outputs
  unchanged, yet order matters; BERT's learned table sees absolute positions."""
  model = Bert(BertConfig(vocab_size=20, num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32,
                          max_len=12, dropout=0.0, position=position))
  params = init_params(model, T, seed=0)
  assert ("pos_embed" in params) == (position == "learned")
  # Larger attention weights than at init, so attention (and so position) visibly matters.
  params = flax.traverse_util.unflatten_dict(
      {k: 20 * v if k[-2] in ("query", "key", "value", "out") and k[-1] == "kernel" else v
       for k, v in flax.traverse_util.flatten_dict(params).items()})
  tokens = np.array([[3, 1, 4, 1, 5]])
  encode = lambda t, valid=None: np.asarray(  # noqa: E731
      model.apply({"params": params}, t, None, valid, method=Bert.encode)[0])
  hidden = encode(tokens)[0]
  shifted = encode(np.concatenate([np.full((1, 3), 7), tokens], 1),
                   np.arange(8)[None] >= 3)[0, 3:]
  if position == "learned":
    assert np.abs(shifted - hidden).max() > 1e-3
  else:
    np.testing.assert_allclose(shifted, hidden, atol=1e-5)
  swapped = encode(tokens[:, [1, 0, 2, 3, 4]])[0]  # a bag of tokens: the same last output
  assert np.abs(swapped[4] - hidden[4]).max() > 1e-3


def _ln(x, scale, bias, eps):
  mu = x.mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * scale + bias


def test_heads_by_hand(bert):
  """MLM: LN(gelu(W h + b)) E^T + bias with the tied token table; NSP on tanh(W h_CLS + b)."""
  model, params = bert
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  tokens = np.array([[3, 1, 4, 1, 5, 9, 2, 6]])
  mlm, nsp = model.apply({"params": params}, tokens)
  hidden, pooled = model.apply({"params": params}, tokens, method=Bert.encode)
  hidden = np.asarray(hidden, np.float64)
  np.testing.assert_allclose(
      np.asarray(pooled), np.tanh(hidden[:, 0] @ p["pooler"]["kernel"] + p["pooler"]["bias"]),
      atol=1e-5)
  head = p["mlm_head"]
  h = hidden @ head["transform"]["kernel"] + head["transform"]["bias"]
  h = _ln(0.5 * h * (1 + erf(h / np.sqrt(2))), head["norm"]["scale"], head["norm"]["bias"], 1e-12)
  logits = h @ p["token_embed"]["embedding"].T + head["bias"]
  np.testing.assert_allclose(np.asarray(mlm), logits, atol=1e-4)
  # The head at chosen positions only (pretraining's prediction slots), repeats allowed.
  positions = np.array([[6, 0, 2, 2]])
  mlm_at, _ = model.apply({"params": params}, tokens, mlm_positions_BP=positions)
  np.testing.assert_allclose(np.asarray(mlm_at), logits[:, positions[0]], atol=1e-4)
  np.testing.assert_allclose(np.asarray(nsp), np.asarray(pooled, np.float64)
                             @ p["nsp_head"]["kernel"] + p["nsp_head"]["bias"], atol=1e-5)


def test_dropout_is_active_only_when_not_deterministic():
  model = Bert(BertConfig(vocab_size=20, num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32,
                          max_len=12, dropout=0.5))
  params = init_params(model, T, seed=0)
  tokens = jnp.arange(T)[None]
  a = model.apply({"params": params}, tokens)[0]
  b = model.apply({"params": params}, tokens)[0]
  c = model.apply({"params": params}, tokens, deterministic=False,
                  rngs={"dropout": jax.random.key(1)})[0]
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3


def test_too_long_input_and_bad_configs_are_errors(bert):
  model, params = bert
  with pytest.raises(ValueError, match="max_len"):
    model.apply({"params": params}, jnp.zeros((1, 13), int))
  for bad in [dict(norm_position="middle"), dict(embed_dim=15), dict(mlp="swiglu"),
              dict(layer_norm_eps=0.0), dict(position="sinusoidal")]:
    with pytest.raises(ValueError):
      BertConfig(**bad)

"""GQA/MQA, soft-capping, QK-norm, cross-attention and the causality of every GPT variant,
against naive float64 references and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_helpers import random_params

from lm.layers import masks
from lm.layers.attention import Attention, dot_product_attention
from lm.layers.embed import TokenEmbedding
from lm.models.gpt import GPT, GPTConfig

# --- naive references ------------------------------------------------------------------


def naive_attention(q, k, v, mask, bias=None, softcap=0.0):
  """Multi-head attention with one key/value head per query head, Python loops, float64.

  logit = q.k / sqrt(H) + bias, then c * tanh(logit / c) if softcap, softmax over the keys
  the mask allows."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  mask = np.asarray(mask)
  bias = None if bias is None else np.asarray(bias, np.float64)
  B, T, N, H = q.shape
  S = k.shape[1]
  out = np.zeros((B, T, N, H))
  for b in range(B):
    for n in range(N):
      for t in range(T):
        scores = {}
        for s in range(S):
          if not mask[b, 0, t, s]:
            continue
          x = sum(q[b, t, n, h] * k[b, s, n, h] for h in range(H)) / np.sqrt(H)
          if bias is not None:
            x += bias[b, n, t, s]
          if softcap:
            x = softcap * np.tanh(x / softcap)
          scores[s] = x
        m = max(scores.values())
        total = sum(np.exp(x - m) for x in scores.values())
        for s, x in scores.items():
          out[b, t, n] += np.exp(x - m) / total * v[b, s, n]
  return out


def repeat_kv_heads(x_BSKH, num_heads):
  """Query head n reads key/value head n // (N / K): each KV head repeated for its group."""
  x = np.asarray(x_BSKH, np.float64)
  K = x.shape[2]
  group = num_heads // K
  out = np.zeros(x.shape[:2] + (num_heads,) + x.shape[3:])
  for n in range(num_heads):
    out[:, :, n] = x[:, :, n // group]
  return out


def rms_normalise(x, scale, eps=1e-6):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def naive_attention_module(params, x_BTD, mask, kv_BSD=None, softcap=0.0, qk_norm=False):
  """The Attention module (no RoPE, no cache) written out in float64 numpy."""
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  x = np.asarray(x_BTD, np.float64)
  kv = x if kv_BSD is None else np.asarray(kv_BSD, np.float64)
  q = np.einsum("btd,dnh->btnh", x, p["query"]["kernel"]) + p["query"]["bias"]
  k = np.einsum("bsd,dkh->bskh", kv, p["key"]["kernel"]) + p["key"]["bias"]
  v = np.einsum("bsd,dkh->bskh", kv, p["value"]["kernel"]) + p["value"]["bias"]
  if qk_norm:
    q = rms_normalise(q, p["query_norm"]["scale"])
    k = rms_normalise(k, p["key_norm"]["scale"])
  N = q.shape[2]
  out = naive_attention(q, repeat_kv_heads(k, N), repeat_kv_heads(v, N), mask, softcap=softcap)
  return np.einsum("btnh,nhd->btd", out, p["out"]["kernel"]) + p["out"]["bias"]


def random_module_params(module, seed, *args, scale=0.5, **kwargs):
  shapes = jax.eval_shape(lambda: nn.meta.unbox(module.init(jax.random.key(0), *args,
                                                            **kwargs))["params"])
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    x = scale * rng.standard_normal(leaf.shape)
    if jax.tree_util.keystr(path).endswith("['scale']"):
      x = x + 1.0
    return jnp.asarray(x, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _close(got, want, tol=1e-5):
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=tol, atol=tol)


# --- the kernel ------------------------------------------------------------------------


@pytest.mark.parametrize("K,softcap,with_bias", [(4, 0.0, False), (2, 0.0, True), (1, 1.5, False),
                                                 (4, 2.0, True)])
def test_dot_product_attention_gqa_mqa_softcap_vs_naive(K, softcap, with_bias):
  B, T, S, N, H = 2, 4, 6, 4, 4
  rng = np.random.default_rng(10 * K + with_bias)
  q = (2.0 * rng.standard_normal((B, T, N, H))).astype(np.float32)
  k = (2.0 * rng.standard_normal((B, S, K, H))).astype(np.float32)
  v = rng.standard_normal((B, S, K, H)).astype(np.float32)
  bias = rng.standard_normal((B, N, T, S)).astype(np.float32) if with_bias else None
  q_pos = np.broadcast_to(np.arange(2, 2 + T), (B, T))
  mask = masks.causal_mask(jnp.asarray(q_pos), jnp.broadcast_to(jnp.arange(S), (B, S)))
  got = jax.jit(dot_product_attention, static_argnames="softcap")(q, k, v, mask, bias,
                                                                  softcap=softcap)
  want = naive_attention(q, repeat_kv_heads(k, N), repeat_kv_heads(v, N), mask, bias, softcap)
  _close(got, want)


def test_softcap_changes_large_logits_only_through_tanh():
  """Two keys with logits 0 and 8, cap 2: weights softmax(0, 2 tanh 4) by hand."""
  H = 1
  q = np.ones((1, 1, 1, H), np.float32)
  k = np.array([0.0, 8.0], np.float32).reshape(1, 2, 1, H)
  v = np.array([0.0, 1.0], np.float32).reshape(1, 2, 1, H)
  mask = np.ones((1, 1, 1, 2), bool)
  capped = 2.0 * np.tanh(8.0 / 2.0)
  want = np.exp(capped) / (1.0 + np.exp(capped))
  got = dot_product_attention(q, k, v, mask, softcap=2.0)
  _close(got[0, 0, 0, 0], want, 1e-6)
  _close(dot_product_attention(q, k, v, mask)[0, 0, 0, 0], np.exp(8) / (1 + np.exp(8)), 1e-6)


def test_query_with_no_visible_key_gets_the_uniform_average():
  rng = np.random.default_rng(11)
  q = rng.standard_normal((1, 2, 2, 2)).astype(np.float32)
  k = rng.standard_normal((1, 4, 1, 2)).astype(np.float32)
  v = rng.standard_normal((1, 4, 1, 2)).astype(np.float32)
  mask = np.array([[[[False] * 4, [True, False, False, True]]]])
  got = np.asarray(dot_product_attention(q, k, v, mask, softcap=3.0))
  assert np.isfinite(got).all()
  _close(got[0, 0], np.repeat(v.mean(axis=1)[0], 2, axis=0), 1e-6)
  want = naive_attention(q[:, 1:], repeat_kv_heads(k, 2), repeat_kv_heads(v, 2), mask[:, :, 1:],
                         softcap=3.0)
  _close(got[:, 1:], want)


# --- the Attention module --------------------------------------------------------------

B, T, S, D, N, H = 2, 5, 7, 8, 4, 4

MODULE_CASES = {  # num_kv_heads, softcap, qk_norm, cross
    "mha": (0, 0.0, False, False),
    "gqa_K_equals_N": (N, 0.0, False, False),
    "gqa_softcap": (2, 1.5, False, False),
    "mqa_qk_norm": (1, 0.0, True, False),
    "qk_norm_softcap": (0, 2.0, True, False),
    "cross_gqa_qk_norm": (2, 0.0, True, True),
}


def _module_inputs(cross, seed):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((B, T, D)), jnp.float32)
  pos = jnp.broadcast_to(jnp.arange(T), (B, T))
  if not cross:
    return x, None, masks.causal_mask(pos, pos), pos
  kv = jnp.asarray(rng.standard_normal((B, S, D)), jnp.float32)
  dec_valid = jnp.array([[True] * T, [True] * (T - 1) + [True]])
  enc_valid = jnp.array([[True] * S, [True, False, True, True, False, True, False]])
  return x, kv, masks.cross_mask(dec_valid, enc_valid), pos


@pytest.mark.parametrize("case", list(MODULE_CASES))
def test_attention_module_vs_naive(case):
  K, softcap, qk_norm, cross = MODULE_CASES[case]
  module = Attention(N, H, num_kv_heads=K, logit_softcap=softcap, qk_norm=qk_norm)
  x, kv, mask, pos = _module_inputs(cross, seed=len(case))
  params = random_module_params(module, 1, x, mask, q_pos_BT=pos, kv_BSD=kv)
  assert params["key"]["kernel"].shape == (D, K or N, H)
  assert params["value"]["kernel"].shape == (D, K or N, H)
  assert params["query"]["kernel"].shape == (D, N, H)
  assert ("query_norm" in params) == qk_norm
  got, cache = jax.jit(lambda p, x, kv: module.apply({"params": p}, x, mask, q_pos_BT=pos,
                                                     kv_BSD=kv))(params, x, kv)
  assert cache is None and got.shape == (B, T, D)
  _close(got, naive_attention_module(params, x, mask, kv, softcap, qk_norm))


def test_cross_attention_ignores_rope_and_uses_the_other_sequence():
  """RoPE is a self-attention thing: a cross-attention module with rope_base set gives the
  same output as without, and changing a hidden encoder token changes nothing."""
  x, kv, mask, pos = _module_inputs(cross=True, seed=3)
  plain = Attention(N, H, num_kv_heads=2)
  roped = Attention(N, H, num_kv_heads=2, rope_base=10000.0)
  params = random_module_params(plain, 2, x, mask, q_pos_BT=pos, kv_BSD=kv)
  fwd = jax.jit(lambda m_kv: (plain.apply({"params": params}, x, mask, q_pos_BT=pos,
                                          kv_BSD=m_kv)[0],
                              roped.apply({"params": params}, x, mask, q_pos_BT=pos,
                                          kv_BSD=m_kv)[0]))
  a, b = fwd(kv)
  _close(a, b, 1e-6)
  kv2 = kv.at[1, 4].set(100.0)  # encoder slot 4 of row 1 is padding
  _close(fwd(kv2)[0], a, 1e-6)
  kv3 = kv.at[1, 3].set(100.0)  # a real encoder slot
  assert np.abs(np.asarray(fwd(kv3)[0] - a)).max() > 1e-3


def test_attention_module_gqa_equal_heads_is_mha():
  """num_kv_heads == num_heads has the same parameters as MHA and the same output."""
  x, _, mask, pos = _module_inputs(False, seed=4)
  mha, gqa = Attention(N, H), Attention(N, H, num_kv_heads=N)
  params = random_module_params(mha, 3, x, mask, q_pos_BT=pos)
  gqa_shapes = jax.eval_shape(lambda: nn.meta.unbox(gqa.init(jax.random.key(0), x, mask,
                                                             q_pos_BT=pos))["params"])
  assert jax.tree_util.tree_map(lambda a: a.shape, gqa_shapes) == \
      jax.tree_util.tree_map(lambda a: a.shape, params)
  fwd = jax.jit(lambda p: (mha.apply({"params": p}, x, mask, q_pos_BT=pos)[0],
                           gqa.apply({"params": p}, x, mask, q_pos_BT=pos)[0]))
  a, b = fwd(params)
  _close(a, b, 1e-6)


@pytest.mark.parametrize("K", [1, 2])
def test_shared_kv_heads_equal_mha_with_repeated_kv_kernels(K):
  """MQA (K=1) / GQA (K=2): one key/value projection per group, so the output equals an MHA
  module whose key/value kernels are each KV head repeated for its N/K query heads."""
  x, _, mask, pos = _module_inputs(False, seed=5 + K)
  shared, mha = Attention(N, H, num_kv_heads=K), Attention(N, H)
  params = random_module_params(shared, 4 + K, x, mask, q_pos_BT=pos)
  assert params["key"]["kernel"].shape == (D, K, H)
  assert params["key"]["bias"].shape == (K, H)
  heads = np.array([n // (N // K) for n in range(N)])
  mha_params = dict(params)
  for name in ("key", "value"):
    mha_params[name] = {"kernel": params[name]["kernel"][:, heads],
                        "bias": params[name]["bias"][heads]}
  fwd = jax.jit(lambda p, q: (shared.apply({"params": p}, x, mask, q_pos_BT=pos)[0],
                              mha.apply({"params": q}, x, mask, q_pos_BT=pos)[0]))
  a, b = fwd(params, mha_params)
  _close(a, b)


def _input_jacobian(fn, x):
  """|d (fn(x)[t] . w) / d x[s]| summed over features: [t, s]. Structural zeros stay exact."""
  out_shape = jax.eval_shape(fn, x).shape
  w = jnp.asarray(np.random.default_rng(0).standard_normal(out_shape[-1]), jnp.float32)
  jac = jax.jit(jax.jacrev(lambda x: fn(x) @ w))(x)  # (T, T, D)
  return np.abs(np.asarray(jac)).sum(axis=-1)


def test_bidirectional_attention_every_position_influences_every_output():
  T_ = 6
  module = Attention(N, H, num_kv_heads=2)
  x = jnp.asarray(np.random.default_rng(6).standard_normal((T_, D)), jnp.float32)
  pos = jnp.arange(T_)[None]
  valid = jnp.ones((1, T_), bool)
  params = random_module_params(module, 7, x[None], masks.padding_mask(valid, valid),
                                q_pos_BT=pos)
  g = _input_jacobian(lambda x: module.apply(
      {"params": params}, x[None], masks.padding_mask(valid, valid), q_pos_BT=pos)[0][0], x)
  assert (g > 1e-6).all(), g
  # Hiding keys 1 and 4: outputs other than their own no longer depend on those inputs.
  k_valid = jnp.array([[True, False, True, True, False, True]])
  g = _input_jacobian(lambda x: module.apply(
      {"params": params}, x[None], masks.valid_keys_mask(k_valid), q_pos_BT=pos)[0][0], x)
  for t in range(T_):
    for s in range(T_):
      if s in (1, 4) and s != t:
        assert g[t, s] == 0.0, (t, s, g[t, s])
      else:
        assert g[t, s] > 1e-6, (t, s, g[t, s])


# --- causality of GPT variants through gradients ---------------------------------------

VOCAB, SEQ = 13, 9


def _gpt(**kw):
  cfg = GPTConfig(vocab_size=VOCAB, num_layers=kw.pop("num_layers", 2), num_heads=2,
                  embed_dim=16, mlp_dim=32, max_len=12, **kw)
  model = GPT(cfg)
  return model, random_params(model, 0)


def _embedding_jacobian(model, params, tokens_BT, with_logits=False, **call_kw):
  """[b, t, s]: |d (logits[b, t] . w) / d (token embedding output at b, s)| summed over D."""
  Bt, Tt = tokens_BT.shape
  w_V = jnp.asarray(np.random.default_rng(4).standard_normal(VOCAB), jnp.float32)

  def logits_of_delta(delta_BTD):
    def add_delta(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if isinstance(context.module, TokenEmbedding) and context.method_name == "__call__":
        out = out + delta_BTD
      return out
    with nn.intercept_methods(add_delta):
      logits = model.apply({"params": params}, tokens_BT, **call_kw)[0]
    return logits @ w_V, logits

  delta = jnp.zeros((Bt, Tt, model.config.embed_dim))
  jac, logits = jax.jit(jax.jacrev(logits_of_delta, has_aux=True))(delta)  # (B, T, B, T, D)
  jac = np.abs(np.asarray(jac)).sum(axis=-1)
  g = np.stack([jac[b, :, b] for b in range(Bt)])
  for b in range(Bt):  # rows of a batch never mix
    for c in range(Bt):
      if b != c:
        assert (jac[b, :, c] == 0).all()
  return (g, np.asarray(logits)) if with_logits else g


def _assert_dependence(g, allowed):
  """g[t, s] == 0 exactly where not allowed(t, s), clearly nonzero where allowed."""
  T_ = g.shape[0]
  for t in range(T_):
    for s in range(T_):
      if allowed(t, s):
        assert g[t, s] > 1e-6, (t, s, g[t, s])
      else:
        assert g[t, s] == 0.0, (t, s, g[t, s])


def _tokens(batch, length, seed):
  return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, (batch, length)), jnp.int32)


CAUSAL_CASES = {  # alternating_local: a dense layer, then a block-sparse local layer (3 < T)
    "learned": dict(position="learned", attention_pattern="alternating_local",
                    attention_window=3),
    "rope_gqa": dict(position="rope", attention_pattern="alternating_local", attention_window=3,
                     num_kv_heads=1),
    "alibi": dict(position="alibi", attention_pattern="alternating_local", attention_window=3),
    "t5": dict(position="t5", attention_pattern="alternating_local", attention_window=3),
    # Slow extras: dense-only models, and the local/strided factorisation.
    "rope_dense": dict(position="rope"),
    "t5_dense": dict(position="t5"),
    "learned_local_strided_mqa": dict(position="learned", attention_pattern="local_strided",
                                      attention_window=3, attention_stride=2, num_kv_heads=1),
}
# learned + dense causality is in test_attention.py.
SLOW_CAUSAL = ("learned", "rope_dense", "t5_dense", "learned_local_strided_mqa")


@pytest.mark.parametrize("case", [
    pytest.param(c, marks=pytest.mark.slow) if c in SLOW_CAUSAL else c for c in CAUSAL_CASES])
def test_gpt_causal_and_packed_documents_independent(case):
  """Row 0 packs three documents; rows 1-3 hold each document alone, then filler.

  Causality: in every row no logit depends on a later input (and every earlier one of its
  document matters). Packing: in row 0 a document's logits have exactly zero gradient w.r.t.
  the embeddings of the other documents, and equal the logits of the document alone (its
  positions restart at 0; the filler after it cannot matter, by causality)."""
  model, params = _gpt(**CAUSAL_CASES[case])
  lengths = [4, 5, 3]
  Tp = sum(lengths)
  starts = np.cumsum([0] + lengths)
  seg = np.ones((4, Tp), np.int32)
  seg[0] = np.repeat(np.arange(1, 4), lengths)
  tokens = np.array(_tokens(4, Tp, 5))
  for i, n in enumerate(lengths):
    tokens[i + 1, :n] = tokens[0, starts[i]:starts[i] + n]
  pos = masks.positions_from_segments(jnp.asarray(seg))
  np.testing.assert_array_equal(np.asarray(pos)[0], [0, 1, 2, 3, 0, 1, 2, 3, 4, 0, 1, 2])
  np.testing.assert_array_equal(np.asarray(pos)[1], np.arange(Tp))
  g, logits = _embedding_jacobian(model, params, jnp.asarray(tokens), with_logits=True,
                                  positions_BT=pos, segment_ids_BT=jnp.asarray(seg))
  doc = seg[0]
  _assert_dependence(g[0], lambda t, s: s <= t and doc[s] == doc[t])
  for b in range(1, 4):
    _assert_dependence(g[b], lambda t, s: s <= t)
  for i, n in enumerate(lengths):
    _close(logits[0, starts[i]:starts[i] + n], logits[i + 1, :n], 2e-5)


@pytest.mark.slow
def test_gpt_without_segment_ids_is_causal():
  model, params = _gpt(position="alibi", attention_pattern="alternating_local",
                       attention_window=3)
  g = _embedding_jacobian(model, params, _tokens(1, SEQ, 2))[0]
  _assert_dependence(g, lambda t, s: s <= t)


def test_single_local_layer_sees_exactly_its_window():
  w = 3
  model, params = _gpt(num_layers=1, position="alibi", attention_pattern="local",
                       attention_window=w)
  g = _embedding_jacobian(model, params, _tokens(1, SEQ, 3))[0]
  _assert_dependence(g, lambda t, s: t - w + 1 <= s <= t)


@pytest.mark.slow
def test_single_strided_layer_sees_exactly_its_residue_class():
  stride = 3
  model, params = _gpt(num_layers=1, position="rope", attention_pattern="strided",
                       attention_stride=stride)
  g = _embedding_jacobian(model, params, _tokens(1, SEQ, 4))[0]
  _assert_dependence(g, lambda t, s: s <= t and (t - s) % stride == 0)

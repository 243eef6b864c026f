"""Block-sparse local/strided attention against dense attention under the same mask."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.layers import masks
from lm.layers import sparse_attention as sa
from lm.layers.attention import Attention, KVCache, dot_product_attention
from lm.layers.positions import RelativePositionBias, alibi_bias

PATTERN_MASK = {"local": masks.local_mask, "strided": masks.strided_mask}
BLOCK_FN = {"local": sa.local_attention, "strided": sa.strided_attention}


def _qkv(B, T, N, K, H, seed):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(1.5 * rng.standard_normal((B, T, N, H)), jnp.float32)
  k = jnp.asarray(1.5 * rng.standard_normal((B, T, K, H)), jnp.float32)
  v = jnp.asarray(rng.standard_normal((B, T, K, H)), jnp.float32)
  return q, k, v


def _t5_bias_fn(N, seed):
  module = RelativePositionBias(N, bidirectional=False, num_buckets=8, max_distance=16)
  table = jnp.asarray(np.random.default_rng(seed).standard_normal((8, N)), jnp.float32)
  return lambda qp, kp: module.apply({"params": {"embedding": table}}, qp, kp)


def _packed(B, T, lengths):
  """Segment ids 1, 2, ... of the given document lengths (0 = padding after them)."""
  seg = np.zeros((B, T), np.int32)
  for b in range(B):
    start = 0
    for i, n in enumerate(lengths[b]):
      seg[b, start:start + n] = i + 1
      start += n
  return jnp.asarray(seg)


# name: (B, T, N, K, H, width, mask kind, bias kind, softcap)
CASES = {
    "T_multiple_of_width": (2, 8, 2, 2, 4, 4, "causal", None, 0.0),
    "T_not_multiple_all_true_mask": (1, 7, 2, 2, 4, 5, "all", None, 0.0),
    "packed_segments": (2, 13, 2, 2, 4, 3, "packed", None, 0.0),
    "alibi_gqa_softcap": (2, 10, 4, 2, 4, 4, "causal", "alibi", 2.0),
    "t5_mqa_packed": (2, 14, 4, 1, 4, 3, "packed", "t5", 0.0),
    # Slow extras (separate compiles for options already combined above).
    "T_not_multiple_causal": (2, 10, 2, 2, 4, 4, "causal", None, 0.0),
    "width_1": (1, 5, 2, 2, 4, 1, "causal", None, 0.0),
    "t5": (2, 11, 2, 2, 4, 4, "causal", "t5", 0.0),
    "gqa": (2, 9, 4, 2, 4, 4, "causal", None, 0.0),
}
SLOW_CASES = ("T_not_multiple_causal", "width_1", "t5", "gqa")


def _setup(case, seed):
  B, T, N, K, H, width, mask_kind, bias_kind, softcap = CASES[case]
  q, k, v = _qkv(B, T, N, K, H, seed)
  pos = jnp.broadcast_to(jnp.arange(T), (B, T))
  if mask_kind == "all":
    mask = jnp.ones((B, 1, T, T), bool)
  elif mask_kind == "causal":
    mask = masks.causal_mask(pos, pos)
  else:  # packed documents, positions restart in each
    seg = _packed(B, T, [[5, 6, T - 11], [2, T - 2]])
    pos = masks.positions_from_segments(seg)
    mask = masks.causal_mask(pos, pos) & masks.segment_mask(seg, seg)
  bias_fn = {None: None, "alibi": lambda qp, kp: alibi_bias(qp, kp, N),
             "t5": _t5_bias_fn(N, seed)}[bias_kind]
  return q, k, v, mask, pos, width, bias_fn, softcap


@pytest.mark.parametrize("pattern", ["local", "strided"])
@pytest.mark.parametrize("case", [
    pytest.param(c, marks=pytest.mark.slow) if c in SLOW_CASES else c for c in CASES])
def test_block_sparse_equals_dense_with_pattern_mask(case, pattern):
  q, k, v, mask, pos, width, bias_fn, softcap = _setup(case, seed=len(case))

  @jax.jit
  def both(q, k, v, mask, pos):
    got = BLOCK_FN[pattern](q, k, v, mask, pos, width, bias_fn, softcap=softcap)
    dense_mask = mask & PATTERN_MASK[pattern](pos, pos, width)
    bias = None if bias_fn is None else bias_fn(pos, pos)
    return got, dot_product_attention(q, k, v, dense_mask, bias, softcap=softcap)

  got, want = both(q, k, v, mask, pos)
  assert got.shape == q.shape
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pattern", ["local", "strided"])
def test_block_sparse_with_padding_rows(pattern):
  """Real tokens match dense; padding queries (segment 0, no visible key) stay finite."""
  B, T, N, H, width = 1, 10, 2, 4, 3
  q, k, v = _qkv(B, T, N, N, H, seed=5)
  seg = _packed(B, T, [[4, 3]])  # last 3 tokens are padding
  pos = masks.positions_from_segments(seg)
  mask = masks.causal_mask(pos, pos) & masks.segment_mask(seg, seg)
  got, want = jax.jit(lambda q, k, v, mask, pos: (
      BLOCK_FN[pattern](q, k, v, mask, pos, width),
      dot_product_attention(q, k, v, mask & PATTERN_MASK[pattern](pos, pos, width))))(
          q, k, v, mask, pos)
  got, want = np.asarray(got), np.asarray(want)
  np.testing.assert_allclose(got[:, :7], want[:, :7], rtol=1e-5, atol=1e-5)
  assert np.isfinite(got).all()


def test_block_sparse_ignores_keys_outside_the_pattern():
  """Equal scores: each output is the plain mean of the values the pattern shows it (a check
  independent of dense attention)."""
  B, T, N, H, w = 1, 8, 1, 2, 3
  zeros = jnp.zeros((B, T, N, H))
  v_T = np.arange(T, dtype=np.float32) ** 2
  v = jnp.asarray(v_T)[None, :, None, None] * jnp.ones((B, T, N, H))
  pos = jnp.arange(T)[None]
  mask = masks.causal_mask(pos, pos)
  local, strided = jax.jit(lambda v: (sa.local_attention(zeros, zeros, v, mask, pos, w),
                                      sa.strided_attention(zeros, zeros, v, mask, pos, w)))(v)
  want = [np.mean(v_T[max(0, t - w + 1):t + 1]) for t in range(T)]
  np.testing.assert_allclose(np.asarray(local)[0, :, 0, 0], want, rtol=1e-6)
  want = [np.mean(v_T[t % w:t + 1:w]) for t in range(T)]
  np.testing.assert_allclose(np.asarray(strided)[0, :, 0, 0], want, rtol=1e-6)


@pytest.mark.parametrize("pattern", ["local", "strided"])
def test_block_sparse_accepts_broadcast_batch_mask_like_dense(pattern):
  """GPT(tokens, positions_BT=jnp.arange(T)[None]) with B > 1 works for dense layers; the
  block-sparse layers should accept the same batch-1 mask and positions."""
  B, T, N, H, width = 2, 8, 2, 4, 3
  q, k, v = _qkv(B, T, N, N, H, seed=9)
  pos = jnp.arange(T)[None]
  mask = masks.causal_mask(pos, pos)  # (1, 1, T, T)
  want = dot_product_attention(q, k, v, mask & PATTERN_MASK[pattern](pos, pos, width))
  got = BLOCK_FN[pattern](q, k, v, mask, pos, width)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


# --- through the Attention module ------------------------------------------------------


@pytest.fixture
def count_block_calls(monkeypatch):
  calls = {"local": 0, "strided": 0}
  for name in calls:
    original = getattr(sa, f"{name}_attention")

    def counted(*args, _name=name, _original=original, **kwargs):
      calls[_name] += 1
      return _original(*args, **kwargs)
    monkeypatch.setattr(sa, f"{name}_attention", counted)
  return calls


MODULE_CASES = {  # pattern, width, num_kv_heads, rope_base, bias
    "local_rope_gqa": ("local", 3, 2, 10000.0, None),
    "local_alibi": ("local", 4, 0, 0.0, "alibi"),
    "strided_rope_t5": ("strided", 3, 0, 100.0, "t5"),
    "strided_mqa": ("strided", 4, 1, 0.0, None),
}


@pytest.mark.parametrize("case", [
    pytest.param(c, marks=pytest.mark.slow) if c in ("local_alibi", "strided_mqa") else c
    for c in MODULE_CASES])
def test_attention_module_sparse_pattern_equals_dense_masked(case, count_block_calls):
  pattern, width, kv_heads, rope_base, bias_kind = MODULE_CASES[case]
  B, T, D, N, H = 2, 11, 8, 4, 4
  kw = dict(num_heads=N, head_dim=H, num_kv_heads=kv_heads, rope_base=rope_base, window=width,
            stride=width)
  sparse = Attention(pattern=pattern, **kw)
  dense = Attention(pattern="dense", **kw)
  rng = np.random.default_rng(len(case))
  x = jnp.asarray(rng.standard_normal((B, T, D)), jnp.float32)
  pos = jnp.broadcast_to(jnp.arange(T), (B, T))
  mask = masks.causal_mask(pos, pos)
  bias_fn = {None: None, "alibi": lambda qp, kp: alibi_bias(qp, kp, N),
             "t5": _t5_bias_fn(N, 3)}[bias_kind]
  params = jax.tree_util.tree_map(
      lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape), s.dtype),
      jax.eval_shape(lambda: nn.meta.unbox(sparse.init(jax.random.key(0), x, mask,
                                                       q_pos_BT=pos))))
  count_block_calls[pattern] = 0

  @jax.jit
  def run(params, x):
    got, _ = sparse.apply(params, x, mask, q_pos_BT=pos, bias_fn=bias_fn)
    assert count_block_calls[pattern] == 1  # the block-sparse path really ran (T > width)
    want, _ = dense.apply(params, x, mask & PATTERN_MASK[pattern](pos, pos, width),
                          q_pos_BT=pos, bias_fn=bias_fn)
    # The cached path (whole sequence written into an empty cache) uses the dense kernel.
    cached, _ = sparse.apply(params, x, mask, q_pos_BT=pos, bias_fn=bias_fn,
                             cache=KVCache.zeros(B, T, kv_heads or N, H), cache_index=0)
    assert count_block_calls[pattern] == 1
    return got, want, cached

  got, want, cached = run(params, x)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(cached), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_attention_module_short_sequence_uses_dense_path(count_block_calls):
  B, T, D = 1, 3, 8
  module = Attention(num_heads=2, head_dim=4, pattern="local", window=3)
  x = jnp.ones((B, T, D))
  pos = jnp.arange(T)[None]
  jax.eval_shape(lambda: module.init(jax.random.key(0), x, masks.causal_mask(pos, pos),
                                     q_pos_BT=pos))
  assert count_block_calls == {"local": 0, "strided": 0}


def test_attention_module_unknown_pattern():
  module = Attention(num_heads=2, head_dim=4, pattern="diagonal")
  x = jnp.ones((1, 3, 8))
  pos = jnp.arange(3)[None]
  with pytest.raises(ValueError, match="diagonal"):
    module.init(jax.random.key(0), x, masks.causal_mask(pos, pos), q_pos_BT=pos)


# --- layer layouts ---------------------------------------------------------------------


@pytest.mark.parametrize("layout,want", [
    ("dense", ["dense"] * 5),
    ("local", ["local"] * 5),
    ("strided", ["strided"] * 5),
    ("alternating_local", ["dense", "local", "dense", "local", "dense"]),
    ("local_strided", ["local", "strided", "local", "strided", "local"]),
])
def test_layer_patterns(layout, want):
  assert sa.layer_patterns(layout, 5) == want
  assert sa.layer_patterns(layout, 1) == want[:1]


def test_layer_patterns_cover_all_layouts_and_reject_unknown():
  assert set(sa.LAYOUTS) == {"dense", "local", "strided", "alternating_local", "local_strided"}
  with pytest.raises(ValueError, match="checkerboard"):
    sa.layer_patterns("checkerboard", 4)

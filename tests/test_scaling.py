"""Scaling laws: counts against real param trees and jaxprs, fits against known constants.

Every reference here is independent of lm/scaling: the param trees the real model
builds, the dot_general FLOPs in the real forward/backward jaxpr, hand-computed
counts, published exponents, brute-force minimisation, and synthetic losses drawn
from each law with known constants and multiplicative noise.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_helpers import traced_matmul_flops

from lm.errors import UserError
from lm.models.gpt import GPTConfig
from lm.models.registry import build_model
from lm.scaling import counting, fit, frontier, laws
from lm.tasks.causal_lm import init_params

HOFFMANN = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)  # Hoffmann et al. 2022, D.2
KAPLAN = dict(alpha_N=0.076, alpha_D=0.095, N_c=8.8e13, D_c=5.4e13)  # Kaplan et al. 2020, 1.5
NOISE = 0.003  # multiplicative noise on every synthetic loss (log-normal, sigma 0.3%)
EMBEDDING_MODULES = ("token_embed", "pos_embed", "rel_bias", "lm_head")

BASE = dict(vocab_size=65, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=48, max_len=16)
VARIANTS = [
    {}, {"use_bias": False}, {"tie_embeddings": False}, {"num_kv_heads": 2}, {"num_kv_heads": 1},
    {"position": "rope"}, {"position": "sinusoidal"}, {"position": "alibi"}, {"position": "t5"},
    {"position": "none"}, {"qk_norm": True}, {"norm": "rmsnorm"}, {"mlp": "swiglu"},
    {"mlp": "geglu"}, {"attention_pattern": "alternating_local", "attention_window": 4},
    {"qk_norm": True, "norm": "rmsnorm", "use_bias": False, "tie_embeddings": False},
    {"num_layers": 3, "num_heads": 2, "embed_dim": 48, "mlp_dim": 200, "max_len": 24},
]
GPT_FIELDS = {f.name for f in dataclasses.fields(GPTConfig)}


def _variant(overrides: dict) -> GPTConfig:
  missing = set(overrides) - GPT_FIELDS
  if missing:
    pytest.skip(f"GPTConfig has no field {sorted(missing)}")
  return GPTConfig(**{**BASE, **overrides})


def _tree_counts(config: GPTConfig) -> tuple[int, int]:
  params = jax.eval_shape(lambda: init_params(build_model("gpt", config), config.max_len, 0))
  total = embedding = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    size = int(np.prod(leaf.shape))
    total += size
    if str(path[0].key) in EMBEDDING_MODULES:
      embedding += size
  return total, embedding


@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in
                                                                      v.items()) or "default")
def test_param_counts_match_the_param_tree(overrides):
  config = _variant(overrides)
  counts = counting.param_counts(config)
  total, embedding = _tree_counts(config)
  assert (counts.total, counts.embedding) == (total, embedding)
  assert counts.non_embedding == total - embedding


def _family_tree(family: str, config):
  """The real param tree of any family, as its own init builds it (shapes only)."""
  from lm.models import bert, encdec
  model = build_model(family, config)
  if family == "bert":
    make = lambda: bert.init_params(model, 16, 0)
  elif family == "encdec":
    make = lambda: encdec.init_params(model, 0)
  else:
    make = lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  return nn.meta.unbox(jax.eval_shape(make))


FAMILY_EMBEDDINGS = {  # top-level modules (or leaf paths) that are embeddings
    "bert": ("token_embed", "pos_embed", "segment_embed", "mlm_head/bias"),
    "encdec": ("embed", "enc_pos", "dec_pos", "enc_rel_bias", "dec_rel_bias"),
    "recurrent": ("token_embed", "lm_head"),
}
FAMILY_VARIANTS = [
    ("bert", {}), ("bert", {"use_bias": False}), ("bert", {"norm_position": "pre"}),
    ("encdec", {}), ("encdec", {"use_bias": False}), ("encdec", {"position": "learned"}),
    ("encdec", {"num_kv_heads": 2, "norm": "rmsnorm", "mlp": "swiglu"}),
    ("encdec", {"position": "rope", "num_decoder_layers": 2}),
    ("recurrent", {"cell": "lstm"}), ("recurrent", {"cell": "gru"}),
    ("recurrent", {"cell": "rnn"}), ("recurrent", {"cell": "lstm", "tie_embeddings": True}),
    ("recurrent", {"cell": "gru", "tie_embeddings": True}),
]
FAMILY_BASE = {
    "bert": dict(vocab_size=65, num_layers=2, embed_dim=32, num_heads=4, mlp_dim=48, max_len=16),
    "encdec": dict(vocab_size=65, num_encoder_layers=2, num_decoder_layers=1, embed_dim=32,
                   num_heads=4, mlp_dim=48, max_len=16, max_target_len=8),
    "recurrent": dict(vocab_size=65, num_layers=2, embed_dim=16, hidden_dim=24),
}


@pytest.mark.parametrize("family, overrides", FAMILY_VARIANTS,
                         ids=[f"{f}-{','.join(f'{k}={v}' for k, v in o.items())}"
                              for f, o in FAMILY_VARIANTS])
def test_param_counts_of_every_family_match_their_trees(family, overrides):
  from lm.models.registry import model_config_class
  values = {**FAMILY_BASE[family], **overrides}
  if overrides.get("tie_embeddings"):
    values["hidden_dim"] = values["embed_dim"]
  config = model_config_class(family)(**values)
  total = embedding = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(_family_tree(family, config))[0]:
    names = [str(p.key) for p in path]
    size = int(np.prod(leaf.shape))
    total += size
    if names[0] in FAMILY_EMBEDDINGS[family] or "/".join(names) in FAMILY_EMBEDDINGS[family]:
      embedding += size
  counts = counting.param_counts(config)
  assert (counts.total, counts.embedding) == (total, embedding)


def test_param_count_by_hand():
  # 2 blocks of d=64, F=256, 2 heads: 4 d^2 + 2 d F weights, 3 d + d + F + d biases
  # (q, k, v, out, wi, wo), two LayerNorms of 2d; a final LayerNorm; 65 x 64 + 64 x 64 embeddings.
  config = GPTConfig(vocab_size=65, num_layers=2, num_heads=2, embed_dim=64, mlp_dim=256,
                     max_len=64)
  block = 4 * 64 * 64 + 2 * 64 * 256 + (4 * 64 + 256 + 64) + 2 * 128
  assert counting.param_counts(config) == counting.ParamCounts(
      2 * block + 128 + 65 * 64 + 64 * 64, 65 * 64 + 64 * 64, 2 * block + 128)
  # Kaplan's C per token: 6 N + 6 n_layer n_ctx d_attn
  assert counting.kaplan_flops_per_token(config, 64) == 6 * (2 * block + 128) + 6 * 2 * 64 * 64


def test_kaplan_flops_of_sparse_layouts_by_hand():
  config = _variant({"num_layers": 4, "attention_pattern": "alternating_local",
                     "attention_window": 4})
  n = counting.param_counts(config).non_embedding
  # layers: dense (16 keys), local (4), dense (16), local (4); d_attn = 32
  assert counting.kaplan_flops_per_token(config, 16) == 6 * n + 6 * (16 + 4 + 16 + 4) * 32
  strided = _variant({"num_layers": 2, "attention_pattern": "local_strided",
                      "attention_window": 4, "attention_stride": 8})
  n = counting.param_counts(strided).non_embedding
  assert counting.kaplan_flops_per_token(strided, 16) == 6 * n + 6 * (4 + 2) * 32


@pytest.mark.parametrize("overrides", [{}, {"tie_embeddings": False, "use_bias": False},
                                       {"num_kv_heads": 1, "position": "rope"},
                                       {"mlp": "swiglu", "norm": "rmsnorm"}],
                         ids=["default", "untied", "mqa_rope", "swiglu"])
def test_matmul_flops_match_the_jaxpr(overrides):
  config = _variant(overrides)
  model = build_model("gpt", config)
  shapes = nn.meta.unbox(jax.eval_shape(lambda: init_params(model, config.max_len, 0)))
  params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  tokens = jnp.zeros((1, config.max_len), jnp.int32)
  forward = lambda p: model.apply({"params": p}, tokens)[0]
  expected = counting.forward_matmul_flops(config, config.max_len)
  assert traced_matmul_flops(jax.make_jaxpr(forward)(params).jaxpr) == expected
  # Backward: two matmuls of the forward's size for each one (input and weight gradients).
  grad = jax.grad(lambda p: jnp.sum(forward(p)))
  assert traced_matmul_flops(jax.make_jaxpr(grad)(params).jaxpr) == 3 * expected
  assert counting.train_matmul_flops_per_token(config, config.max_len) == \
      3 * expected / config.max_len


def _noisy(y, seed):
  return y * np.exp(np.random.default_rng(seed).normal(0, NOISE, np.shape(y)))


def _grid(n_range, d_range, num=6):
  n, d = np.meshgrid(np.geomspace(*n_range, num), np.geomspace(*d_range, num))
  return n.ravel(), d.ravel()


def _assert_recovered(constants, truth, exponents, irreducible=()):
  for k in exponents:
    assert constants[k] == pytest.approx(truth[k], rel=0.05), (k, constants)
  for k in irreducible:
    assert constants[k] == pytest.approx(truth[k], rel=0.02), (k, constants)


def test_power_law_with_irreducible_term_recovered():
  truth = dict(E=1.5, X_c=1e5, alpha=0.3)
  x = np.geomspace(1e3, 1e9, 13)
  result = fit.fit(laws.POWER_LAW, np.log([x]), _noisy(laws.power_loss(x, **truth), 0),
                   bootstrap=30)
  _assert_recovered(result.constants, truth, ["alpha"], ["E"])
  for k in ("E", "alpha"):
    low, high = result.ci[k]
    assert low <= result.constants[k] <= high and high - low < 0.1 * truth[k]


def test_kaplan_joint_law_recovered():
  n, d = _grid((1e5, 1e9), (1e7, 1e11))
  result = fit.fit(laws.KAPLAN, np.log([n, d]), _noisy(laws.kaplan_loss(n, d, **KAPLAN), 1))
  _assert_recovered(result.constants, KAPLAN, ["alpha_N", "alpha_D"])


@pytest.fixture(scope="module")
def chinchilla_data():
  n, d = _grid((1e7, 1e11), (1e8, 1e12))
  return n, d, _noisy(laws.chinchilla_loss(n, d, **HOFFMANN), 2)


def test_chinchilla_fit_recovers_hoffmann_constants(chinchilla_data):
  n, d, y = chinchilla_data
  result = fit.fit(laws.CHINCHILLA, np.log([n, d]), y)
  assert result.loss == "huber"
  _assert_recovered(result.constants, HOFFMANN, ["alpha", "beta"], ["E"])


def test_huber_is_robust_to_outliers_where_least_squares_is_not(chinchilla_data):
  n, d, y = chinchilla_data
  y = y.copy()
  y[[3, 10, 17, 29]] *= 1.3  # four runs gone wrong (a bad learning rate, a data bug)
  huber = fit.fit(laws.CHINCHILLA, np.log([n, d]), y).constants
  squared = fit.fit(laws.CHINCHILLA, np.log([n, d]), y, loss="squared").constants
  _assert_recovered(huber, HOFFMANN, ["alpha", "beta"], ["E"])
  worst = max(abs(squared[k] / HOFFMANN[k] - 1) for k in ("E", "alpha", "beta"))
  assert worst > 0.1, squared


def test_parametric_frontier_matches_brute_force_and_hoffmann_exponents():
  for flops in (1e18, 5.76e23):
    n_opt, d_opt = frontier.parametric_frontier(HOFFMANN, flops)
    assert 6 * n_opt * d_opt == pytest.approx(flops, rel=1e-9)
    n_grid = np.geomspace(n_opt / 100, n_opt * 100, 200_001)
    losses = laws.chinchilla_loss(n_grid, flops / (6 * n_grid), **HOFFMANN)
    assert n_grid[np.argmin(losses)] == pytest.approx(n_opt, rel=1e-3)
    assert frontier.tokens_per_parameter(HOFFMANN, flops) == pytest.approx(d_opt / n_opt)
  # Hoffmann et al. Table 2, approach 3: N_opt ∝ C^0.46, D_opt ∝ C^0.54.
  n1, d1 = frontier.parametric_frontier(HOFFMANN, 1e20)
  n2, d2 = frontier.parametric_frontier(HOFFMANN, 1e22)
  assert np.log(n2 / n1) / np.log(100) == pytest.approx(0.46, abs=0.01)
  assert np.log(d2 / d1) / np.log(100) == pytest.approx(0.54, abs=0.01)


def test_isoflop_minima_recover_the_frontier():
  budgets, sizes, losses = [], [], []
  for i, flops in enumerate([1e18, 1e19, 1e20, 1e21]):
    n_opt, _ = frontier.parametric_frontier(HOFFMANN, flops)
    for n in n_opt * np.geomspace(1 / 8, 8, 9):
      budgets.append(flops)
      sizes.append(n)
      losses.append(laws.chinchilla_loss(n, flops / (6 * n), **HOFFMANN))
  result = frontier.isoflop_frontier(budgets, sizes, _noisy(np.array(losses), 3), bootstrap=20)
  exact_n, _ = frontier.parametric_frontier(HOFFMANN, np.array(result["budgets"]))
  np.testing.assert_allclose(result["n_opt"], exact_n, rtol=0.1)
  a = HOFFMANN["beta"] / (HOFFMANN["alpha"] + HOFFMANN["beta"])
  assert result["a"] == pytest.approx(a, rel=0.05)
  assert result["b"] == pytest.approx(1 - a, rel=0.05)
  assert result["ci"]["a"][0] <= result["a"] <= result["ci"]["a"][1]


def test_training_curve_envelope_follows_the_frontier():
  curves = []
  for n in np.geomspace(1e7, 1e10, 19):
    d = np.geomspace(1e8, 1e12, 60)
    curves.append((n, d, laws.chinchilla_loss(n, d, **HOFFMANN)))
  result = frontier.envelope_frontier(curves)
  a = HOFFMANN["beta"] / (HOFFMANN["alpha"] + HOFFMANN["beta"])
  assert result["a"] == pytest.approx(a, rel=0.1)
  exact_n, _ = frontier.parametric_frontier(HOFFMANN, np.array(result["flops"]))
  ratio = np.array(result["n_opt"]) / exact_n
  assert np.all((ratio > 1 / 1.5) & (ratio < 1.5))  # the ladder's step is 10^(1/6) = 1.47


@pytest.mark.parametrize("call, message", [
    (lambda: fit.fit(laws.CHINCHILLA, np.log([[1e6, 1e7], [1e8, 1e9]]), [3.0, 2.0]),
     "at least"),
    (lambda: fit.fit(laws.POWER_LAW, np.log([[1e3, 1e4, 1e5]]), [3.0, -1.0, 2.0]), "positive"),
    (lambda: fit.fit(laws.POWER_LAW, np.log([[1e3, 1e4, 1e5]]), [3.0, 2.0, 1.5], loss="l1"),
     "huber"),
    (lambda: frontier.isoflop_minimum([1e5, 1e6], [2.0, 1.9]), "3 model sizes"),
    (lambda: frontier.parametric_frontier({**HOFFMANN, "alpha": 0.0}, 1e20), "positive"),
])
def test_bad_input_is_a_one_line_user_error(call, message):
  with pytest.raises(UserError, match=message) as e:
    call()
  assert "\n" not in str(e.value)

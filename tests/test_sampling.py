"""Sampling knobs (temperature, top-k, top-p) against closed forms and hand-computed cases."""

import jax
import jax.numpy as jnp
import numpy as np

from lm.sampling import allowed_tokens, sample_logits

try:
  from scipy.stats import chisquare
except ImportError:  # pragma: no cover
  chisquare = None

N_SAMPLES = 20000
# A peaked 8-token distribution: p ~ [1, e^-3, ..., e^-21] (tail mass below float32 eps).
PEAKED = np.array([12.0, 9.0, 6.0, 3.0, 0.0, -3.0, -6.0, -9.0], np.float32)
MODERATE = np.array([1.0, 0.2, -0.5, 0.7, -1.0, 0.0, 0.4, -0.2], np.float32)


def _sample_many(logits_V, temperature, top_k=0, top_p=1.0, seed=0, n=N_SAMPLES):
  """n independent draws: n identical rows, one rng (each row draws independently)."""
  rows = jnp.asarray(np.tile(np.asarray(logits_V, np.float32), (n, 1)))
  return np.asarray(_sample(rows, jax.random.key(seed), jnp.float32(temperature), top_k, top_p))


_sample = jax.jit(sample_logits, static_argnames=("top_k",))
_allowed_tokens = jax.jit(allowed_tokens, static_argnames=("top_k",))


def _softmax(x):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max())
  return e / e.sum()


def _assert_matches(samples, probs_V, min_p=1e-3):
  """Chi-square goodness of fit; tokens with probability 0 must never appear."""
  probs_V = np.asarray(probs_V, np.float64)
  counts = np.bincount(samples, minlength=len(probs_V))
  assert counts[probs_V == 0].sum() == 0, counts
  support = probs_V > 0
  observed, expected = counts[support], probs_V[support] * len(samples)
  assert expected.min() >= 5, "test design: expected counts too small for chi-square"
  if chisquare is not None:
    p = chisquare(observed, expected).pvalue
  else:  # pragma: no cover
    stat = ((observed - expected) ** 2 / expected).sum()
    assert support.sum() == 8, "fallback critical value is for 7 degrees of freedom"
    p = 1.0 if stat < 24.32 else 0.0  # 0.999 quantile of chi2(7)
  assert p > min_p, (counts, expected, p)


def _nucleus(probs_V, top_p):
  """Smallest set of most likely tokens whose mass is >= top_p (float64, by hand)."""
  order = np.argsort(-np.asarray(probs_V, np.float64), kind="stable")
  chosen, mass = set(), 0.0
  for i in order:
    if mass >= top_p:
      break
    chosen.add(int(i))
    mass += probs_V[i]
  return chosen


def _allowed(logits_V, top_k=0, top_p=1.0):
  mask = np.asarray(_allowed_tokens(jnp.asarray(np.asarray(logits_V, np.float32)[None]),
                                    top_k, top_p))[0]
  return set(np.flatnonzero(mask).tolist())


# --- temperature ------------------------------------------------------------------------

def test_temperature_zero_is_argmax_and_seed_independent():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((64, 10)).astype(np.float32) * 3
  want = np.argmax(logits, axis=-1)
  for seed in range(4):
    got = np.asarray(_sample(jnp.asarray(logits), jax.random.key(seed), jnp.float32(0.0), 0,
                             1.0))
    np.testing.assert_array_equal(got, want)


def test_temperature_inf_is_uniform_over_a_peaked_distribution():
  samples = _sample_many(PEAKED, np.inf, seed=1)
  _assert_matches(samples, np.full(8, 1 / 8))


def test_temperature_one_matches_softmax():
  samples = _sample_many(MODERATE, 1.0, seed=2)
  _assert_matches(samples, _softmax(MODERATE))


def test_temperature_two_matches_tempered_softmax():
  samples = _sample_many(MODERATE, 2.0, seed=3)
  _assert_matches(samples, _softmax(MODERATE / 2.0))


def test_temperature_zero_with_neg_inf_logits_has_no_nan():
  logits = np.array([[-np.inf, 0.5, -np.inf, 2.0, 1.0],
                     [-np.inf, -np.inf, -np.inf, -np.inf, 3.0]], np.float32)
  for t in (0.0, 1.0):
    got = np.asarray(_sample(jnp.asarray(logits), jax.random.key(0), jnp.float32(t), 0, 1.0))
    if t == 0.0:
      np.testing.assert_array_equal(got, [3, 4])
    assert got[1] == 4
    assert np.isfinite(logits[np.arange(2), got]).all()
  # Many draws at temperature 1: -inf logits are never picked.
  samples = _sample_many(logits[0], 1.0, seed=4, n=2000)
  assert set(np.unique(samples)) <= {1, 3, 4}


def test_temperature_inf_never_picks_neg_inf_logits():
  """A token with probability exactly 0 stays impossible at every temperature."""
  logits = np.array([-np.inf, 0.5, -np.inf, 2.0, 1.0], np.float32)
  samples = _sample_many(logits, np.inf, seed=5, n=6000)
  _assert_matches(samples, np.array([0, 1, 0, 1, 1]) / 3)


# --- top-k / top-p ----------------------------------------------------------------------

def test_top_p_hand_computed_nucleus():
  logits = np.log(np.array([0.5, 0.3, 0.1, 0.06, 0.04]))
  assert _allowed(logits, top_p=0.79) == {0, 1}
  assert _allowed(logits, top_p=0.81) == {0, 1, 2}
  assert _allowed(logits, top_p=0.5 - 1e-3) == {0}
  assert _allowed(logits, top_p=0.95) == {0, 1, 2, 3}
  assert _allowed(logits, top_p=0.97) == {0, 1, 2, 3, 4}
  assert _allowed(logits, top_p=1e-6) == {0}  # the top token is always kept


def test_top_p_exact_boundary():
  # float32 gives mass({0, 1}) = 0.79999995; the definition says {0, 1} already reaches 0.8.
  logits = np.log(np.array([0.5, 0.3, 0.1, 0.06, 0.04]))
  assert _allowed(logits, top_p=0.8) == {0, 1}  # mass 0.8 >= 0.8 already


def test_top_k_then_top_p_uses_renormalised_top_k_distribution():
  # probs [0.4, 0.3, 0.2, 0.1]; top-3 renormalised: [4/9, 3/9, 2/9] -> {0, 1} has 7/9 >= 0.75.
  # (Without renormalising, {0, 1} would only have 0.7 < 0.75.)
  logits = np.log(np.array([0.4, 0.3, 0.2, 0.1]))
  assert _allowed(logits, top_k=3) == {0, 1, 2}
  assert _allowed(logits, top_k=3, top_p=0.75) == {0, 1}
  assert _allowed(logits, top_k=3, top_p=0.8) == {0, 1, 2}
  assert _allowed(logits, top_k=2, top_p=0.99) == {0, 1}
  assert _allowed(logits, top_k=1, top_p=1.0) == {0}


def test_top_k_zero_and_top_p_one_keep_everything():
  for logits in (MODERATE, PEAKED, np.array([30.0, 0.0, -30.0, -60.0], np.float32)):
    assert _allowed(logits) == set(range(len(logits)))
    assert _allowed(logits, top_k=len(logits)) == set(range(len(logits)))
    assert _allowed(logits, top_k=len(logits) + 3) == set(range(len(logits)))


def test_ties():
  logits = np.array([1.0, 1.0, 1.0, 0.0, 0.0], np.float32)
  kept = _allowed(logits, top_k=2)
  assert len(kept) == 2 and kept <= {0, 1, 2}
  uniform = np.zeros(4, np.float32)
  kept = _allowed(uniform, top_p=0.5)  # 2 of 4 equal tokens reach mass 0.5
  assert len(kept) == 2
  assert len(_allowed(uniform, top_p=0.51)) == 3


def test_samples_stay_inside_top_k_and_nucleus():
  rng = np.random.default_rng(6)
  B, V = 256, 12
  logits = (rng.standard_normal((B, V)) * 2).astype(np.float32)
  probs = np.apply_along_axis(_softmax, 1, logits)
  k, p = 4, 0.7
  topk_sets = [set(np.argsort(-row)[:k].tolist()) for row in logits]
  nucleus_sets = [_nucleus(row, p) for row in probs]
  for t in (1.0, np.inf):
    for seed in range(3):
      got_k = np.asarray(_sample(jnp.asarray(logits), jax.random.key(seed), jnp.float32(t), k,
                                 1.0))
      got_p = np.asarray(_sample(jnp.asarray(logits), jax.random.key(seed), jnp.float32(t), 0, p))
      for b in range(B):
        assert int(got_k[b]) in topk_sets[b]
        assert int(got_p[b]) in nucleus_sets[b]
  # And the masks themselves equal the hand-computed sets.
  mask_k = np.asarray(allowed_tokens(jnp.asarray(logits), k, 1.0))
  mask_p = np.asarray(allowed_tokens(jnp.asarray(logits), 0, p))
  for b in range(B):
    assert set(np.flatnonzero(mask_k[b]).tolist()) == topk_sets[b]
    assert set(np.flatnonzero(mask_p[b]).tolist()) == nucleus_sets[b]


def test_top_p_sampling_matches_renormalised_nucleus():
  logits = np.log(np.array([0.5, 0.3, 0.1, 0.06, 0.04], np.float32))
  samples = _sample_many(logits, 1.0, top_p=0.85, seed=7, n=8000)
  _assert_matches(samples, np.array([0.5, 0.3, 0.1, 0, 0]) / 0.9)


def test_temperature_inf_with_top_k_is_uniform_over_those_k():
  samples = _sample_many(PEAKED[::-1].copy(), np.inf, top_k=3, seed=8, n=6000)
  # Reversed: the 3 largest logits sit at indices 7, 6, 5.
  _assert_matches(samples, np.array([0, 0, 0, 0, 0, 1, 1, 1]) / 3)


def test_tiny_top_p_keeps_exactly_the_most_likely_token():
  logits = np.log(np.array([0.1, 0.6, 0.3]))
  assert _allowed(logits, top_p=1e-9) == {1}

"""Greedy and beam search against independent references.

- greedy with the KV cache == a Python loop of full decoder forwards and argmax;
- beam 1 == greedy (length penalty 0);
- a beam wide enough to never prune returns exactly the best hypotheses of a brute-force
  enumeration of every sequence, each scored by one teacher-forced forward pass;
- a narrow beam's scores equal the teacher-forced scores of the sequences it returns;
- the cross-attention keys/values are the encoder output's projections, computed once
  per source: no matmul inside the decoding loop reads the encoder output.
"""

import functools
import itertools

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest
from test_encdec import random_params

from lm.decoding import (
  _beam_search,
  _greedy,
  beam_search,
  greedy_decode,
  length_penalty_factor,
  strip_after_eos,
)
from lm.layers.attention import CROSS_KV
from lm.models.encdec import EncDecConfig, EncoderDecoder, cross_kv_of, shift_right

PAD, EOS = 0, 1


def _model(vocab, max_target_len, position="t5"):
  return EncoderDecoder(EncDecConfig(
      vocab_size=vocab, num_encoder_layers=1, num_decoder_layers=2, num_heads=2, embed_dim=16,
      mlp_dim=32, max_len=6, max_target_len=max_target_len, position=position))


def favour_eos(params, strength):
  """Adds `strength` to the EOS logit at every step (through the final norm's bias and the
  tied output projection), so hypotheses end at varied lengths and EOS handling is used."""
  e = params["embed"]["embedding"][EOS]
  norm = dict(params["decoder_norm"], bias=params["decoder_norm"]["bias"] + strength * e / (e @ e))
  return dict(params, decoder_norm=norm)


@pytest.fixture(scope="module")
def tiny():
  """Vocab {pad, eos, a, b}: small enough to enumerate every target of length <= 3."""
  model = _model(4, 3)
  params = favour_eos(random_params(model, seed=5, scale=0.6), 8.0)
  sources = np.array([[2, 3, 2, 0, 0, 0], [3, 3, 2, 3, 2, 0], [2, 2, 0, 0, 0, 0]], np.int32)
  return model, params, sources


@pytest.fixture(scope="module")
def small():
  model = _model(9, 8, position="learned")
  params = favour_eos(random_params(model, seed=6, scale=0.5), 3.0)
  rng = np.random.default_rng(0)
  sources = rng.integers(2, 9, (4, 6)).astype(np.int32)
  sources[1, 3:] = PAD
  return model, params, sources


@functools.cache
def jitted_apply(model):
  return jax.jit(model.apply)


def teacher_forced_logp(model, params, sources, targets):
  """Sum of log p(target_t | target_<t, source) over each hypothesis up to its EOS."""
  sources, targets = np.asarray(sources), np.asarray(targets)
  logits = jitted_apply(model)({"params": params}, sources, shift_right(jnp.asarray(targets)))
  logp = np.asarray(jax.nn.log_softmax(logits), np.float64)
  out = []
  for row in range(len(targets)):
    n = len(strip_after_eos(targets[row], EOS))
    n = min(n + 1, targets.shape[1])  # include the EOS if there is one
    out.append(sum(logp[row, t, targets[row, t]] for t in range(n)))
  return np.array(out), logp


def naive_greedy(model, params, source, max_len):
  """Full decoder forward on the whole prefix at every step; no cache.

  The prefix is right-padded to a fixed length (one compile); later positions cannot
  change earlier logits (causality, tests/test_encdec.py).
  """
  tokens = []
  while len(tokens) < max_len:
    dec_in = np.zeros((1, max_len), np.int32)
    dec_in[0, :len(tokens) + 1] = [model.config.decoder_start_id] + tokens
    logits = jitted_apply(model)({"params": params}, source[None], dec_in)
    tokens.append(int(np.argmax(logits[0, len(tokens)])))
    if tokens[-1] == EOS:
      break
  return tokens + [PAD] * (max_len - len(tokens))


def test_greedy_with_cache_equals_full_forward_argmax(small):
  model, params, sources = small
  got = greedy_decode(model, params, sources, max_len=8, eos_id=EOS)
  assert 0 < np.sum(got == EOS) < len(sources)  # some rows end early, some run to max_len
  for row in range(len(sources)):
    assert got[row].tolist() == naive_greedy(model, params, sources[row], 8)


@pytest.mark.parametrize("fixture", ["tiny", "small"])
def test_beam_one_equals_greedy(fixture, request):
  model, params, sources = request.getfixturevalue(fixture)
  max_len = model.config.max_target_len
  greedy = greedy_decode(model, params, sources, max_len=max_len, eos_id=EOS)
  seqs, scores = beam_search(model, params, sources, beam_size=1, max_len=max_len, eos_id=EOS)
  np.testing.assert_array_equal(seqs[:, 0], greedy)
  want, _ = teacher_forced_logp(model, params, sources, greedy)
  np.testing.assert_allclose(scores[:, 0], want, rtol=1e-5, atol=1e-5)


def all_hypotheses(vocab, max_len):
  """Every finished target: k non-EOS tokens then EOS (k < max_len), or max_len non-EOS."""
  others = [v for v in range(vocab) if v != EOS]
  hyps = []
  for k in range(max_len):
    hyps += [list(p) + [EOS] + [PAD] * (max_len - k - 1)
             for p in itertools.product(others, repeat=k)]
  hyps += [list(p) for p in itertools.product(others, repeat=max_len)]
  return np.array(hyps, np.int32)


@pytest.mark.parametrize("alpha", [0.0, 0.8])
def test_unpruned_beam_finds_the_brute_force_best(tiny, alpha):
  model, params, sources = tiny
  max_len, vocab = 3, 4
  hyps = all_hypotheses(vocab, max_len)  # 1 + 3 + 9 ending in EOS, 27 truncated
  assert len(hyps) == 40
  # K = 36 >= the candidates of any step (9 live beams x 4 tokens): nothing is pruned.
  K = 36
  seqs, scores = beam_search(model, params, sources, beam_size=K, max_len=max_len, eos_id=EOS,
                             length_penalty=alpha)
  for row in range(len(sources)):
    src = np.repeat(sources[row:row + 1], len(hyps), axis=0)
    logp, _ = teacher_forced_logp(model, params, src, hyps)
    lengths = np.array([min(len(strip_after_eos(h, EOS)) + 1, max_len) for h in hyps])
    brute = logp / ((5.0 + lengths) / 6.0) ** alpha
    order = np.argsort(-brute, kind="stable")[:K]
    if alpha == 0.0:  # here the best hypothesis is not greedy's: the search matters
      assert seqs[row, 0].tolist() != greedy_decode(model, params, sources[row:row + 1],
                                                    max_len=max_len, eos_id=EOS)[0].tolist()
    np.testing.assert_allclose(scores[row], brute[order], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(seqs[row, 0], hyps[order[0]])
    # The whole top-K list matches, up to swaps of (numerically) tied scores.
    got = {tuple(s) for s in seqs[row]}
    want = {tuple(hyps[i]) for i in order}
    assert len(got ^ want) <= 2 * np.sum(np.abs(np.diff(brute[order])) < 1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_pruned_beam_scores_are_teacher_forced_scores(small, alpha):
  model, params, sources = small
  max_len = model.config.max_target_len
  seqs, scores = beam_search(model, params, sources, beam_size=3, max_len=max_len, eos_id=EOS,
                             length_penalty=alpha)
  greedy = greedy_decode(model, params, sources, max_len=max_len, eos_id=EOS)
  for row in range(len(sources)):
    logp, _ = teacher_forced_logp(model, params, np.repeat(sources[row:row + 1], 3, 0),
                                  seqs[row])
    lengths = np.array([min(len(strip_after_eos(s, EOS)) + 1, max_len) for s in seqs[row]])
    np.testing.assert_allclose(scores[row], logp / length_penalty_factor(lengths, alpha),
                               rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(scores[row]) <= 0)  # best first
    assert len({tuple(s) for s in seqs[row]}) == 3  # distinct hypotheses
    if alpha == 0.0:  # the beam contains greedy's path, so it can only do better
      g, _ = teacher_forced_logp(model, params, sources[row:row + 1], greedy[row:row + 1])
      assert scores[row, 0] >= g[0] - 1e-5


def test_bad_arguments_are_user_errors(small):
  from lm.errors import UserError
  model, params, sources = small
  with pytest.raises(UserError, match="max_target_len"):
    greedy_decode(model, params, sources, max_len=9, eos_id=EOS)
  with pytest.raises(UserError, match="length_penalty"):
    beam_search(model, params, sources, beam_size=2, max_len=4, eos_id=EOS, length_penalty=-1)


def _loop_bodies(jaxpr):
  """The body jaxprs of every while loop in `jaxpr`, searching nested calls too."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "while":
      yield eqn.params["body_jaxpr"].jaxpr
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _loop_bodies(sub)


def _matmuls_reading(jaxpr, shape) -> int:
  """dot_generals (at any depth) with an operand of `shape`."""
  count = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      count += any(getattr(v.aval, "shape", None) == shape for v in eqn.invars)
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      count += _matmuls_reading(sub, shape)
  return count


def test_cross_attention_keys_values_are_projected_once_per_source(small):
  """The cached K/V equal the encoder output times each layer's key/value kernels, and
  the decoding loop never multiplies the encoder output again (the recompute path does)."""
  model, params, sources = small
  B, S = sources.shape
  encoded = model.apply({"params": params}, sources, method="encode")
  start = jnp.zeros((B, 1), jnp.int32)
  _, sown = model.apply({"params": params}, start, encoded, sources,
                        caches=model.init_cache(B), method="decode", mutable=[CROSS_KV])
  cross_kv = cross_kv_of(sown)
  assert len(cross_kv) == model.config.num_decoder_layers
  for layer, kv in enumerate(cross_kv):
    p = params[f"decoder_blocks_{layer}"]["cross_attn"]
    for got, proj in zip(kv, (p["key"], p["value"])):
      want = np.einsum("bsd,dkh->bskh", np.asarray(encoded, np.float64),
                       np.asarray(proj["kernel"], np.float64)) + np.asarray(proj["bias"])
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

  def loop_matmuls_on_encoded(cache_cross_kv, search):
    jaxpr = jax.make_jaxpr(search(cache_cross_kv))(params, sources).jaxpr
    return sum(_matmuls_reading(body, encoded.shape) for body in _loop_bodies(jaxpr))

  for search in (lambda c: functools.partial(_greedy, model, max_len=8, eos_id=EOS, pad_id=PAD,
                                             cache_cross_kv=c),
                 lambda c: functools.partial(_beam_search, model, beam_size=1, max_len=8,
                                             eos_id=EOS, pad_id=PAD, length_penalty=0.0,
                                             cache_cross_kv=c)):
    # Recomputing: a key and a value projection per decoder layer at every step.
    assert loop_matmuls_on_encoded(False, search) == 2 * model.config.num_decoder_layers
    assert loop_matmuls_on_encoded(True, search) == 0

"""Bias probes (lm/eval/bias.py): the batched, padded pseudo-log-likelihood against a naive
mask-one-token loop, decoder pair scores against lm.scoring's chain rule, the bootstrap's
coverage and width against the normal closed form and scipy, and the summary statistics
on pairs with known differences."""

import math

import flax.linen as nn
import jax
import numpy as np
import pytest
import scipy.stats

from lm import config as config_lib
from lm import scoring
from lm.data.tokenizers import CharTokenizer
from lm.errors import UserError
from lm.eval import bias
from lm.models.bert import Bert, BertConfig
from lm.models.bert import init_params as bert_init
from lm.models.registry import build_model
from lm.tasks.causal_lm import init_params as gpt_init
from lm.tasks.mlm_nsp import BertTokenizer

ALPHABET = "".join(sorted(set("The {} was wise and just. abcdefghijklmnopqrstuvwxyz ,.")))


def test_shipped_templates_load():
  pairs = bias.load_pairs()
  assert len(pairs) == 218  # gender 16 x 8, age 10 x 4, nationality 10 x 5
  assert {p.category for p in pairs} == {"gender", "age", "nationality"}
  p = pairs[0]
  assert "".join(p.parts(p.term_a)) == p.template.replace("{}", p.term_a)


def test_bad_templates_are_user_errors(tmp_path):
  with pytest.raises(UserError, match="not found"):
    bias.load_pairs(str(tmp_path / "none.json"))
  bad = tmp_path / "bad.json"
  bad.write_text('{"categories": {"g": {"pairs": [["a", "b"]], "templates": {"x": ["{} {}"]}}}}')
  with pytest.raises(UserError, match="exactly one"):
    bias.load_pairs(str(bad))
  bad.write_text('{"categories": {"g": {"pairs": [["a", "a"]], "templates": {"x": ["{}"]}}}}')
  with pytest.raises(UserError, match="not a pair"):
    bias.load_pairs(str(bad))


def test_pseudo_log_likelihood_matches_naive_loop():
  tok = BertTokenizer(CharTokenizer(sorted(set(ALPHABET))))
  model = Bert(BertConfig(vocab_size=tok.vocab_size, num_layers=1, num_heads=2, embed_dim=16,
                          mlp_dim=32, max_len=24, dropout=0.0))
  params = bert_init(model, 24, seed=0)
  ids = tok.encode("the king was just.")
  fast = bias.pseudo_log_likelihood(model, params, ids, cls_id=tok.cls_id, sep_id=tok.sep_id,
                                    mask_id=tok.mask_id)
  full = np.concatenate([[tok.cls_id], ids, [tok.sep_id]])  # unpadded, one copy at a time
  apply = jax.jit(lambda tokens: model.apply({"params": params}, tokens))
  for i in range(len(ids)):
    masked = full.copy()
    masked[i + 1] = tok.mask_id
    logits, _ = apply(masked[None])
    naive = jax.nn.log_softmax(logits[0, i + 1])[ids[i]]
    assert fast[i] == pytest.approx(float(naive), abs=1e-5)
  with pytest.raises(UserError, match="exceeds model.max_len"):
    bias.pseudo_log_likelihood(model, params, np.zeros(23, np.int32), cls_id=tok.cls_id,
                               sep_id=tok.sep_id, mask_id=tok.mask_id)


@pytest.mark.slow  # compiles a decoder: ~15 s on the loaded 2-core machine
def test_decoder_pair_scores_match_chain_rule():
  tok = CharTokenizer(sorted(set(ALPHABET)))
  cfg = config_lib.from_dict({"data": {"path": "x"}, "model": {
      "vocab_size": tok.vocab_size, "num_layers": 1, "num_heads": 2, "embed_dim": 16,
      "mlp_dim": 32, "max_len": 16}})
  model = build_model("gpt", cfg.model)
  params = jax.device_get(nn.meta.unbox(gpt_init(model, 16, seed=0)))
  prior = np.log(np.full(tok.vocab_size, 1.0 / tok.vocab_size))
  pair = bias.Pair("g", "positive", "The {} was wise and just.", "king", "queen")
  [row] = bias.score_pairs(bias.decoder_scorer(model, params, tok, prior), [pair])
  for side, term in (("a", "king"), ("b", "queen")):
    text = pair.template.replace("{}", term)
    logp = scoring.token_logprobs(model, params, tok.encode(text), prior)  # > max_len: windows
    start = len("The ")
    assert row[f"full_{side}"] == pytest.approx(logp.sum(), rel=1e-6)
    shared = logp.sum() - logp[start:start + len(term)].sum()
    assert row[f"shared_{side}"] == pytest.approx(shared, rel=1e-6)


def test_bootstrap_coverage_and_width_for_a_normal_mean():
  rng = np.random.default_rng(0)
  n, trials, covered, widths = 50, 200, 0, []
  for t in range(trials):
    x = rng.normal(3.0, 2.0, n)
    est, low, high = bias.bootstrap_ci([x], np.mean, num_resamples=400, seed=t)
    assert est == pytest.approx(x.mean())
    covered += low <= 3.0 <= high
    widths.append(high - low)
  # Nominal 95%; the percentile bootstrap under-covers slightly at n = 50.
  assert 0.88 <= covered / trials <= 0.99
  closed_form = 2 * 1.96 * 2.0 / math.sqrt(n)  # 2 z sigma / sqrt(n)
  assert np.mean(widths) == pytest.approx(closed_form, rel=0.1)


def test_bootstrap_agrees_with_scipy_and_two_sample_difference():
  rng = np.random.default_rng(1)
  x = rng.exponential(1.0, 80)
  _, low, high = bias.bootstrap_ci([x], np.mean, num_resamples=4000, seed=0)
  ref = scipy.stats.bootstrap((x,), np.mean, n_resamples=4000, method="percentile",
                              random_state=0).confidence_interval
  assert low == pytest.approx(ref.low, abs=0.03) and high == pytest.approx(ref.high, abs=0.03)
  a, b = rng.normal(1.0, 1.0, 200), rng.normal(0.0, 1.0, 300)
  est, low, high = bias.bootstrap_ci([a, b], lambda p, q: p.mean() - q.mean(), seed=0)
  assert est == pytest.approx(a.mean() - b.mean())
  half = 1.96 * math.sqrt(a.var() / 200 + b.var() / 300)  # Welch closed form
  assert low == pytest.approx(est - half, abs=0.04) and high == pytest.approx(est + half, abs=0.04)
  with pytest.raises(UserError, match="confidence"):
    bias.bootstrap_ci([x], np.mean, confidence=1.5)


def test_summary_of_known_differences():
  rows = []
  for valence, diffs in (("positive", [2.0, 1.0, -1.0, 3.0]), ("negative", [-1.0, -2.0])):
    for d in diffs:
      rows.append({"category": "g", "valence": valence, "shared_a": d, "shared_b": 0.0,
                   "full_a": d + 1.0, "full_b": 0.0})
  s = bias.summarize(rows, num_resamples=100)["g"]
  assert s["pairs"] == 6
  assert s["prefer_a"][0] == pytest.approx(3 / 6)
  assert s["mean_diff"][0] == pytest.approx(2.0 / 6)
  assert s["mean_diff_full"][0] == pytest.approx(2.0 / 6 + 1.0)
  assert s["mean_diff_positive"][0] == pytest.approx(1.25)
  assert s["association"][0] == pytest.approx(1.25 - (-1.5))
  for key in ("prefer_a", "mean_diff", "association"):
    assert s[key][1] <= s[key][0] <= s[key][2]
  assert "| g (x) | 6 | 0.500 [" in bias.table({"g": s}, {"g": "x"})

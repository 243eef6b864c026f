"""N-gram LM: brute-force Kneser-Ney, closed-form discounts, hand-computed add-k, KenLM numbers.

The brute-force reference below re-derives interpolated modified Kneser-Ney from
Chen & Goodman (1998) with Python dicts of tuples, one probability at a time; the
model under test uses sorted integer keys and vectorised NumPy. The KenLM numbers
were produced by `lmplz` and `query` (KenLM 0.3.0, built from the PyPI sdist) on
tiny Shakespeare and are frozen here.
"""

import collections
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lm.data.corpus import read_text
from lm.errors import UserError
from lm.models.ngram import NGramConfig, NGramLM, TokenStream, modified_kn_discounts
from lm.models.ngram_arpa import arpa_token, write_arpa
from lm.models.ngram_sampling import generate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAKESPEARE = os.path.join(REPO, "data", "tinyshakespeare.txt")


# ----------------------------------------------------------------- brute-force reference


class BruteForceKN:
  """Interpolated modified Kneser-Ney, straight from the definitions, over padded sentences.

  Conventions (KenLM's): <s> is context only; for orders below the top, an n-gram's
  count is the number of distinct words to its left unless it starts with <s>; the
  unigram distribution is interpolated with the uniform one over every word but <s>.
  """

  def __init__(self, sentences, order, vocab_size, bos, eos):
    self.N, self.bos = order, bos
    self.words = [w for w in range(vocab_size) if w != bos]
    raw = [collections.Counter() for _ in range(order + 1)]
    for s in sentences:
      padded = [bos] + list(s) + [eos]
      for n in range(1, order + 1):
        for i in range(len(padded) - n + 1):
          gram = tuple(padded[i:i + n])
          if gram != (bos,):
            raw[n][gram] += 1
    self.count = [None] + [{} for _ in range(order)]
    for n in range(1, order + 1):
      for gram, c in raw[n].items():
        if n == order or gram[0] == bos:
          self.count[n][gram] = c
        else:
          self.count[n][gram] = len({g[0] for g in raw[n + 1] if g[1:] == gram})
    self.D = [None] + [self._discounts(n) for n in range(1, order + 1)]
    self.follows = collections.defaultdict(dict)  # context -> {n-gram: count}
    for n in range(1, order + 1):
      for gram, c in self.count[n].items():
        self.follows[gram[:-1]][gram] = c

  def _discounts(self, n):
    """Chen & Goodman eq. 26; KenLM's fallback (0.5, 1, 1.5) when a t_k is 0 or D_k leaves [0, k]."""
    t = collections.Counter(min(c, 5) for c in self.count[n].values())
    if any(t[k] == 0 for k in (1, 2, 3, 4)):
      return {1: 0.5, 2: 1.0, 3: 1.5}
    y = t[1] / (t[1] + 2 * t[2])
    d = {k: k - (k + 1) * y * t[k + 1] / t[k] for k in (1, 2, 3)}
    return d if all(0 <= d[k] <= k for k in d) else {1: 0.5, 2: 1.0, 3: 1.5}

  def prob(self, word, context) -> float:
    context = tuple(context)[-(self.N - 1):] if self.N > 1 else ()
    n = len(context) + 1
    follows = self.follows.get(context, {})
    if n > 1 and not follows:
      return self.prob(word, context[1:])
    total = sum(follows.values())
    d = lambda c: self.D[n][min(c, 3)] if c else 0.0
    gamma = sum(d(c) for c in follows.values()) / total
    c = follows.get(context + (word,), 0)
    lower = 1.0 / len(self.words) if n == 1 else self.prob(word, context[1:])
    return (c - d(c)) / total + gamma * lower


def _random_sentences(rng, num, vocab, max_len):
  return [rng.integers(0, vocab, size=rng.integers(0, max_len + 1)).tolist() for _ in range(num)]


def _fit_sentences(sentences, order, vocab, **kw):
  bos, eos = vocab, vocab + 1
  stream = TokenStream.from_sequences(sentences, bos, eos)
  return NGramLM.fit(NGramConfig(order=order, **kw), stream, vocab + 2, bos, eos)


# Skewed word frequencies: orders >= 2 see counts of 1, 2, 3 and 4 (no discount fallback).
def _skewed_sentences(seed, num=120, vocab=7, max_len=9):
  rng = np.random.default_rng(seed)
  p = 1.0 / np.arange(1, vocab + 1)
  return [rng.choice(vocab, size=rng.integers(0, max_len + 1), p=p / p.sum()).tolist()
          for _ in range(num)]


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_kneser_ney_matches_brute_force(order):
  vocab = 12
  train = _skewed_sentences(0, num=300, vocab=vocab)
  model = _fit_sentences(train, order, vocab)
  assert model.discount_fallback == [1]  # 13 unigrams: no continuation count is exactly 1..4
  ref = BruteForceKN(train, order, vocab + 2, vocab, vocab + 1)
  val = _random_sentences(np.random.default_rng(1), 30, vocab, 12)  # includes unseen contexts
  stream = TokenStream.from_sequences(val, vocab, vocab + 1)
  got = model.logprobs(stream)
  expected = []
  for s in val:
    padded = [vocab] + s + [vocab + 1]
    expected += [0.0] + [math.log(ref.prob(w, padded[:i])) for i, w in enumerate(padded) if i]
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
  for n in range(1, order + 1):
    np.testing.assert_allclose(model.discounts()[n], [ref.D[n][k] for k in (1, 2, 3)],
                               rtol=1e-12)


def test_every_context_sums_to_one_and_next_logprobs_agree():
  vocab, order = 7, 3
  train = _skewed_sentences(2)
  model = _fit_sentences(train, order, vocab)
  bos = vocab
  contexts = [[bos], [bos, 0], [0, 1], [bos, 6, 6], [5, 5, 5], [], [3]]
  contexts += [list(map(int, np.random.default_rng(i).integers(0, vocab, 2))) for i in range(20)]
  for context in contexts:
    logp_V = model.next_logprobs(context)
    assert logp_V[bos] == -np.inf
    assert math.isclose(np.exp(logp_V).sum(), 1.0, rel_tol=1e-12), context
  # next_logprobs(sentence prefix) == logprobs of the sentence, token by token.
  sentence = [3, 1, 4, 1, 5]
  stream = TokenStream.from_sequences([sentence], bos, vocab + 1)
  padded = [bos] + sentence + [vocab + 1]
  per_token = model.logprobs(stream)
  for i in range(1, len(padded)):
    assert math.isclose(model.next_logprobs(padded[:i])[padded[i]], per_token[i], rel_tol=1e-12)


def test_stream_mode_sums_to_one_and_matches_brute_force_continuations():
  rng = np.random.default_rng(3)
  ids = rng.choice(5, size=3000, p=[0.4, 0.3, 0.15, 0.1, 0.05])
  model = NGramLM.fit(NGramConfig(order=3), TokenStream.from_sequences([ids]), 5)
  for context in ([], [0], [4, 4], [1, 2]):
    assert math.isclose(np.exp(model.next_logprobs(context)).sum(), 1.0, rel_tol=1e-12)
  # Unigram adjusted counts are continuation counts: distinct left neighbours.
  lefts = collections.defaultdict(set)
  for a, b in zip(ids[:-1], ids[1:]):
    lefts[b].add(a)
  d1, d2, d3 = model.discounts()[1]
  cont = np.array([len(lefts[w]) for w in range(5)])
  disc = np.where(cont == 1, d1, np.where(cont == 2, d2, np.where(cont >= 3, d3, 0.0)))
  expected = (cont - disc) / cont.sum() + disc.sum() / cont.sum() / 5
  np.testing.assert_allclose(model.unigram_prob_V, expected, rtol=1e-12)


def test_modified_kn_discounts_closed_form():
  # t1..t4 = 10, 4, 3, 2 -> Y = 10/18; D_k = k - (k+1) Y t_{k+1} / t_k (Chen & Goodman eq. 26).
  counts = np.array([1] * 10 + [2] * 4 + [3] * 3 + [4] * 2 + [7, 9])
  (d1, d2, d3), fell_back = modified_kn_discounts(counts)
  y = 10 / 18
  assert not fell_back
  assert math.isclose(d1, 1 - 2 * y * 4 / 10, rel_tol=1e-12)  # 0.5556
  assert math.isclose(d2, 2 - 3 * y * 3 / 4, rel_tol=1e-12)  # 0.75
  assert math.isclose(d3, 3 - 4 * y * 2 / 3, rel_tol=1e-12)  # 1.5185
  # No n-gram seen exactly 3 times: KenLM's fallback discounts.
  assert modified_kn_discounts(np.array([1, 1, 2, 4])) == ((0.5, 1.0, 1.5), True)


def test_add_k_equals_hand_computation():
  # Stream "a b a b c a" over {a, b, c} (0, 1, 2); bigram counts: ab 2, ba 1, bc 1, ca 1.
  ids = [0, 1, 0, 1, 2, 0]
  model = NGramLM.fit(NGramConfig(order=2, smoothing="add_k", k=0.5),
                      TokenStream.from_sequences([ids]), 3)
  k, V = 0.5, 3
  # p(a | b) = (c(ba) + k) / (c(b .) + k V) = (1 + .5) / (2 + 1.5); p(c | a) = (0 + .5) / (2 + 1.5)
  assert math.isclose(np.exp(model.next_logprobs([1])[0]), 1.5 / 3.5, rel_tol=1e-12)
  assert math.isclose(np.exp(model.next_logprobs([0])[2]), 0.5 / 3.5, rel_tol=1e-12)
  # p(b | c) with c seen once as a context: (0 + .5) / (1 + 1.5); first token: unigram (2+.5)/(6+1.5)
  got = np.exp(model.logprobs(TokenStream.from_sequences([[0, 2, 1]])))
  np.testing.assert_allclose(got, [(3 + k) / (6 + k * V), 0.5 / 3.5, 0.5 / 2.5], rtol=1e-12)
  for context in ([], [0], [1], [2]):
    assert math.isclose(np.exp(model.next_logprobs(context)).sum(), 1.0, rel_tol=1e-12)


# ----------------------------------------------------------------- KenLM's numbers

# lmplz -o N < train.txt > N.arpa; query N.arpa < val.txt. train.txt = the first 90% of
# the characters of data/tinyshakespeare.txt plus "\n", val.txt = the rest; the char
# models write each character as a word ("<sp>" for a space), one line per sentence,
# and need `--discount_fallback` (the unigram D2 is out of range with 64 symbols).
KENLM_WORD = {  # order: (perplexity including OOVs, excluding OOVs); 2360 OOVs, 24627 tokens
    2: (506.5001533319447, 254.7026551588281),
    3: (494.9579439461196, 248.34486803188545),
    5: (494.0163407133602, 247.9326794063998),
}
KENLM_CHAR = {3: 7.839319760019001, 6: 4.67868594851974}  # 111539 tokens, no OOV
KENLM_ARPA_3 = {  # lines of the word 3-gram ARPA file: (log10 p, log10 backoff or None)
    "comes here?": (-2.614326, -0.6184974),
    "comes here? </s>": (-0.059400234, None),
    "Romeo": (-3.598398, -0.14028645),
    "<unk>": (-5.083887, None),
    "</s>": (-1.0278519, None),
    "<s> ROMEO:": (-2.341751, -2.040519),
    "<s> ROMEO: </s>": (-0.0030159904, None),
}


@pytest.fixture(scope="module")
def shakespeare_split(tmp_path_factory):
  text = read_text(SHAKESPEARE)
  n = int(round(len(text) * 0.9))
  d = tmp_path_factory.mktemp("kenlm")
  (d / "train.txt").write_text(text[:n] + "\n")
  (d / "val.txt").write_text(text[n:])
  return d / "train.txt", d / "val.txt"


@pytest.fixture(scope="module")
def word_corpus(shakespeare_split):
  from experiments.ngram import load_corpus
  from lm.config import DataConfig
  return load_corpus(DataConfig(path=str(shakespeare_split[0]), val_path=str(
      shakespeare_split[1]), tokenizer="word", per_line=True))


@pytest.mark.parametrize("order", sorted(KENLM_WORD))
def test_word_perplexity_matches_kenlm(word_corpus, order):
  from experiments.ngram import fit_and_score
  _, m = fit_and_score(NGramConfig(order=order), word_corpus)
  assert (m["oov_tokens"], m["val_tokens"]) == (2360, 24627)
  ppl, ppl_excl = KENLM_WORD[order]
  assert math.isclose(m["val_ppl"], ppl, rel_tol=1e-6)
  assert math.isclose(m["val_ppl_excl_oov"], ppl_excl, rel_tol=1e-6)


def test_arpa_export_matches_kenlm_lines(word_corpus, tmp_path):
  from experiments.ngram import fit_and_score
  model, _ = fit_and_score(NGramConfig(order=3), word_corpus)
  path = tmp_path / "m.arpa"
  write_arpa(model, str(path), word_corpus.token_strings())
  entries, counts = {}, {}
  for line in path.read_text(encoding="utf-8").splitlines():
    if line.startswith("ngram "):
      n, num = line[6:].split("=")
      counts[int(n)] = int(num)
    parts = line.split("\t")
    if len(parts) >= 2:
      entries[parts[1]] = (float(parts[0]), float(parts[2]) if len(parts) == 3 else None)
  assert counts == {1: 23844, 2: 109113, 3: 154791}  # lmplz's header
  for gram, (logp, backoff) in KENLM_ARPA_3.items():
    assert entries[gram][0] == pytest.approx(logp, abs=2e-6), gram
    if backoff is None:
      assert entries[gram][1] in (None, 0.0), gram
    else:
      assert entries[gram][1] == pytest.approx(backoff, abs=2e-6), gram


@pytest.mark.parametrize("order", sorted(KENLM_CHAR))
def test_char_perplexity_matches_kenlm(shakespeare_split, order):
  from experiments.ngram import fit_and_score, load_corpus
  from lm.config import DataConfig
  corpus = load_corpus(DataConfig(path=str(shakespeare_split[0]), val_path=str(
      shakespeare_split[1]), tokenizer="char", per_line=True))
  model, m = fit_and_score(NGramConfig(order=order), corpus)
  assert model.discount_fallback == [1]  # as lmplz --discount_fallback
  assert m["val_tokens"] == 111539
  assert math.isclose(m["val_ppl"], KENLM_CHAR[order], rel_tol=1e-6)


@pytest.mark.skipif(shutil.which("lmplz") is None, reason="KenLM's lmplz is not on PATH")
def test_against_live_lmplz(tmp_path):
  lines = read_text(SHAKESPEARE).splitlines()
  (tmp_path / "train.txt").write_text("\n".join(lines[:8000]) + "\n")
  (tmp_path / "val.txt").write_text("\n".join(lines[8000:9000]) + "\n")
  with open(tmp_path / "train.txt") as f, open(tmp_path / "k.arpa", "w") as out:
    subprocess.run(["lmplz", "-o", "3", "-S", "10%", "-T", str(tmp_path)], stdin=f, stdout=out,
                   stderr=subprocess.DEVNULL, check=True)
  with open(tmp_path / "val.txt") as f:
    query = subprocess.run(["query", str(tmp_path / "k.arpa")], stdin=f, capture_output=True,
                           text=True, check=True).stdout
  kenlm_ppl = float(query.split("Perplexity including OOVs:")[1].split()[0])
  from experiments.ngram import fit_and_score, load_corpus
  from lm.config import DataConfig
  corpus = load_corpus(DataConfig(path=str(tmp_path / "train.txt"),
                                  val_path=str(tmp_path / "val.txt"), tokenizer="word",
                                  per_line=True))
  _, m = fit_and_score(NGramConfig(order=3), corpus)
  assert math.isclose(m["val_ppl"], kenlm_ppl, rel_tol=1e-5)


# ----------------------------------------------------------------- sampling, export, errors


def test_greedy_sampling_follows_the_argmax_chain_and_never_emits_bos():
  vocab = 7
  model = _fit_sentences(_skewed_sentences(4), 3, vocab)
  out = generate(model, [2], max_new_tokens=12, temperature=0.0)[0]
  context = [vocab, 2]
  for token in out:
    assert token == int(np.argmax(model.next_logprobs(context)))
    context = [vocab] if token == vocab + 1 else context + [int(token)]
  hot = generate(model, [2], max_new_tokens=300, temperature=float("inf"), seed=1)[0]
  assert vocab not in hot.tolist() and len(set(hot.tolist())) == vocab + 1  # uniform: all but <s>
  assert (generate(model, [], max_new_tokens=5, temperature=1.0, seed=3) ==
          generate(model, [], max_new_tokens=5, temperature=1.0, seed=3)).all()


def test_arpa_tokens_are_whitespace_free():
  assert arpa_token("a") == "a" and arpa_token(" ") == "<U+0020>" and arpa_token("\n") == "<U+000A>"


@pytest.mark.parametrize("kwargs, message", [
    ({"order": 0}, "model.order"),
    ({"smoothing": "witten_bell"}, "model.smoothing"),
    ({"smoothing": "add_k", "k": 0.0}, "model.k"),
])
def test_bad_configs(kwargs, message):
  with pytest.raises(ValueError, match=message):
    NGramConfig(**kwargs)


def test_user_errors(tmp_path):
  with pytest.raises(UserError, match="empty"):
    NGramLM.fit(NGramConfig(), TokenStream.from_sequences([]), 3)
  with pytest.raises(UserError, match="token ids"):
    NGramLM.fit(NGramConfig(), TokenStream.from_sequences([[0, 5]]), 3)
  add_k = NGramLM.fit(NGramConfig(smoothing="add_k"), TokenStream.from_sequences([[0, 1]]), 3)
  with pytest.raises(UserError, match="kneser_ney"):
    write_arpa(add_k, str(tmp_path / "x.arpa"), ["a", "b", "c"])


def _cli(*args):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  return subprocess.run([sys.executable, "-m", "experiments.run", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def test_done_when_command_writes_the_summary(tmp_path):
  lines = read_text(SHAKESPEARE).splitlines()
  (tmp_path / "train.txt").write_text("\n".join(lines[:3000]) + "\n")
  (tmp_path / "val.txt").write_text("\n".join(lines[3000:3500]) + "\n")
  work = tmp_path / "w"
  proc = _cli("--config=configs/ngram.py", f"--workdir={work}",
              f"--config.data.path={tmp_path / 'train.txt'}",
              f"--config.data.val_path={tmp_path / 'val.txt'}", "--config.data.tokenizer=word",
              "--config.model.order=3", "--config.data.per_line=True")
  assert proc.returncode == 0, proc.stderr
  summary = json.loads((work / "summary.json").read_text())
  # KenLM (lmplz -o 3 on these 3000 lines, query on the next 500): 312.6724182868331 and
  # 142.9224996596149 with 434 OOVs among 2699 tokens.
  assert math.isclose(summary["val_ppl"], 312.6724182868331, rel_tol=1e-6)
  assert math.isclose(summary["val_ppl_excl_oov"], 142.9224996596149, rel_tol=1e-6)
  assert summary["oov_tokens"] == 434
  assert math.isclose(summary["val_loss"], math.log(summary["val_ppl"]), rel_tol=1e-12)
  assert summary["build_time_s"] > 0
  assert (work / "model.arpa").exists() and (work / "config.json").exists()
  bad = _cli("--config=configs/ngram.py", f"--workdir={work}", "--config.model.order=0")
  assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0, bad.stderr
  assert "model.order" in bad.stderr


@pytest.mark.slow
def test_speed_targets_6gram_char():
  """Issue target: build a 6-gram on the 1M-char train split in <= 5 s, score val in <= 2 s."""
  from experiments.ngram import fit_and_score, load_corpus
  from lm.config import DataConfig
  corpus = load_corpus(DataConfig(path=SHAKESPEARE))
  _, m = fit_and_score(NGramConfig(order=6), corpus)
  assert m["build_time_s"] <= 5.0 and m["score_time_s"] <= 2.0
  assert 1.45 < m["val_loss"] < 1.6


def test_sweep_rows_table_and_plot(tmp_path):
  from experiments import ngram_sweep
  from lm.config import DataConfig
  corpus = tmp_path / "c.txt"
  corpus.write_text(read_text(SHAKESPEARE)[:50000])
  config = ngram_sweep.parse_config({"data": {"path": str(corpus)}, "orders": "1,2,3,4",
                                     "tokenizers": "char,word", "smoothings": "kneser_ney,add_k",
                                     "k": 0.5})
  assert config.orders == (1, 2, 3, 4) and isinstance(config.data, DataConfig)
  rows = ngram_sweep.sweep(config, log=lambda *_: None)
  assert len(rows) == 2 * 2 * 4
  for tokenizer in ("char", "word"):
    sub = [r for r in rows if r["tokenizer"] == tokenizer and r["smoothing"] == "add_k"]
    unseen = [r["unseen_val_ngrams"] for r in sub]
    assert unseen == sorted(unseen)  # a longer n-gram is unseen whenever its suffix is
    sizes = [r["ngrams"] for r in sub]
    assert sizes == sorted(sizes)
  table = ngram_sweep.markdown(rows)
  assert table.count("**(best)**") == 4
  ngram_sweep.plot(rows, str(tmp_path / "s.png"))
  assert (tmp_path / "s.png").stat().st_size > 10000
  with pytest.raises(UserError, match="orders"):
    ngram_sweep.parse_config({"data": {"path": str(corpus)}, "orders": "0,2"})
  with pytest.raises(UserError, match="smoothings"):
    ngram_sweep.parse_config({"data": {"path": str(corpus)}, "smoothings": "good_turing"})

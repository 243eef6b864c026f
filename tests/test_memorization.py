"""Memorisation probes (lm/eval/memorization.py): exposure and rank math against naive
references, batched candidate scoring against lm.scoring's chain rule, batched extraction
against one-at-a-time greedy decoding, and exposure on a tiny trained model: high for a
repeated canary, near zero for an unseen one."""

import math

import flax.linen as nn
import jax
import numpy as np
import pytest

from experiments import memorization as study
from lm import config as config_lib
from lm import scoring
from lm.data.tokenizers import CharTokenizer
from lm.errors import UserError
from lm.eval import memorization as mem
from lm.models.registry import build_model
from lm.tasks.causal_lm import init_params
from lm.train.trainer import train
from lm.workdir import load_trained

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 8


def test_exposure_and_rank_against_naive():
  assert mem.exposure_from_rank(1, 10_000) == pytest.approx(math.log2(10_000))
  assert mem.exposure_from_rank(10_000, 10_000) == 0.0
  assert mem.exposure_from_rank(2, 8) == pytest.approx(2.0)
  with pytest.raises(UserError, match="outside"):
    mem.exposure_from_rank(0, 10)
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 30, 200).astype(float)  # many ties
  for index in range(0, 200, 17):
    naive = 1 + sum(1 for s in scores if s < scores[index])  # strictly more likely only
    assert mem.rank_of(scores, index) == naive
  # A uniformly random rank averages close to 1/ln 2 bits of exposure (Carlini et al.).
  n = 10_000
  mean = np.mean([mem.exposure_from_rank(r, n) for r in range(1, n + 1)])
  assert mean == pytest.approx(1 / math.log(2), abs=0.01)


def test_plant_inserts_each_line_its_count_and_keeps_the_text():
  rng = np.random.default_rng(1)
  planted = mem.plant(TEXT, [("CANARY A", 5), ("CANARY B", 1), ("CANARY C", 0)], rng)
  lines = planted.split("\n")
  assert lines.count("CANARY A") == 5 and lines.count("CANARY B") == 1
  assert "CANARY C" not in planted
  assert "\n".join(line for line in lines if not line.startswith("CANARY")) == TEXT


def test_canary_render_and_luhn():
  c = mem.Canary("x", "pin ", "# # #", "407", 1)
  assert c.text == "pin 4 0 7" and c.space_size == 1000
  with pytest.raises(UserError, match="must be 3 digits"):
    mem.Canary("x", "pin ", "# # #", "40", 1)
  card = mem.luhn_complete("411111111111111")
  assert card == "4111111111111111"  # the published Visa test number


@pytest.fixture(scope="module")
def random_model():
  text = TEXT + "the pin of zorvik is 0123456789"
  tokenizer = CharTokenizer.build(text)
  cfg = config_lib.from_dict({"data": {"path": "x"}, "model": {
      "vocab_size": tokenizer.vocab_size, "num_layers": 1, "num_heads": 2, "embed_dim": 32,
      "mlp_dim": 64, "max_len": 32}})
  model = build_model("gpt", cfg.model)
  params = jax.device_get(nn.meta.unbox(init_params(model, 32, seed=3)))
  return model, params, tokenizer


def test_candidate_scores_match_chain_rule_scoring(random_model):
  model, params, tokenizer = random_model
  prefix, template = "the pin of zorvik is ", "# #"
  fast = mem.secret_logperplexities(model, params, tokenizer, prefix, template, batch_size=3)
  assert fast.shape == (100,)
  for r in (0, 7, 38, 50, 93, 99):  # one jitted window per call: a sample keeps this fast
    ids = tokenizer.encode(prefix + mem.render(template, str(r).zfill(2)))
    per_token = scoring.token_logprobs(model, params, ids)
    naive = -per_token[len(prefix):].sum()  # the template's tokens given everything before
    assert fast[r] == pytest.approx(naive, rel=1e-5, abs=1e-4)


@pytest.mark.slow  # compiles the KV-cache loop: ~10 s on the loaded 2-core machine
def test_extraction_matches_one_at_a_time_greedy(random_model):
  model, params, tokenizer = random_model
  ids = tokenizer.encode(TEXT)
  starts = mem.window_starts(len(ids), 20, 7, np.random.default_rng(0))
  result = mem.extraction(model, params, ids, starts, prefix_len=12, suffix_len=8, batch_size=4)
  exact, leading = [], []
  for s in starts:  # greedy by re-scoring the whole text each step: no KV cache, no batching
    out = list(ids[s:s + 12])
    for _ in range(8):
      out.append(int(np.argmax(scoring.next_token_logprobs(model, params, out + [0])[-1])))
    match = np.array(out[12:]) == ids[s + 12:s + 20]
    exact.append(match.all())
    leading.append(8 if match.all() else int(np.argmin(match)))
  assert result["extractable"] == pytest.approx(np.mean(exact))
  assert result["matched_prefix_tokens"] == pytest.approx(np.mean(leading))
  assert result["sequences"] == 7


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 1-layer char model trained for ~150 steps on a short text with one canary x40."""
  workdir = tmp_path_factory.mktemp("mem")
  rng = np.random.default_rng(0)
  seen = mem.Canary("seen", "the pin of zorvik is ", "# # # #", "3861", 40)
  unseen = mem.Canary("unseen", "the pin of bafoke is ", "# # # #", "5207", 0)
  corpus = mem.plant(TEXT, [(seen.text, seen.repeats)], rng) + "\n" + TEXT[:400]
  (workdir / "corpus.txt").write_text(corpus)
  alphabet = sorted(set(corpus + mem.DIGITS + unseen.text))
  CharTokenizer(alphabet).save(str(workdir / "tokenizer.json"))
  cfg = config_lib.from_dict({
      "data": {"path": str(workdir / "corpus.txt"), "seq_len": 32, "batch_size": 16,
               "eval_batch_size": 16, "val_fraction": 400 / len(corpus)},
      "model": {"num_layers": 1, "num_heads": 2, "embed_dim": 48, "mlp_dim": 128,
                "max_len": 32},
      "optim": {"lr": 3e-3, "warmup_steps": 10, "weight_decay": 0.0},
      "train": {"num_steps": 150, "log_every": 50, "eval_every": 150,
                "checkpoint_every": 150, "steps_per_call": 50},
      "sample": {"max_new_tokens": 1}})
  train(cfg, str(workdir))
  return load_trained(str(workdir)), seen, unseen


@pytest.mark.slow  # trains a model: ~25 s of CPU, minutes on a loaded machine
def test_exposure_high_for_repeated_canary_near_zero_for_unseen(trained):
  t, seen, unseen = trained
  high = mem.exposure(t.model, t.params, t.tokenizer, seen)
  low = mem.exposure(t.model, t.params, t.tokenizer, unseen)
  assert high["rank"] == 1 and high["exposure"] == pytest.approx(math.log2(10_000))
  assert low["exposure"] < 4.0  # a random rank: 1.44 bits on average, > 4 with p = 1/16
  assert mem.greedy_extracts(t.model, t.params, t.tokenizer, seen.prefix, seen.rendered)[0]


def test_study_config_errors():
  values = _study_values()
  assert study.parse_config(values).sizes[0][0] == "a"
  with pytest.raises(UserError, match="unknown config key 'extra'"):
    study.parse_config({**values, "extra": 1})
  with pytest.raises(UserError, match="scrub_size"):
    study.parse_config({**values, "study": {**values["study"], "scrub_size": "b"}})
  with pytest.raises(UserError, match="unknown config key model.depth"):
    study.parse_config({**values, "sizes": {"a": {"depth": 3}}})
  with pytest.raises(UserError, match="repeats"):
    study.parse_config({**values, "study": {**values["study"], "repeats": [-1]}})


def _study_values():
  return {"kind": "memorization", "study": {"corpus": "x", "scrub_size": "a"},
          "lm": {"data": {"path": "x"}, "model": {"max_len": 64}}, "sizes": {"a": {}}}

"""`--mode=sample/score` on every kind of workdir (lm/trained.py, experiments/sample.py).

Workdirs are written as training writes them (config.json, tokenizer, files, one
checkpoint) but hold the initial params: the loaders' layouts are what matter, and
skipping training skips its compile time. References are independent: a naive
full-forward argmax loop for decoders, a direct teacher-forced forward for the
encoder-decoder's score, lm.decoding's greedy search, a one-token-at-a-time masked
forward for BERT's PLL and hand-counted add-k probabilities for the n-gram.
"""

import collections
import functools
import json
import math
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import (
  bert_shakespeare,
  deepseek_mini,
  distill_shakespeare,
  dpo_addition,
  sft_addition,
  t5_shakespeare,
)
from configs import ngram as ngram_config
from experiments.sample import sample, score
from lm import config as config_lib
from lm.data import addition
from lm.data.seq2seq_pairs import EOS_ID
from lm.decoding import beam_search, greedy_decode
from lm.errors import UserError
from lm.models.encdec import shift_right
from lm.models.registry import build_model
from lm.tasks import build_task
from lm.train.checkpoint import Checkpointer
from lm.train.optimizer import make_optimizer
from lm.train.state import TrainState


def _write_run(values: dict, workdir) -> dict:
  """The workdir a run of `values` writes at step 1, holding random params (no init or
  train-step compilation: the loaders only care about the checkpoint's layout)."""
  config, task = build_task(config_lib.from_dict(values), str(workdir))
  model = build_model(config.family, config.model)
  shapes = jax.eval_shape(lambda: nn.meta.unbox(task.init_params(model, 0)))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(s.dtype), shapes)
  tx = make_optimizer(config.optim, config.train.num_steps, config.trainable)
  opt_state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(tx.init, params))
  checkpointer = Checkpointer(str(workdir))
  checkpointer.save(1, TrainState(step=np.int32(1), params=params, opt_state=opt_state),
                    task.train_iter.get_state())
  checkpointer.close()
  config_lib.save_json(config, str(workdir / "config.json"))
  task.save_files(str(workdir))
  return {"dir": str(workdir), "config": config, "model": model, "params": params}


def _smoke(module, arg: str = "smoke", **model) -> dict:
  values = module.get_config(arg).to_dict()
  values["model"].update(model)
  return values


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("sample_modes")
  out = {}
  mtp = _smoke(deepseek_mini, num_layers=1)
  # moe_lm on the same MoE model (MTP depth 0): one generation compile serves both.
  moe = {**mtp, "task": "moe_lm", "task_config": {**mtp["task_config"], "depth": 0}}
  for name, values in [
      ("mtp", mtp), ("moe", moe), ("sft", _smoke(sft_addition, num_layers=1)),
      ("t5", _smoke(t5_shakespeare, num_encoder_layers=1, num_decoder_layers=1)),
      ("bert", _smoke(bert_shakespeare, num_layers=1))]:
    (root / name).mkdir()
    out[name] = _write_run(values, root / name)
  dpo = _smoke(dpo_addition, f"smoke,init_from={out['sft']['dir']}")
  (root / "dpo").mkdir()
  out["dpo"] = _write_run(dpo, root / "dpo")
  # GRPO keeps the SFT run's TrainState layout and writes the model's config as policy.json.
  grpo = root / "grpo"
  shutil.copytree(out["sft"]["dir"], grpo, ignore=shutil.ignore_patterns("token_prior.json"))
  shutil.move(grpo / "config.json", grpo / "policy.json")
  (grpo / "config.json").write_text(json.dumps({"kind": "grpo", "init_from": out["sft"]["dir"]}))
  out["grpo"] = {**out["sft"], "dir": str(grpo)}
  # A causal_lm teacher and a distilled student, again on the MoE model (no new compile).
  causal = {**{k: v for k, v in mtp.items() if k != "task_config"}, "task": "causal_lm"}
  (root / "causal").mkdir()
  out["causal"] = _write_run(causal, root / "causal")
  distill = distill_shakespeare.get_config(f"smoke,teacher={out['causal']['dir']}").to_dict()
  (root / "distill").mkdir()
  out["distill"] = _write_run({**distill, "model": mtp["model"]}, root / "distill")
  return out


@functools.partial(jax.jit, static_argnums=0)
def _log_softmax_forward(model, params, *inputs):
  """Every position's log-probabilities from one plain forward pass (no cache)."""
  out = model.apply({"params": params}, *inputs)
  return jax.nn.log_softmax((out[0] if isinstance(out, tuple) else out).astype(jnp.float32))


def _naive_greedy(model, params, ids, num: int) -> list[int]:
  """argmax continuation: per token, a full causal forward over the (padded) sequence."""
  seq_1T = np.zeros((1, model.config.max_len), np.int32)
  seq_1T[0, :len(ids)] = ids
  for i in range(len(ids), len(ids) + num):
    seq_1T[0, i] = int(np.argmax(_log_softmax_forward(model, params, seq_1T)[0, i - 1]))
  return seq_1T[0, :len(ids) + num].tolist()


def _tokenizer(run):
  from lm.data.tokenizers import load_tokenizer
  return load_tokenizer(f"{run['dir']}/tokenizer.json")


# --------------------------------------------------------------------------- decoders


@pytest.mark.parametrize("name", ["mtp", "moe", "causal", "distill"])
def test_decoder_greedy_sample_is_the_naive_argmax(runs, name):
  run = runs[name]
  main_head = {k: v for k, v in run["params"].items() if not k.startswith("mtp_")}
  if name == "mtp":
    assert len(main_head) < len(run["params"])  # the checkpoint holds MTP modules
  tok = _tokenizer(run)
  [text] = sample(run["dir"], prompt="ROMEO:", temperature=0.0, max_new_tokens=6)
  want = _naive_greedy(run["model"], main_head, tok.encode("ROMEO:"), 6)
  assert text == "ROMEO:" + tok.decode(want[len("ROMEO:"):])


def test_moe_score_is_the_chain_rule(runs):
  run = runs["moe"]
  tok = _tokenizer(run)
  text = "To be, or"
  got = score(run["dir"], text)
  ids = tok.encode(text)
  logp_TV = np.asarray(_log_softmax_forward(run["model"], run["params"], jnp.asarray([ids]))[0])
  want = [logp_TV[i, ids[i + 1]] for i in range(len(ids) - 1)]
  prior = json.load(open(f"{run['dir']}/token_prior.json"))
  np.testing.assert_allclose(got["token_log_probs"], [prior[ids[0]]] + want, rtol=1e-5, atol=1e-5)
  # With a prompt: the same numbers for the tokens after it, no prior.
  cond = score(run["dir"], "be, or", prompt="To ")
  np.testing.assert_allclose(cond["token_log_probs"], want[2:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["sft", "dpo", "grpo"])
def test_addition_prompt_prints_the_greedy_answer(runs, name, capsys):
  run = runs[name]
  tok = addition.make_tokenizer()
  [text] = sample(run["dir"], prompt="12+34=", max_new_tokens=8)  # greedy by default
  prompt = addition.prompt_text(12, 34)
  ids = _naive_greedy(run["model"], run["params"], tok.encode(prompt), 8)
  answer = tok.decode(ids[len(prompt):]).partition(addition.EOS)[0]  # stops at end of turn
  assert text == prompt + answer
  assert capsys.readouterr().out == text + "\n"


def test_grpo_score_uses_a_uniform_first_token(runs, capsys):
  got = score(runs["grpo"]["dir"], "Q: 1")
  assert got["token_log_probs"][0] == pytest.approx(-math.log(addition.make_tokenizer().vocab_size))
  assert "uniform prior" in capsys.readouterr().out


# --------------------------------------------------------------------------- encoder-decoder


SOURCE = "Before we <extra_id_0> any further"


def _special_tokenizer(run):
  from lm.data.seq2seq_pairs import load_special_tokenizer
  return load_special_tokenizer(f"{run['dir']}/tokenizer.json")


def _source_ids(run) -> np.ndarray:
  """SOURCE as the model reads it: the sentinel by id, then EOS."""
  tok = _special_tokenizer(run)
  return np.concatenate([tok.encode("Before we "), [tok.sentinel_id(0)],
                         tok.encode(" any further"), [EOS_ID]]).astype(np.int32)


def test_encdec_greedy_sampling_and_beam(runs):
  run = runs["t5"]
  model, params, src_1S = run["model"], run["params"], _source_ids(run)[None]
  greedy = greedy_decode(model, params, src_1S, max_len=12, eos_id=EOS_ID)[0]
  want = _decode(run, greedy)
  assert sample(run["dir"], prompt=SOURCE, max_new_tokens=12) == [want]  # T = 0 by default
  # top_k = 1 leaves only the argmax: the sampler at T = 1 must retrace the greedy path.
  assert sample(run["dir"], prompt=SOURCE, temperature=1.0, top_k=1, max_new_tokens=12,
                num_samples=2) == [want, want]
  beams, _ = beam_search(model, params, src_1S, beam_size=2, max_len=12, eos_id=EOS_ID)
  assert sample(run["dir"], prompt=SOURCE, beam_size=2, max_new_tokens=12,
                num_samples=2) == [_decode(run, b) for b in beams[0]]


def test_encdec_score_is_teacher_forced_chain_rule(runs):
  run = runs["t5"]
  got = score(run["dir"], "<extra_id_0>proceed", prompt=SOURCE)
  tok = _special_tokenizer(run)
  target_1T = np.concatenate([[tok.sentinel_id(0)], tok.encode("proceed"), [EOS_ID]])[None]
  logp_TV = np.asarray(_log_softmax_forward(run["model"], run["params"], _source_ids(run)[None],
                                            shift_right(jnp.asarray(target_1T), 0))[0])
  want = logp_TV[np.arange(target_1T.shape[1]), target_1T[0]]
  np.testing.assert_allclose(got["token_log_probs"], want, rtol=1e-5, atol=1e-5)
  assert got["log_prob"] == pytest.approx(want.sum(), rel=1e-5)
  with pytest.raises(UserError, match="--prompt=SOURCE"):
    score(run["dir"], "proceed")


def _decode(run, row):
  from lm.decoding import strip_after_eos
  return _special_tokenizer(run).decode(strip_after_eos(row, EOS_ID))


# --------------------------------------------------------------------------- BERT


def test_bert_score_is_the_pll_and_it_does_not_sample(runs, capsys):
  run = runs["bert"]
  tok = _tokenizer(run)
  text = "To be"
  got = score(run["dir"], text)
  assert "pseudo-log-likelihood" in capsys.readouterr().out
  ids = [int(i) for i in tok.encode(text)]
  V = tok.vocab_size
  cls, sep, mask = V + 1, V + 2, V + 3  # [PAD] [CLS] [SEP] [MASK] after the base vocabulary
  want = []
  for i in range(len(ids)):
    row = [cls] + ids + [sep]
    row[i + 1] = mask
    logp_1TV = _log_softmax_forward(run["model"], run["params"], jnp.asarray([row]), None,
                                    jnp.ones((1, len(row)), bool))
    want.append(float(logp_1TV[0, i + 1, ids[i]]))
  np.testing.assert_allclose(got["token_log_probs"], want, rtol=1e-4, atol=1e-4)
  with pytest.raises(UserError, match="encoder-only models do not generate"):
    sample(run["dir"], prompt="To")


# --------------------------------------------------------------------------- n-gram


def test_ngram_add_k_score_and_greedy_sample_by_hand(tmp_path, capsys):
  from experiments.ngram import run as ngram_run
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("abcabdabcab" * 3 + "ca")
  values = ngram_config.get_config("smoke,smoothing=add_k,k=0.5").to_dict()
  values["data"].update(path=str(corpus), val_fraction=0.1)
  values["sample"].update(prompt="ab", max_new_tokens=3)
  workdir = tmp_path / "ngram"
  ngram_run(config_lib.from_dict(values), str(workdir))
  capsys.readouterr()
  text_all = corpus.read_text()
  train = text_all[:len(text_all) - round(len(text_all) * 0.1)]
  chars = sorted(set(corpus.read_text()))
  counts = collections.Counter(train[i:i + n] for n in (1, 2, 3) for i in range(len(train) - n + 1))

  def p(context, w):  # add-k with the longest context available (up to 2 characters)
    context = context[-2:]
    total = sum(counts[context + c] for c in chars) if context else len(train)
    return (counts[context + w] + 0.5) / (total + 0.5 * len(chars))

  text = "abcda"
  got = score(str(workdir), text)
  want = [math.log(p(text[:i], text[i])) for i in range(len(text))]
  np.testing.assert_allclose(got["token_log_probs"], want, rtol=1e-12)
  [greedy] = sample(str(workdir), prompt="ab", temperature=0.0, max_new_tokens=4)
  want_text = "ab"
  for _ in range(4):
    want_text += max(chars, key=lambda c: p(want_text, c))
  assert greedy == want_text


def test_ngram_reloads_exactly_in_sentence_mode(tmp_path):
  from experiments.ngram import load_corpus
  from lm.models.ngram import NGramLM, TokenStream
  from lm.models.ngram_io import load_ngram, save_ngram
  corpus_file = tmp_path / "lines.txt"
  corpus_file.write_text("the cat sat\nthe dog sat down\na cat ran\nthe cat ran down\n" * 3)
  values = ngram_config.get_config("tokenizer=word,per_line=True,order=3").to_dict()
  values["data"].update(path=str(corpus_file))
  corpus = load_corpus(config_lib.from_dict(values).data)
  model = NGramLM.fit(config_lib.from_dict(values).model, corpus.train, corpus.vocab_size,
                      corpus.bos, corpus.eos)
  save_ngram(model, str(tmp_path / "m.npz"))
  loaded = load_ngram(str(tmp_path / "m.npz"))
  stream = TokenStream.from_sequences([[0, 1, 2], [3, 1]], corpus.bos, corpus.eos)
  np.testing.assert_array_equal(loaded.logprobs(stream), model.logprobs(stream))
  np.testing.assert_array_equal(loaded.next_logprobs([corpus.bos, 0]),
                                model.next_logprobs([corpus.bos, 0]))


# --------------------------------------------------------------------------- everything else


def test_other_tasks_get_one_line_errors(tmp_path, runs):
  from configs import clip_shapes
  config = config_lib.from_dict(clip_shapes.get_config("smoke").to_dict())
  config_lib.save_json(config, str(tmp_path / "config.json"))
  with pytest.raises(UserError, match=r"holds a 'clip' run; --mode=sample/score support .*sft"):
    sample(str(tmp_path))
  with pytest.raises(UserError, match="beam search is for encoder-decoder"):
    sample(runs["moe"]["dir"], prompt="A", beam_size=2)


def test_policy_reads_only_the_params_whatever_optimizer_state_was_saved(runs, tmp_path):
  """A post-training start (DPO, GRPO, distillation) needs the SFT model, not its optimizer:
  a checkpoint whose optimizer state has another layout (other optimizer options, older
  code) still loads, and a checkpoint of another model shape is a one-line error."""
  from lm.post_training.policy import load_policy
  sft = runs["sft"]

  def write(workdir, params):
    workdir.mkdir()
    checkpointer = Checkpointer(str(workdir))
    checkpointer.save(1, TrainState(step=np.int32(1), params=params,
                                    opt_state={"other_optimizer": np.zeros(3, np.float32)}), {})
    checkpointer.close()
    for name in ("config.json", "tokenizer.json"):
      shutil.copy(f"{sft['dir']}/{name}", workdir / name)

  write(tmp_path / "ok", sft["params"])
  policy = load_policy(str(tmp_path / "ok"))
  for a, b in zip(jax.tree.leaves(policy.params), jax.tree.leaves(sft["params"])):
    np.testing.assert_array_equal(a, b)
  wrong = jax.tree.map(lambda x: x, sft["params"])
  wrong["ln_final"] = {"scale": np.ones(7, np.float32)}
  write(tmp_path / "wrong", wrong)
  with pytest.raises(UserError, match="does not match the model of its config"):
    load_policy(str(tmp_path / "wrong"))

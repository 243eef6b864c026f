"""In-context learning: string tasks, prompt format, scorers, the harness, the ICL task."""

import dataclasses
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.errors import UserError
from lm.icl import harness, string_tasks, suites
from lm.icl.prompts import Example, build_prompt
from lm.icl.scoring import continuation_logprobs, greedy_continuations
from lm.models.registry import build_model, model_config_class
from lm.scoring import token_logprobs
from lm.tasks import icl_strings

# --- string tasks --------------------------------------------------------------------------

@pytest.mark.parametrize("name,text,expected", [
    ("copy", "hello", "hello"),
    ("reverse", "hello", "olleh"),
    ("uppercase", "hello", "HELLO"),
    ("shift_1", "abz", "bca"),
    ("shift_3", "xyz", "abc"),
    ("shift_25", "abc", "zab"),
    ("every_other", "abcdefg", "aceg"),
    ("sort", "banana", "aaabnn"),
    ("repeat", "abc", "abcabc"),
    ("swap_halves", "abcde", "cdeab"),
    ("swap_halves", "abcd", "cdab"),
    ("double_letters", "abc", "aabbcc"),
    ("rotate_left", "abcd", "bcda"),
    ("reverse+uppercase", "abc", "CBA"),
    ("every_other+reverse", "abcde", "eca"),
    ("uppercase+shift_2", "xyz", "ZAB"),
])
def test_string_tasks_against_hand_written_outputs(name, text, expected):
  assert string_tasks.get_task(name)(text) == expected


def test_descriptions_and_bad_names():
  assert string_tasks.get_task("shift_4").description == "shift each letter 4 forward"
  assert (string_tasks.get_task("reverse+uppercase").description ==
          "reverse the letters, then write the letters in uppercase")
  for bad in ("shift_0", "shift_26", "shift_x", "mirror", "reverse+nope"):
    with pytest.raises(UserError):
      string_tasks.get_task(bad)
  with pytest.raises(UserError, match="duplicate"):
    string_tasks.parse_task_list("copy,copy")
  for task in (string_tasks.get_task(n) for n in list(string_tasks.BASE_TASKS) + ["shift_7"]):
    assert set(task.description) <= set(string_tasks.ALPHABET)


def test_input_pools_are_disjoint_and_deterministic():
  rng = np.random.default_rng(0)
  train = string_tasks.sample_inputs(rng, 400, 3, 6, held_out=False)
  held = string_tasks.sample_inputs(np.random.default_rng(1), 100, 3, 6, held_out=True)
  assert all(3 <= len(s) <= 6 and s.isalpha() and s.islower() for s in train + held)
  import zlib
  assert not any(zlib.crc32(s.encode()) % 16 == 0 for s in train)
  assert all(zlib.crc32(s.encode()) % 16 == 0 for s in held)
  again = string_tasks.sample_inputs(np.random.default_rng(0), 400, 3, 6, held_out=False)
  assert again == train
  assert len(set(train)) > 350  # random, not a repeated handful


# --- prompts -------------------------------------------------------------------------------

def test_prompt_format_zero_one_k_shot():
  demos = [Example("abc -> ", "cba"), Example("hello -> ", "olleh"), Example("xy -> ", "yx")]
  query = Example("qwe -> ", "ewq")
  assert build_prompt([], query) == "qwe -> "
  assert build_prompt(demos[:1], query) == "abc -> cba\nqwe -> "
  assert build_prompt(demos, query) == "abc -> cba\nhello -> olleh\nxy -> yx\nqwe -> "
  assert (build_prompt([], query, "reverse the letters") ==
          "task: reverse the letters\nqwe -> ")
  ex = suites.string_example(string_tasks.get_task("reverse"), "abc", " -> ",
                             [string_tasks.get_task("copy"), string_tasks.get_task("sort")])
  assert ex == Example("abc -> ", "cba", ("abc", "cba"))


# --- scorers -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_gpt():
  cfg = model_config_class("gpt")(vocab_size=11, num_layers=2, num_heads=2, embed_dim=16,
                                  mlp_dim=32, max_len=32)
  model = build_model("gpt", cfg)
  init = jax.jit(lambda: nn.meta.unbox(model.init(jax.random.key(0),
                                                  jnp.zeros((1, 32), jnp.int32))["params"]))
  params = init()
  # Sharper than the init's near-uniform logits, so argmax decisions are not ties.
  params = jax.tree.map(lambda p: p * 4.0, params)
  return model, params


def _last_logprobs(model, params):
  """log p(. | prefix) from one forward pass per prefix (the prefix padded on the right to
  max_len and read at its last token; jitted once)."""
  apply = jax.jit(lambda tokens: model.apply({"params": params}, tokens)[0])

  def fn(prefix):
    padded = np.zeros((1, model.config.max_len), np.int32)
    padded[0, :len(prefix)] = prefix
    return np.asarray(jax.nn.log_softmax(apply(padded)[0, len(prefix) - 1]))

  return fn


def test_option_logprobs_match_a_naive_per_token_loop(tiny_gpt):
  model, params = tiny_gpt
  rng = np.random.default_rng(0)
  prompts = [rng.integers(0, 11, n).astype(np.int32) for n in (1, 5, 9, 20, 3)]
  conts = [rng.integers(0, 11, n).astype(np.int32) for n in (3, 1, 7, 12, 2)]
  got = continuation_logprobs(model, params, prompts, conts, batch_size=4)
  last = _last_logprobs(model, params)
  for p, c, value in zip(prompts, conts, got):
    # log p(c | prompt) = sum_j log p(c_j | prompt, c_<j), one prefix at a time
    naive = sum(float(last(np.concatenate([p, c[:j]]))[c[j]]) for j in range(len(c)))
    assert value == pytest.approx(naive, abs=1e-4)
    chain = token_logprobs(model, params, np.concatenate([p, c]))[len(p):].sum()  # lm/scoring
    assert value == pytest.approx(chain, abs=1e-4)
  with pytest.raises(UserError):
    continuation_logprobs(model, params, [np.zeros(30, np.int32)], [np.zeros(3, np.int32)])


def test_batched_greedy_matches_a_step_by_step_argmax_loop(tiny_gpt):
  model, params = tiny_gpt
  rng = np.random.default_rng(1)
  prompts = [rng.integers(0, 11, n).astype(np.int32) for n in (4, 4, 7, 2, 4, 11)]
  got = greedy_continuations(model, params, prompts, max_new_tokens=5, small_batch=2,
                             batch_size=2)  # one compile; the group of three is split
  last = _last_logprobs(model, params)
  for p, out in zip(prompts, got):
    seq = list(p)
    for _ in range(5):
      seq.append(int(np.argmax(last(np.asarray(seq)))))
    np.testing.assert_array_equal(out, seq[len(p):])


# --- the harness, with a model whose answers are known -------------------------------------

@dataclasses.dataclass(frozen=True)
class BigramConfig:
  vocab_size: int
  max_len: int


class Bigram(nn.Module):
  """A deterministic bigram LM: the next token is `table[current token]` with certainty."""
  config: BigramConfig
  table: tuple

  def init_cache(self, batch, max_len):
    return jnp.zeros((), jnp.int32)  # nothing to remember

  @nn.compact
  def __call__(self, tokens_BT, caches=None, cache_index=None, deterministic=True, **_):
    next_BT = jnp.asarray(self.table)[tokens_BT]
    logits_BTV = jnp.where(jax.nn.one_hot(next_BT, self.config.vocab_size) > 0, 0.0, -30.0)
    return logits_BTV, caches


def test_harness_accuracy_with_a_known_model():
  tok = icl_strings.make_tokenizer()
  ids = {c: int(tok.encode(c)[0]) for c in string_tasks.ALPHABET}
  table = list(range(tok.vocab_size))  # every other character predicts itself ...
  table[ids[" "]] = ids["x"]  # ... but after the separator's space comes "x",
  table[ids["x"]] = ids["\n"]  # then the end of the line: the model always answers "x"
  model = Bigram(BigramConfig(tok.vocab_size, 64), tuple(table))

  def const_task(name, answers, group):
    def sample(rng, n):
      return [Example(f"{'ab' * int(rng.integers(1, 4))} -> ", answers[i % len(answers)],
                      ("x", "y", "zz")) for i in range(n)]
    return suites.ICLTask(name, group, "say x", sample)

  tasks = [const_task("always_x", ["x"], "train"), const_task("never_x", ["y"], "train"),
           const_task("half_x", ["x", "zz"], "heldout")]
  for method in harness.METHODS:
    res = harness.evaluate(model, {}, tok, tasks, shots=(0, 1, 3), num_eval=8, method=method)
    acc = {name: t["accuracy"] for name, t in res["tasks"].items()}
    assert acc["always_x"] == {"k=0": 1.0, "k=1": 1.0, "k=3": 1.0, "description": 1.0}
    assert acc["never_x"] == {"k=0": 0.0, "k=1": 0.0, "k=3": 0.0, "description": 0.0}
    assert acc["half_x"]["k=3"] == 0.5
    assert res["means"]["train"]["k=1"] == 0.5
  metrics = harness.flat_metrics(res)
  assert metrics["icl_train_k0"] == 0.5 and metrics["icl_heldout_description"] == 0.5
  table_md = harness.format_table(res)
  assert "| half_x | heldout | 0.50 | 0.50 | 0.50 | 0.50 |" in table_md
  # An 8-shot prompt does not fit max_len=64: reported n/a, not truncated.
  res = harness.evaluate(model, {}, tok, tasks[:1], shots=(0, 8), num_eval=4)
  assert res["tasks"]["always_x"]["accuracy"]["k=8"] is None
  assert "max_len" in res["tasks"]["always_x"]["n/a"]["k=8"]


# --- the ICL pretraining task --------------------------------------------------------------

def _tc(**kw):
  return icl_strings.ICLStringsConfig(**kw)


def test_rows_hold_one_task_and_weights_mark_answers():
  tc = _tc(description_prob=0.5)
  tok = icl_strings.make_tokenizer()
  tasks = string_tasks.parse_task_list(tc.train_tasks)
  batch = icl_strings.make_batch(np.random.default_rng(0), tasks, tok, tc, 96, 16, False)
  for key in ("inputs", "targets", "weights", "example"):
    assert batch[key].shape == (16, 96)
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  for row in range(16):
    text = tok.decode(np.concatenate([batch["inputs"][row, :1], batch["targets"][row]]))
    lines = text.split("\n")[:-1]  # the last line may be cut
    if lines[0].startswith("task: "):
      lines = lines[1:]
    pairs = [line.split(" -> ") for line in lines]
    assert all(not string_tasks.is_held_out(x) for x, _ in pairs)
    fits = [t.name for t in tasks if all(t(x) == y for x, y in pairs)]
    assert fits, f"row {row} mixes tasks: {pairs}"
    # Weight 1 exactly on answer characters and the newline that ends each answer.
    full = tok.decode(np.concatenate([batch["inputs"][row, :1], batch["targets"][row]]))
    in_answer, expected = False, []
    for i in range(1, len(full)):
      in_answer = in_answer or full[:i].endswith(" -> ")
      expected.append(in_answer)
      in_answer = in_answer and full[i] != "\n"
    np.testing.assert_array_equal(batch["weights"][row] > 0, expected)
    np.testing.assert_array_equal(batch["example"][row] > 0, expected)
  assert (batch["example"].max(axis=1) >= 4).all()  # rows hold several examples


def test_loss_on_all_weighs_every_token():
  tc = _tc(loss_on="all")
  tok = icl_strings.make_tokenizer()
  batch = icl_strings.make_batch(np.random.default_rng(0),
                                 string_tasks.parse_task_list("copy"), tok, tc, 64, 2, False)
  assert (batch["weights"] == 1).all()


def test_iterator_state_round_trip_and_determinism():
  tc = _tc()
  tok = icl_strings.make_tokenizer()
  tasks = string_tasks.parse_task_list(tc.train_tasks)
  make = lambda seed: iter(icl_strings.train_dataset(tasks, tok, tc, 48, 4, seed)  # noqa: E731
                           .to_iter_dataset())
  it = make(3)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(2)]
  resumed = make(3)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  first, other = next(make(3)), next(make(4))
  np.testing.assert_array_equal(first["inputs"], next(make(3))["inputs"])
  assert not np.array_equal(first["inputs"], other["inputs"])


def test_loss_metrics_against_numpy():
  tc = _tc()
  tok = icl_strings.make_tokenizer()
  cfg = model_config_class("gpt")(vocab_size=tok.vocab_size, num_layers=1, num_heads=2,
                                  embed_dim=16, mlp_dim=32, max_len=96)
  model = build_model("gpt", cfg)
  batch = icl_strings.make_batch(np.random.default_rng(0), string_tasks.parse_task_list(
      tc.train_tasks), tok, tc, 96, 2, True)

  @jax.jit
  def run(batch):
    params = nn.meta.unbox(model.init(jax.random.key(0), batch["inputs"])["params"])
    loss, m = icl_strings.icl_loss(model)(params, batch, jax.random.key(0), deterministic=True)
    return loss, m, jax.nn.log_softmax(model.apply({"params": params}, batch["inputs"])[0])

  loss, m, logp = run(batch)
  nll = -np.take_along_axis(np.asarray(logp), batch["targets"][..., None], -1)[..., 0]
  w = batch["weights"]
  assert float(loss) == pytest.approx((nll * w).sum() / w.sum(), rel=1e-5)
  first, later = batch["example"] == 1, batch["example"] >= 5
  assert later.any()
  assert float(m["first_loss"]) == pytest.approx(nll[first].mean(), rel=1e-5)
  assert float(m["later_loss"]) == pytest.approx(nll[later].mean(), rel=1e-5)


def test_task_config_errors():
  with pytest.raises(UserError, match="also training"):
    _tc(train_tasks="copy,reverse", heldout_tasks="reverse")
  with pytest.raises(UserError):
    _tc(train_tasks="copy,mirror")
  with pytest.raises(UserError, match="separator"):
    _tc(separator="=>\n")
  with pytest.raises(UserError, match="loss_on"):
    _tc(loss_on="inputs")
  with pytest.raises(UserError, match="shots"):
    _tc(eval_shots="0,one")


@pytest.mark.slow
def test_smoke_run_through_the_runner_then_the_icl_experiment(tmp_path):
  workdir = str(tmp_path / "run")
  subprocess.run([sys.executable, "-m", "experiments.run",
                  "--config=configs/icl_strings.py:smoke", f"--workdir={workdir}"],
                 check=True, capture_output=True)
  import json
  summary = json.load(open(f"{workdir}/summary.json"))
  for key in ("icl_train_k0", "icl_train_k2", "icl_heldout_description", "val_first_loss"):
    assert key in summary
  subprocess.run([sys.executable, "-m", "experiments.icl", f"--workdir={workdir}",
                  "--shots=0,1", "--num_eval=2"], check=True, capture_output=True)
  table = open(f"{workdir}/icl_table.md").read()
  assert "| reverse | train |" in table
  results = json.load(open(f"{workdir}/icl.json"))
  assert set(results["generate"]["tasks"]) >= {"reverse", "shift_2"}

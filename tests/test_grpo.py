"""GRPO: completion masks, rule-based rewards, the update (equal rewards leave the policy
unchanged), and an end-to-end CLI run from an SFT workdir."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import sft_addition
from lm.config import from_dict
from lm.data import addition
from lm.errors import UserError
from lm.models.gpt import GPT, GPTConfig
from lm.post_training import grpo
from lm.post_training.policy import load_policy
from lm.train.optimizer import make_optimizer
from lm.train.state import create_train_state
from lm.train.trainer import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_completion_mask_stops_after_first_eos():
  eos = 9
  completions = np.array([[1, 2, 9, 3, 9], [1, 1, 1, 1, 1], [9, 4, 4, 4, 4]])
  np.testing.assert_array_equal(grpo.completion_mask(completions, eos),
                                [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])


def test_rule_based_rewards():
  tok = addition.make_tokenizer()
  texts = ["<answer>1053</answer>\n", "<answer>1053</answer>ss", "<answer>1052</answer>\n",
           "1053\n<answer>"]
  width = max(len(t) for t in texts)
  completions = np.stack([np.pad(tok.encode(t), (0, width - len(t)),
                                 constant_values=tok.encode("0")[0]) for t in texts])
  pairs = np.array([[556, 497]] * 4)
  reward, correct, formatted, length = grpo.rewards_for(tok, pairs, completions, 1.0, 0.1)
  np.testing.assert_array_equal(correct, [1, 1, 0, 0])
  np.testing.assert_array_equal(formatted, [1, 0, 1, 0])
  np.testing.assert_allclose(reward, [1.1, 1.0, 0.1, 0.0])
  # Length counts tokens up to and including EOS; without EOS, all of them.
  np.testing.assert_array_equal(length, [22, width, 22, 5])


def test_parse_config_rejects_unknown_keys():
  with pytest.raises(UserError, match="unknown config key 'bta'"):
    grpo.parse_config({"init_from": "/x", "bta": 0.1})
  with pytest.raises(UserError, match="group_size"):
    grpo.parse_config({"init_from": "/x", "group_size": 1})
  assert grpo.parse_config({"init_from": "/x", "beta": 0}).beta == 0.0


def test_missing_or_wrong_warm_start_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match="needs init_from"):
    grpo.train(grpo.parse_config({}), str(tmp_path / "a"))
  with pytest.raises(UserError, match="not a trained workdir"):
    grpo.train(grpo.parse_config({"init_from": str(tmp_path / "nothing")}), str(tmp_path / "b"))


def _tiny():
  tok = addition.make_tokenizer()
  model = GPT(GPTConfig(vocab_size=tok.vocab_size, num_layers=1, num_heads=2, embed_dim=16,
                        mlp_dim=32, max_len=64))
  params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  return tok, model, params


def test_update_with_equal_rewards_leaves_the_policy_unchanged():
  tok, model, params = _tiny()
  c = grpo.parse_config({"init_from": "/x", "beta": 0.0, "num_iterations": 1})
  policy_config = grpo._policy_config(from_dict(sft_addition.get_config("smoke").to_dict()), c)
  tx = make_optimizer(policy_config.optim, 10)
  prompt_len = 28
  update, logprobs = grpo.make_update(model, tx, c, prompt_len)
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, tok.vocab_size, size=(8, prompt_len + 10)), jnp.int32)
  mask = jnp.ones((8, 10))
  old = logprobs(params, tokens)
  adv = grpo.losses.group_advantages(jnp.full((2, 4), 0.5)).reshape(-1)
  state = create_train_state(params, tx)
  new_state, metrics = update(state, tokens, old, old, adv, mask)
  assert float(metrics["grad_norm"]) == 0.0
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(new_state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Unequal rewards do move it.
  adv = grpo.losses.group_advantages(jnp.asarray([[1.0, 0, 0, 0], [0, 1, 1, 0]])).reshape(-1)
  moved, metrics = update(create_train_state(params, tx), tokens, old, old, adv, mask)
  assert float(metrics["grad_norm"]) > 0


@pytest.fixture(scope="module")
def sft_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("sft"))
  c = sft_addition.get_config("smoke")
  c.train.num_steps = 10
  c.task_config.num_eval = 8
  train(from_dict(c.to_dict()), workdir)
  return workdir


def test_grpo_cli_end_to_end(sft_workdir, tmp_path):
  workdir = tmp_path / "grpo"
  proc = subprocess.run([sys.executable, "-m", "experiments.run",
                         "--config=configs/grpo_addition.py:smoke",
                         f"--config.init_from={sft_workdir}", f"--workdir={workdir}"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
  assert "heldout_accuracy" in rows[0]
  for r in rows[1:]:
    for key in ("reward", "accuracy", "format", "completion_length", "kl", "clip_fraction",
                "loss", "grad_norm"):
      assert np.isfinite(r[key]), key
    assert 0 < r["completion_length"] <= grpo.response_budget(3)
  assert rows[1]["kl"] == pytest.approx(0.0, abs=1e-6)  # the first rollouts: policy == ref
  summary = json.load(open(workdir / "summary.json"))
  assert summary["steps"] == 4
  assert summary["heldout_accuracy_before"] == rows[0]["heldout_accuracy"]
  # The result loads like any decoder workdir.
  policy = load_policy(str(workdir))
  assert policy.step == 4 and policy.config.task == "sft"

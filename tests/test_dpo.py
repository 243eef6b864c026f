"""DPO task: rejected sums, pair rows, loss = log 2 at init, gradient direction, CLI smoke."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.data import addition
from lm.models.gpt import GPT, GPTConfig
from lm.tasks import dpo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wrong_sum_differs_in_one_digit_by_one():
  rng = np.random.default_rng(0)
  for a, b in addition.sample_pairs(rng, 500, 3, held_out=False):
    wrong = dpo.wrong_sum(rng, int(a), int(b))
    right = str(a + b)
    assert wrong != a + b and len(str(wrong)) == len(right)
    diff = abs(wrong - (a + b))
    assert diff in {10**k for k in range(len(right))}


@pytest.fixture(scope="module")
def tiny():
  tok = addition.make_tokenizer()
  model = GPT(GPTConfig(vocab_size=tok.vocab_size, num_layers=1, num_heads=2, embed_dim=16,
                        mlp_dim=32, max_len=64))
  params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  rows = dpo.pair_rows(tok, np.array([[556, 497], [100, 999], [731, 268]]),
                       np.random.default_rng(0), 56)
  return tok, model, params, jax.tree.map(jnp.asarray, rows)


def test_pair_rows_mask_the_response_and_eos(tiny):
  tok, _, _, rows = tiny
  chosen = np.asarray(rows["chosen"][0])
  mask = np.asarray(rows["chosen_mask"][0])
  targets = tok.decode(chosen[1:][mask > 0])
  assert targets == "<answer>1053</answer>\n"
  rejected = tok.decode(np.asarray(rows["rejected"][0])[1:][np.asarray(rows["rejected_mask"][0])
                                                              > 0])
  assert rejected.startswith("<answer>") and rejected != targets


def _np_sequence_logprob(model, params, tokens, mask):
  logits, _ = model.apply({"params": params}, jnp.asarray(tokens[None, :-1]))
  x = np.asarray(logits[0], np.float64)
  logp = x - x.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  return sum(logp[t, tokens[t + 1]] for t in range(len(tokens) - 1) if mask[t] > 0)


def test_dpo_loss_is_log2_at_init_and_sequence_logprobs_match(tiny):
  _, model, params, rows = tiny
  loss_fn = dpo.make_dpo_loss(params, beta=0.5)(model)
  loss, metrics = loss_fn(params, rows, None)
  assert float(loss) == pytest.approx(np.log(2), abs=1e-6)
  assert float(metrics["reward_margin"]) == 0
  got = dpo.sequence_logprobs(model, params, rows["rejected"], rows["rejected_mask"])
  for i in range(3):
    want = _np_sequence_logprob(model, params, np.asarray(rows["rejected"][i]),
                                np.asarray(rows["rejected_mask"][i]))
    assert float(got[i]) == pytest.approx(want, rel=1e-5)


def test_a_dpo_step_raises_the_implicit_reward_margin(tiny):
  _, model, params, rows = tiny
  loss_fn = dpo.make_dpo_loss(params, beta=0.5)(model)
  grads = jax.grad(lambda p: loss_fn(p, rows, None)[0])(params)
  stepped = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)
  loss, metrics = loss_fn(stepped, rows, None)
  assert float(loss) < np.log(2)
  assert float(metrics["reward_margin"]) > 0


@pytest.mark.slow
def test_dpo_cli_smoke(tmp_path):
  sft_dir, dpo_dir = tmp_path / "sft", tmp_path / "dpo"
  for args in (["--config=configs/sft_addition.py:smoke", f"--workdir={sft_dir}"],
               [f"--config=configs/dpo_addition.py:smoke,init_from={sft_dir}",
                f"--workdir={dpo_dir}"]):
    proc = subprocess.run([sys.executable, "-m", "experiments.run", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
  rows = [json.loads(line) for line in open(dpo_dir / "metrics.jsonl")]
  assert rows[0]["train_loss"] == pytest.approx(np.log(2), abs=1e-3)
  summary = json.load(open(dpo_dir / "summary.json"))
  for key in ("val_reward_accuracy", "greedy_accuracy", "reference_greedy_accuracy", "win_rate"):
    assert 0 <= summary[key] <= 1

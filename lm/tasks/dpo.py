"""DPO (Rafailov et al. 2023) on synthetic, checkable preferences: correct vs incorrect sums.

Each pair shares an addition prompt (lm/data/addition.py); the chosen response is the
right sum, the rejected one a wrong sum of the same kind an imperfect model makes: the
right sum with one digit changed by +-1 (a carry error), e.g. 1053 vs 1063 or 1052.
The policy starts from an SFT workdir (`task_config.init_from`), which also serves as
the frozen reference; the run's `model` section is replaced by that workdir's.

Loss per pair: -log sigmoid(beta [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) -
log ref(y_l|x))]) with sequence log-probabilities summed over response tokens (and the
EOS). Eval metrics on held-out pairs: loss, reward_accuracy (the implicit reward ranks
the chosen response first), reward_margin. At the end, `final_metrics` decodes the
held-out prompts greedily with the policy and with the reference and reports
greedy_accuracy, reference_greedy_accuracy and win_rate (policy right and reference
wrong, half for ties).
"""

import dataclasses
import os

import grain
import jax
import jax.numpy as jnp
import numpy as np

from lm import workdir as workdir_lib
from lm.data import addition
from lm.errors import UserError
from lm.post_training.losses import dpo_loss, token_logprobs
from lm.post_training.policy import boxed_like, load_policy
from lm.sampling import generate_batch
from lm.tasks.sft import encode_example, greedy_addition_metrics, response_budget
from lm.train.task import Task

_ENDLESS = 2**62
EVAL_WEIGHTS = {name: "num_pairs" for name in ("loss", "reward_accuracy", "reward_margin",
                                                "chosen_reward", "rejected_reward")}


@dataclasses.dataclass(frozen=True)
class DPOConfig:
  init_from: str = ""  # an SFT workdir: the starting policy and the frozen reference
  beta: float = 0.1
  num_eval: int = 512

  def __post_init__(self):
    if self.beta <= 0 or self.num_eval <= 0:
      raise UserError("task_config.beta and num_eval must be positive")


def wrong_sum(rng: np.random.Generator, a: int, b: int) -> int:
  """The right sum with one digit changed by +-1 (never the right sum, never negative)."""
  s = a + b
  digits = len(str(s))
  while True:
    k = int(rng.integers(0, digits))
    wrong = s + int(rng.choice([-1, 1])) * 10**k
    if wrong != s and wrong >= 0 and len(str(wrong)) == digits:
      return wrong


def pair_rows(tokenizer, pairs, rng, length: int) -> dict:
  """chosen / rejected token rows (padded to `length`) and their response masks."""
  out = {k: np.zeros((len(pairs), length), np.int32) for k in ("chosen", "rejected")}
  out.update({f"{k}_mask": np.zeros((len(pairs), length - 1), np.float32)
              for k in ("chosen", "rejected")})
  for i, (a, b) in enumerate(pairs):
    prompt = addition.prompt_text(a, b)
    wrong = addition.response_text(a, b).replace(str(a + b), str(wrong_sum(rng, a, b)))
    for key, response in (("chosen", addition.response_text(a, b)), ("rejected", wrong)):
      ids, prompt_len = encode_example(tokenizer, prompt, response)
      out[key][i, :len(ids)] = ids
      out[f"{key}_mask"][i, prompt_len - 1:len(ids) - 1] = 1.0  # targets = response + EOS
  return out


def sequence_logprobs(model, params, tokens_BN, mask_BT):
  logits_BTV, _ = model.apply({"params": params}, tokens_BN[:, :-1])
  return (token_logprobs(logits_BTV, tokens_BN[:, 1:]) * mask_BT).sum(axis=1)


def make_dpo_loss(reference_params, beta: float):
  def make(model):
    def loss_fn(params, batch, rng, deterministic=False):
      del rng, deterministic  # no dropout in post-training
      tokens = jnp.concatenate([batch["chosen"], batch["rejected"]])
      mask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]])
      policy = sequence_logprobs(model, params, tokens, mask)
      ref = jax.lax.stop_gradient(sequence_logprobs(model, reference_params, tokens, mask))
      n = batch["chosen"].shape[0]
      loss, metrics = dpo_loss(policy[:n], policy[n:], ref[:n], ref[n:], beta=beta)
      return loss, {"loss": loss, **metrics, "num_pairs": jnp.float32(n),
                    "num_tokens": mask.sum()}
    return loss_fn
  return make


def build(config, workdir: str):
  tc, d = config.task_config, config.data
  if not tc.init_from:
    raise UserError("task_config.init_from is required: an SFT workdir (configs/sft_addition.py)")
  sft = load_policy(tc.init_from)
  if sft.config.task != "sft":
    raise UserError(f"init_from={tc.init_from} is a {sft.config.task!r} run; DPO on addition "
                    f"starts from an SFT run")
  config = dataclasses.replace(config, model=sft.config.model)
  tokenizer, num_digits = sft.tokenizer, sft.config.task_config.num_digits
  prompt_len = len(addition.prompt_text(10 ** (num_digits - 1), 10 ** (num_digits - 1)))
  length = min(config.model.max_len, prompt_len + response_budget(num_digits))
  eval_pairs = addition.held_out_pairs(tc.num_eval, num_digits)
  eval_rows = pair_rows(tokenizer, eval_pairs, np.random.default_rng(1), length)
  eval_batches = [{k: v[i:i + d.eval_batch_size] for k, v in eval_rows.items()}
                  for i in range(0, len(eval_pairs), d.eval_batch_size)]

  def batch(_, rng: np.random.Generator):
    pairs = addition.sample_pairs(rng, d.batch_size, num_digits, held_out=False)
    return pair_rows(tokenizer, pairs, rng, length)

  max_new = response_budget(num_digits)

  def final_metrics(model, params) -> dict:
    policy = greedy_addition_metrics(model, params, tokenizer, eval_pairs, max_new)
    wins = per_prompt_correct(model, params, tokenizer, eval_pairs, max_new)
    ref_wins = per_prompt_correct(model, sft.params, tokenizer, eval_pairs, max_new)
    win_rate = float(np.mean((wins > ref_wins) + 0.5 * (wins == ref_wins)))
    return {**policy, "reference_greedy_accuracy": float(ref_wins.mean()), "win_rate": win_rate,
            "generation_examples": len(eval_pairs)}

  def sample(model, params) -> str:
    pairs = eval_pairs[:4]
    prompts = np.stack([tokenizer.encode(addition.prompt_text(a, b)) for a, b in pairs])
    out = np.asarray(generate_batch(model, params, prompts, max_new_tokens=max_new,
                                    temperature=0.0))
    return "\n".join(f"{addition.prompt_text(a, b)}{addition.completion_text(tokenizer, ids)[0]}"
                     for (a, b), ids in zip(pairs, out))

  def save_files(run_dir: str):
    tokenizer.save(os.path.join(run_dir, workdir_lib.TOKENIZER))
    workdir_lib.save_token_prior(run_dir, np.zeros(tokenizer.vocab_size) -
                                 np.log(tokenizer.vocab_size))

  task = Task(
      tokenizer=tokenizer,
      train_iter=iter(grain.MapDataset.range(_ENDLESS).random_map(
          batch, seed=d.seed).to_iter_dataset()),
      eval_batches=eval_batches,
      tokens_per_step=2 * d.batch_size * length,
      make_loss=make_dpo_loss(jax.tree.map(jnp.asarray, sft.params), tc.beta),
      init_params=lambda model, seed: boxed_like(model, config.model.max_len, sft.params),
      sample=sample, final_metrics=final_metrics, save_files=save_files, eval_weights=EVAL_WEIGHTS)
  return config, task


def per_prompt_correct(model, params, tokenizer, pairs, max_new: int) -> np.ndarray:
  """1 where the greedy completion holds the right answer."""
  prompts = np.stack([tokenizer.encode(addition.prompt_text(a, b)) for a, b in pairs])
  out = np.asarray(generate_batch(model, params, prompts, max_new_tokens=max_new,
                                  temperature=0.0))
  return np.array([addition.answer_correct(addition.completion_text(tokenizer, ids)[0], a, b)
                   for (a, b), ids in zip(pairs, out)], np.float32)

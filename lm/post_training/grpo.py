"""GRPO (DeepSeekMath, Shao et al. 2024) with rule-based rewards on multi-digit addition.

One step:
1. P training-pool problems; each prompt is repeated G times and completed by the current
   policy with the jitted KV-cache sampler (lm/sampling.generate_batch, temperature T).
2. Rule-based rewards per completion (lm/data/addition.py): `answer_reward` if the number
   in the first <answer>...</answer> is the sum, plus `format_reward` if the completion
   is exactly <answer>digits</answer> followed by EOS.
3. Advantages (r - mean(group)) / (std(group) + eps), shared by all tokens of a completion.
4. `num_iterations` gradient steps on the clipped-ratio objective with the k3 KL penalty
   to the frozen reference (the starting SFT model), per-token averaging
   `token_averaging` (lm/post_training/losses.py). The ratio's denominator pi_old is the
   policy that sampled the rollouts, so with num_iterations = 1 the ratio is 1 and the
   step is the plain policy gradient (+ KL); later iterations are clipped.

Completion tokens are those up to and including the first EOS (all of them if none);
the loss sees nothing after it. Writes metrics.jsonl (reward, accuracy, format,
completion length, KL, clip fraction per step; held-out greedy accuracy at eval steps),
summary.json (held-out accuracy before and after), checkpoints (same TrainState layout
as supervised runs) and policy.json (the model's config, so lm.post_training.policy
loads the result like any decoder).
"""

import dataclasses
import json
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np

from lm import config as config_lib
from lm import workdir as workdir_lib
from lm.data import addition
from lm.errors import UserError
from lm.post_training import losses
from lm.post_training.policy import POLICY_CONFIG, load_policy, sequence_token_logprobs
from lm.sampling import generate_batch
from lm.tasks.sft import greedy_addition_metrics, response_budget
from lm.train.checkpoint import Checkpointer
from lm.train.metrics import MetricsWriter, write_json
from lm.train.optimizer import make_optimizer
from lm.train.state import create_train_state
from lm.train.step import apply_grads


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
  init_from: str = ""  # a trained SFT workdir (the starting policy and the frozen reference)
  kind: str = "grpo"
  num_steps: int = 100
  prompts_per_step: int = 16  # P
  group_size: int = 8  # G completions per prompt
  num_iterations: int = 1  # gradient steps per batch of rollouts (mu)
  max_new_tokens: int = 0  # 0: what a correct answer needs, plus slack
  temperature: float = 1.0  # rollout sampling temperature
  clip_eps: float = 0.2
  beta: float = 0.04  # weight of the k3 KL penalty to the reference
  token_averaging: str = "sequence"  # sequence (DeepSeekMath) | token (DAPO)
  answer_reward: float = 1.0
  format_reward: float = 0.1
  advantage_eps: float = 1e-4
  lr: float = 1e-4
  warmup_steps: int = 10
  grad_clip: float = 1.0
  num_eval: int = 512  # held-out problems, greedy decoding
  eval_every: int = 25
  checkpoint_every: int = 50
  seed: int = 0

  def __post_init__(self):
    if self.token_averaging not in losses.TOKEN_AVERAGING:
      raise UserError(f"token_averaging={self.token_averaging!r}; choose one of "
                      f"{losses.TOKEN_AVERAGING}")
    if self.group_size < 2:
      raise UserError(f"group_size must be >= 2 (advantages compare within a group), got "
                      f"{self.group_size}")
    for name in ("num_steps", "prompts_per_step", "num_iterations", "num_eval", "eval_every",
                 "checkpoint_every"):
      if getattr(self, name) <= 0:
        raise UserError(f"{name} must be positive, got {getattr(self, name)}")
    if self.grad_clip <= 0 or self.lr <= 0 or self.clip_eps <= 0 or self.beta < 0:
      raise UserError("lr, grad_clip and clip_eps must be positive and beta >= 0")


def parse_config(values: dict) -> GRPOConfig:
  fields = {f.name for f in dataclasses.fields(GRPOConfig)}
  unknown = sorted(set(values) - fields)
  if unknown:
    raise UserError(f"unknown config key {unknown[0]!r}; known: {sorted(fields)}")
  hints = {f.name: f.type for f in dataclasses.fields(GRPOConfig)}
  values = {k: float(v) if hints[k] in (float, "float") and isinstance(v, int) else v
            for k, v in values.items()}
  return GRPOConfig(**values)


# --- rollouts and rewards ------------------------------------------------------------------

def completion_mask(completions_BN: np.ndarray, eos_id: int) -> np.ndarray:
  """1 on tokens up to and including the first EOS (everything if there is none)."""
  is_eos = completions_BN == eos_id
  before = np.cumsum(is_eos, axis=1) - is_eos  # EOS seen strictly before this token
  return (before == 0).astype(np.float32)


def rewards_for(tokenizer, pairs: np.ndarray, completions_BN: np.ndarray, answer_reward: float,
                format_reward: float):
  """Rule-based rewards and their parts, one per completion (pairs repeated per row)."""
  correct, formatted, lengths = [], [], []
  for (a, b), ids in zip(pairs, completions_BN):
    text, ended = addition.completion_text(tokenizer, ids)
    correct.append(addition.answer_correct(text, a, b))
    formatted.append(addition.format_ok(text, ended))
    lengths.append(len(text) + ended)
  correct, formatted = np.asarray(correct, np.float32), np.asarray(formatted, np.float32)
  return (answer_reward * correct + format_reward * formatted, correct, formatted,
          np.asarray(lengths, np.float32))


def make_update(model, tx, c: GRPOConfig, prompt_len: int):
  """jit: (state, tokens, old_logp, ref_logp, advantages, mask) -> (state, metrics)."""

  def loss_fn(params, tokens_BN, old_logp_BT, ref_logp_BT, adv_B, mask_BT):
    logp_BT = sequence_token_logprobs(model, params, tokens_BN)
    # Only completion positions: targets at index >= prompt_len - 1 of the shifted rows.
    return losses.grpo_objective(logp_BT[:, prompt_len - 1:], old_logp_BT, ref_logp_BT, adv_B,
                                 mask_BT, clip_eps=c.clip_eps, beta=c.beta,
                                 token_averaging=c.token_averaging)

  @jax.jit
  def update(state, tokens_BN, old_logp_BT, ref_logp_BT, adv_B, mask_BT):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, tokens_BN, old_logp_BT, ref_logp_BT, adv_B, mask_BT)
    return apply_grads(state, grads, dict(metrics, loss=loss), tx)

  @jax.jit
  def completion_logprobs(params, tokens_BN):
    return sequence_token_logprobs(model, params, tokens_BN)[:, prompt_len - 1:]

  return update, completion_logprobs


# --- the loop ------------------------------------------------------------------------------

def _policy_config(base: config_lib.ExperimentConfig, c: GRPOConfig):
  """The model's config with GRPO's optimizer: the same TrainState layout as the SFT run."""
  optim = config_lib.OptimConfig(lr=c.lr, min_lr=c.lr, warmup_steps=c.warmup_steps,
                                 weight_decay=0.0, grad_clip=c.grad_clip)
  train = dataclasses.replace(base.train, num_steps=c.num_steps, seed=c.seed)
  return dataclasses.replace(base, optim=optim, train=train)


def train(c: GRPOConfig, workdir: str) -> dict:
  start = time.time()
  if not c.init_from:
    raise UserError("grpo needs init_from: a trained SFT workdir (configs/sft_addition.py), "
                    "e.g. --config.init_from=/tmp/sft_add")
  os.makedirs(workdir, exist_ok=True)
  sft = load_policy(c.init_from)
  if sft.config.task != "sft":
    raise UserError(f"init_from={c.init_from} is a {sft.config.task!r} run; GRPO on addition "
                    f"starts from an SFT run of configs/sft_addition.py")
  num_digits = sft.config.task_config.num_digits
  model, tokenizer = sft.model, sft.tokenizer
  policy_config = _policy_config(sft.config, c)
  tx = make_optimizer(policy_config.optim, c.num_steps)
  eos_id = int(tokenizer.encode(addition.EOS)[0])
  max_new = c.max_new_tokens or response_budget(num_digits)
  prompt_len = len(addition.prompt_text(10 ** (num_digits - 1), 10 ** (num_digits - 1)))
  if prompt_len + max_new - 1 > model.config.max_len:
    raise UserError(f"prompt ({prompt_len}) + max_new_tokens ({max_new}) exceeds "
                    f"model.max_len={model.config.max_len} + 1")
  reference = sft.params  # frozen
  checkpointer = Checkpointer(workdir, keep=2)
  state = create_train_state(jax.tree.map(jnp.asarray, sft.params), tx)
  if checkpointer.latest_step() is not None:
    state, _ = checkpointer.restore(state)
    print(f"resuming GRPO from step {int(state.step)}")
  with open(os.path.join(workdir, workdir_lib.CONFIG), "w") as f:
    json.dump(dataclasses.asdict(c), f, indent=2, sort_keys=True)
  config_lib.save_json(policy_config, os.path.join(workdir, POLICY_CONFIG))
  shutil.copy(os.path.join(c.init_from, workdir_lib.TOKENIZER),
              os.path.join(workdir, workdir_lib.TOKENIZER))

  update, completion_logprobs = make_update(model, tx, c, prompt_len)
  eval_pairs = addition.held_out_pairs(c.num_eval, num_digits)

  def held_out(params) -> dict:
    return greedy_addition_metrics(model, params, tokenizer, eval_pairs, max_new,
                                   prefix="heldout")

  step = int(state.step)
  writer = MetricsWriter(workdir, resume_step=step)
  summary_path = os.path.join(workdir, "summary.json")
  previous = json.load(open(summary_path)) if os.path.exists(summary_path) else {}
  before = previous.get("before") or held_out(reference)
  if step == 0:
    writer.write(0, before)
  print(f"held-out greedy accuracy before GRPO: {before['heldout_accuracy']:.3f}")
  P, G = c.prompts_per_step, c.group_size
  rollout_seconds = update_seconds = 0.0
  last = {}
  try:
    while step < c.num_steps:
      rng = np.random.default_rng([c.seed, step])
      pairs = np.repeat(addition.sample_pairs(rng, P, num_digits, held_out=False), G, axis=0)
      prompts = np.stack([tokenizer.encode(addition.prompt_text(a, b)) for a, b in pairs])
      t0 = time.perf_counter()
      key = jax.random.fold_in(jax.random.key(c.seed), step)
      completions = np.asarray(generate_batch(model, state.params, prompts,
                                              max_new_tokens=max_new,
                                              temperature=c.temperature, rng=key))
      rollout_seconds += time.perf_counter() - t0
      reward, correct, formatted, length = rewards_for(tokenizer, pairs, completions,
                                                       c.answer_reward, c.format_reward)
      adv = np.asarray(losses.group_advantages(jnp.asarray(reward.reshape(P, G)),
                                               c.advantage_eps)).reshape(-1)
      mask = completion_mask(completions, eos_id)
      tokens = jnp.asarray(np.concatenate([prompts, completions], axis=1))
      t0 = time.perf_counter()
      old_logp = completion_logprobs(state.params, tokens)
      ref_logp = completion_logprobs(reference, tokens)
      for _ in range(c.num_iterations):
        state, metrics = update(state, tokens, old_logp, ref_logp, jnp.asarray(adv),
                                jnp.asarray(mask))
      metrics = jax.device_get(metrics)
      update_seconds += time.perf_counter() - t0
      step += 1
      group_std = reward.reshape(P, G).std(axis=1)
      record = {"reward": float(reward.mean()), "accuracy": float(correct.mean()),
                "format": float(formatted.mean()), "completion_length": float(length.mean()),
                "zero_std_groups": float((group_std == 0).mean()),
                **{k: float(v) for k, v in metrics.items()}}
      if not np.isfinite(record["loss"]):
        raise UserError(f"GRPO loss became {record['loss']} at step {step}; stopped")
      if step % c.eval_every == 0 or step == c.num_steps:
        record.update(held_out(state.params))
        print(f"step {step}: reward {record['reward']:.3f} accuracy {record['accuracy']:.3f} "
              f"held-out greedy accuracy {record['heldout_accuracy']:.3f}")
      writer.write(step, record)
      last = record
      if step % c.checkpoint_every == 0 or step == c.num_steps:
        checkpointer.save(step, state, {"step": step})
  finally:
    writer.close()
    checkpointer.close()

  after = {k: v for k, v in last.items() if k.startswith("heldout_")} or held_out(state.params)
  summary = {**previous, "before": before, "after": after, "steps": step,
             "heldout_accuracy_before": before["heldout_accuracy"],
             "heldout_accuracy_after": after["heldout_accuracy"],
             "final_train_reward": last.get("reward", previous.get("final_train_reward")),
             "rollout_seconds": rollout_seconds, "update_seconds": update_seconds,
             "wall_time_s": time.time() - start, "init_from": c.init_from}
  write_json(summary_path, summary)
  return summary

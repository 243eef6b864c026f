"""Post-training objectives as pure functions of logits / log-probabilities.

Legend: B batch (sequences), T length, V vocab, P prompts, G completions per prompt.

- `response_cross_entropy`: SFT, next-token cross-entropy on response tokens only.
- `distillation_loss`: Hinton et al. (2015): T^2 KL(teacher_T || student_T), mixed with the
  hard-label cross-entropy: alpha * CE(labels) + (1 - alpha) * T^2 * KL.
- `group_advantages`, `k3_kl`, `grpo_objective`: GRPO (DeepSeekMath, Shao et al. 2024).
- `dpo_loss`: DPO (Rafailov et al. 2023).

Every loss is a mean over the weighted tokens (or sequences) it names; weights are 0/1
masks (padding, prompt tokens) unless stated otherwise.
"""

import jax
import jax.numpy as jnp
import optax

TOKEN_AVERAGING = ("sequence", "token")


def token_logprobs(logits_BTV, targets_BT):
  """log p(target_t | ...) for each position: (B, T)."""
  logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp_BTV, targets_BT[..., None], axis=-1)[..., 0]


def response_cross_entropy(logits_BTV, targets_BT, response_mask_BT):
  """SFT loss: mean cross-entropy over response tokens (prompt and padding weigh 0).

  Returns (loss, number of response tokens).
  """
  losses_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, targets_BT)
  mask_BT = response_mask_BT.astype(jnp.float32)
  total = mask_BT.sum()
  return (losses_BT * mask_BT).sum() / jnp.maximum(total, 1.0), total


def distillation_loss(student_logits_BTV, teacher_logits_BTV, targets_BT, weights_BT=None, *,
                      temperature: float = 1.0, alpha: float = 0.0):
  """alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T)).

  The T^2 factor keeps the soft term's gradient scale independent of T (Hinton et al.
  2015, section 2). Means over the weighted tokens. Returns (loss, metrics) with the
  hard cross-entropy `hard_loss` and the (unscaled) `kl` reported separately.
  """
  if weights_BT is None:
    weights_BT = jnp.ones(targets_BT.shape, jnp.float32)
  weights_BT = weights_BT.astype(jnp.float32)
  count = jnp.maximum(weights_BT.sum(), 1.0)
  t = temperature
  teacher_logp_BTV = jax.nn.log_softmax(jax.lax.stop_gradient(teacher_logits_BTV) / t, axis=-1)
  student_logp_BTV = jax.nn.log_softmax(student_logits_BTV / t, axis=-1)
  teacher_p_BTV = jnp.exp(teacher_logp_BTV)
  kl_BT = jnp.sum(teacher_p_BTV * (teacher_logp_BTV - student_logp_BTV), axis=-1)
  kl = (kl_BT * weights_BT).sum() / count
  hard_BT = optax.softmax_cross_entropy_with_integer_labels(student_logits_BTV, targets_BT)
  hard = (hard_BT * weights_BT).sum() / count
  loss = alpha * hard + (1.0 - alpha) * t**2 * kl
  return loss, {"hard_loss": hard, "kl": kl}


# --- GRPO ----------------------------------------------------------------------------------

def group_advantages(rewards_PG, eps: float = 1e-4):
  """(r - mean(group)) / (std(group) + eps), per prompt's group of G completions.

  The population std (ddof=0), so a group's advantages have mean 0 and std 1 (up to
  eps); a group whose rewards are all equal gets advantage 0 everywhere.
  """
  mean_P1 = rewards_PG.mean(axis=1, keepdims=True)
  std_P1 = rewards_PG.std(axis=1, keepdims=True)
  return (rewards_PG - mean_P1) / (std_P1 + eps)


def k3_kl(logp_BT, ref_logp_BT):
  """Schulman's k3 estimator of KL(pi || ref) per sampled token: r - log r - 1 with
  r = ref / pi. Unbiased for tokens drawn from pi, always >= 0, exactly 0 where the
  two agree."""
  log_ratio_BT = ref_logp_BT - logp_BT
  return jnp.exp(log_ratio_BT) - log_ratio_BT - 1.0


def masked_mean(x_BT, mask_BT, token_averaging: str):
  """`sequence`: the mean over each sequence's tokens, then over sequences (DeepSeekMath's
  1/G sum_i 1/|o_i| sum_t); `token`: one mean over all tokens of the batch (DAPO, Dr. GRPO:
  long completions are not down-weighted). Sequences with no tokens count as 0."""
  mask_BT = mask_BT.astype(jnp.float32)
  if token_averaging == "sequence":
    per_seq_B = (x_BT * mask_BT).sum(axis=1) / jnp.maximum(mask_BT.sum(axis=1), 1.0)
    return per_seq_B.mean()
  if token_averaging == "token":
    return (x_BT * mask_BT).sum() / jnp.maximum(mask_BT.sum(), 1.0)
  raise ValueError(f"token_averaging={token_averaging!r}; choose one of {TOKEN_AVERAGING}")


def grpo_objective(logp_BT, old_logp_BT, ref_logp_BT, advantages_B, mask_BT, *,
                   clip_eps: float = 0.2, beta: float = 0.04, token_averaging: str = "sequence"):
  """GRPO loss (to minimise) = -mean_t[min(rho A, clip(rho, 1 - eps, 1 + eps) A) - beta k3].

  rho = pi(o_t) / pi_old(o_t) per completion token; A is the completion's group advantage,
  shared by all its tokens; k3 is the KL estimator to the frozen reference. `mask_BT`
  marks the completion tokens (up to and including EOS). See `masked_mean` for the two
  ways of averaging over tokens. Returns (loss, metrics).
  """
  ratio_BT = jnp.exp(logp_BT - jax.lax.stop_gradient(old_logp_BT))
  adv_B1 = advantages_B[:, None]
  unclipped_BT = ratio_BT * adv_B1
  clipped_BT = jnp.clip(ratio_BT, 1.0 - clip_eps, 1.0 + clip_eps) * adv_B1
  surrogate_BT = jnp.minimum(unclipped_BT, clipped_BT)
  kl_BT = k3_kl(logp_BT, jax.lax.stop_gradient(ref_logp_BT))
  loss = -masked_mean(surrogate_BT - beta * kl_BT, mask_BT, token_averaging)
  was_clipped_BT = (jnp.abs(ratio_BT - 1.0) > clip_eps).astype(jnp.float32)
  metrics = {"kl": masked_mean(kl_BT, mask_BT, token_averaging),
             "clip_fraction": masked_mean(was_clipped_BT, mask_BT, "token")}
  return loss, metrics


# --- DPO -----------------------------------------------------------------------------------

def dpo_loss(chosen_logp_B, rejected_logp_B, ref_chosen_logp_B, ref_rejected_logp_B, *,
             beta: float = 0.1):
  """-log sigmoid(beta [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))]).

  Arguments are whole-response log-probabilities (sums over response tokens). The
  implicit rewards are beta * (log pi - log ref); `reward_accuracy` is the fraction of
  pairs where the chosen response's reward is the larger. Returns (loss, metrics).
  """
  chosen_reward_B = beta * (chosen_logp_B - jax.lax.stop_gradient(ref_chosen_logp_B))
  rejected_reward_B = beta * (rejected_logp_B - jax.lax.stop_gradient(ref_rejected_logp_B))
  margin_B = chosen_reward_B - rejected_reward_B
  loss = -jax.nn.log_sigmoid(margin_B).mean()
  return loss, {"reward_accuracy": (margin_B > 0).astype(jnp.float32).mean(),
                "reward_margin": margin_B.mean(), "chosen_reward": chosen_reward_B.mean(),
                "rejected_reward": rejected_reward_B.mean()}

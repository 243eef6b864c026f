"""Post-training losses against closed forms and hand-written NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.post_training import losses


def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def logits():
  rng = np.random.default_rng(0)
  return (rng.normal(size=(3, 5, 7)).astype(np.float32),
          rng.normal(size=(3, 5, 7)).astype(np.float32) * 2,
          rng.integers(0, 7, size=(3, 5)))


def test_response_cross_entropy_ignores_prompt_tokens(logits):
  student, _, targets = logits
  mask = np.zeros((3, 5), np.float32)
  mask[:, 3:] = 1  # the last two positions are the response
  loss, count = losses.response_cross_entropy(jnp.asarray(student), jnp.asarray(targets),
                                              jnp.asarray(mask))
  logp = _np_log_softmax(student.astype(np.float64))
  expected = -np.mean([logp[b, t, targets[b, t]] for b in range(3) for t in (3, 4)])
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
  assert float(count) == 6
  # Changing a prompt-position logit changes nothing.
  changed = student.copy()
  changed[:, :3] += 10 * np.random.default_rng(1).normal(size=(3, 3, 7))
  loss2, _ = losses.response_cross_entropy(jnp.asarray(changed), jnp.asarray(targets),
                                           jnp.asarray(mask))
  assert float(loss2) == pytest.approx(float(loss), abs=1e-7)


def test_distillation_t1_alpha0_is_cross_entropy_to_teacher(logits):
  student, teacher, targets = logits
  weights = np.ones((3, 5), np.float32)
  weights[0, 4] = 0

  def loss_of(s):
    return losses.distillation_loss(s, jnp.asarray(teacher), jnp.asarray(targets),
                                    jnp.asarray(weights), temperature=1.0, alpha=0.0)[0]

  p_t = np.exp(_np_log_softmax(teacher.astype(np.float64)))
  logq = _np_log_softmax(student.astype(np.float64))
  soft_ce = -(p_t * logq).sum(-1)  # cross-entropy to the teacher's distribution
  entropy = -(p_t * np.log(p_t)).sum(-1)
  w = weights.astype(np.float64)
  ce = (soft_ce * w).sum() / w.sum()
  # KL = CE(teacher, student) - H(teacher): equal up to the student-independent entropy...
  np.testing.assert_allclose(float(loss_of(jnp.asarray(student))),
                             ce - (entropy * w).sum() / w.sum(), rtol=1e-5)
  # ...and the gradient is exactly that of the soft cross-entropy: (q - p) w / sum(w).
  grad = np.asarray(jax.grad(loss_of)(jnp.asarray(student)))
  expected_grad = (np.exp(logq) - p_t) * w[..., None] / w.sum()
  np.testing.assert_allclose(grad, expected_grad, atol=1e-6)


def test_distillation_temperature_and_hard_label_mix(logits):
  student, teacher, targets = logits
  t, alpha = 2.5, 0.3
  loss, metrics = losses.distillation_loss(jnp.asarray(student), jnp.asarray(teacher),
                                           jnp.asarray(targets), temperature=t, alpha=alpha)
  lp_t = _np_log_softmax(teacher.astype(np.float64) / t)
  lq_t = _np_log_softmax(student.astype(np.float64) / t)
  kl = (np.exp(lp_t) * (lp_t - lq_t)).sum(-1).mean()
  logq = _np_log_softmax(student.astype(np.float64))
  hard = -np.take_along_axis(logq, targets[..., None], -1).mean()
  np.testing.assert_allclose(float(loss), alpha * hard + (1 - alpha) * t**2 * kl, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["kl"]), kl, rtol=1e-5)
  # Student == teacher: the soft term vanishes, alpha = 1 leaves plain cross-entropy.
  same, _ = losses.distillation_loss(jnp.asarray(teacher), jnp.asarray(teacher),
                                     jnp.asarray(targets), temperature=t, alpha=0.0)
  assert abs(float(same)) < 1e-5


def test_group_advantages_zero_mean_unit_std():
  rewards = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 8)), jnp.float32)
  adv = np.asarray(losses.group_advantages(rewards, eps=0.0))
  np.testing.assert_allclose(adv.mean(1), 0, atol=1e-6)
  np.testing.assert_allclose(adv.std(1), 1, atol=1e-5)
  r = np.asarray(rewards, np.float64)
  np.testing.assert_allclose(adv, (r - r.mean(1, keepdims=True)) / r.std(1, keepdims=True),
                             rtol=1e-5)
  equal = np.asarray(losses.group_advantages(jnp.full((2, 5), 0.7)))
  assert np.all(equal == 0)


def test_k3_kl_zero_when_policy_is_reference_and_positive_otherwise():
  logp = jnp.asarray(np.log(np.random.default_rng(0).uniform(0.05, 1, size=(3, 6))), jnp.float32)
  assert np.all(np.asarray(losses.k3_kl(logp, logp)) == 0)
  other = logp - 0.3
  kl = np.asarray(losses.k3_kl(logp, other))
  r = np.exp(-0.3)
  np.testing.assert_allclose(kl, r - np.log(r) - 1, rtol=1e-5)
  assert np.all(kl > 0)


def test_k3_kl_is_unbiased_for_samples_from_the_policy():
  p, q = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.2, 0.6])
  exact = float((p * np.log(p / q)).sum())
  tokens = np.random.default_rng(0).choice(3, size=200_000, p=p)
  est = np.asarray(losses.k3_kl(jnp.log(jnp.asarray(p[tokens])), jnp.log(jnp.asarray(q[tokens]))))
  assert abs(est.mean() - exact) < 5 * est.std() / np.sqrt(len(tokens))


def _grpo_inputs():
  rng = np.random.default_rng(0)
  logp = jnp.asarray(np.log(rng.uniform(0.1, 1, size=(4, 6))), jnp.float32)
  mask = jnp.asarray([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0],
                      [1, 1, 1, 1, 0, 0]], jnp.float32)
  return logp, mask


def test_grpo_equal_rewards_give_no_policy_gradient():
  logp, mask = _grpo_inputs()
  adv = losses.group_advantages(jnp.ones((1, 4)))[0]
  for averaging in losses.TOKEN_AVERAGING:
    grad = jax.grad(lambda lp: losses.grpo_objective(lp, logp, logp, adv, mask, beta=0.0,
                                                     token_averaging=averaging)[0])(logp)
    assert np.all(np.asarray(grad) == 0)
  # With the KL term at policy == reference the gradient is zero as well (k3' = 0 there).
  grad = jax.grad(lambda lp: losses.grpo_objective(lp, logp, logp, adv, mask, beta=0.5)[0])(logp)
  np.testing.assert_allclose(np.asarray(grad), 0, atol=1e-7)


def test_grpo_on_policy_gradient_matches_reinforce_with_averaging():
  """At rho = 1 (on-policy, no clipping) d loss / d logp_t = -A_i w_it: w = 1/(G |o_i|)
  (sequence averaging) or 1/sum|o| (token averaging)."""
  logp, mask = _grpo_inputs()
  adv = jnp.asarray([1.0, -0.5, 2.0, -2.5])
  m = np.asarray(mask, np.float64)
  expected = {"sequence": -np.asarray(adv)[:, None] * m / m.sum(1, keepdims=True) / 4,
              "token": -np.asarray(adv)[:, None] * m / m.sum()}
  for averaging, want in expected.items():
    loss, metrics = losses.grpo_objective(logp, logp, logp, adv, mask, beta=0.1,
                                          token_averaging=averaging)
    grad = jax.grad(lambda lp: losses.grpo_objective(lp, logp, logp, adv, mask, beta=0.1,
                                                     token_averaging=averaging)[0])(logp)
    np.testing.assert_allclose(np.asarray(grad), want, atol=1e-6)
    assert float(metrics["kl"]) == 0 and float(metrics["clip_fraction"]) == 0
    want_loss = -(np.asarray(adv)[:, None] * m / m.sum(1, keepdims=True)).sum() / 4
    if averaging == "sequence":
      assert float(loss) == pytest.approx(want_loss, abs=1e-6)


def test_grpo_clipping_stops_the_gradient_past_the_trust_region():
  old = jnp.zeros((1, 2))
  mask = jnp.ones((1, 2))
  logp = jnp.log(jnp.asarray([[1.5, 0.9]]))  # ratio 1.5 (clipped at 1.2), 0.9 (inside)
  adv = jnp.asarray([1.0])
  grad = np.asarray(jax.grad(lambda lp: losses.grpo_objective(
      lp, old, lp, adv, mask, clip_eps=0.2, beta=0.0)[0])(logp))
  assert grad[0, 0] == 0  # positive advantage, ratio above 1 + eps: no push further
  np.testing.assert_allclose(grad[0, 1], -0.9 / 2, rtol=1e-6)  # d(-rho/2)/dlogp = -rho/2
  # Negative advantage: the ratio below 1 - eps is clipped, above is not.
  logp2 = jnp.log(jnp.asarray([[0.5, 1.5]]))
  grad2 = np.asarray(jax.grad(lambda lp: losses.grpo_objective(
      lp, old, lp, -adv, mask, clip_eps=0.2, beta=0.0)[0])(logp2))
  assert grad2[0, 0] == 0
  np.testing.assert_allclose(grad2[0, 1], 1.5 / 2, rtol=1e-6)


def test_dpo_loss_is_log2_at_init_and_matches_the_formula():
  rng = np.random.default_rng(0)
  c, r = jnp.asarray(rng.normal(size=5) - 5), jnp.asarray(rng.normal(size=5) - 6)
  loss, metrics = losses.dpo_loss(c, r, c, r, beta=0.3)
  assert float(loss) == pytest.approx(np.log(2), abs=1e-6)
  assert float(metrics["reward_accuracy"]) == 0
  rc, rr = c - 0.2, r + 0.4
  loss, metrics = losses.dpo_loss(c, r, rc, rr, beta=0.3)
  margin = 0.3 * ((np.asarray(c) - np.asarray(rc)) - (np.asarray(r) - np.asarray(rr)))
  np.testing.assert_allclose(float(loss), np.mean(np.log1p(np.exp(-margin))), rtol=1e-6)
  assert float(metrics["reward_accuracy"]) == 1.0  # margin = 0.3 * (0.2 + 0.4) > 0 everywhere

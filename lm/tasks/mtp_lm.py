"""Next-token prediction with multi-token prediction and MoE load balancing (DeepSeek-V3).

`task = "mtp_lm"` (default depth 1) or `task = "moe_lm"` (depth 0: plain next-token loss):
the causal-LM data, tokenizer, eval batches, sample and workdir files, with the loss of
lm/objectives_mtp.py and a train step that, after every optimizer update, moves each MoE
layer's `balance_bias` by +gamma for experts loaded below the mean of that step's loads and
by -gamma above it (DeepSeek-V3's auxiliary-loss-free balancing), for the first
`bias_update_until` of the steps (the paper stops it for the last 3.4%). The bias gets a zero
gradient, so the optimizer leaves it where the update put it; it lives in the params,
so checkpoints, evaluation and sampling all use it. val_loss is the main head's loss.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import traverse_util

from lm.errors import UserError
from lm.objectives_mtp import gpt_params, init_mtp_params, mtp_lm_loss
from lm.sampling import generate
from lm.tasks import causal_lm
from lm.train.step import accumulated_grads, apply_grads


@dataclasses.dataclass(frozen=True)
class MTPConfig:
  depth: int = 1  # D MTP modules; depth k predicts token t+1+k
  weight: float = 0.3  # lambda: L = L_main + lambda / D * sum_k L_k (paper: 0.3, then 0.1)
  aux_weight: float = 0.0  # alpha of the Switch/GShard balance loss (mean over MoE layers)
  seq_aux_weight: float = 0.0  # alpha of DeepSeek-V3's sequence-wise balance loss
  bias_update_rate: float = 0.0  # gamma of the aux-loss-free bias update (paper: 0.001)
  # The bias moves during this fraction of train.num_steps, then stays put (DeepSeek-V3:
  # gamma 0.001 for the first 14.3T tokens of 14.8T, then 0, i.e. 0.966).
  bias_update_until: float = 1.0

  def __post_init__(self):
    if self.depth < 0 or min(self.weight, self.aux_weight, self.seq_aux_weight,
                             self.bias_update_rate) < 0:
      raise UserError("task_config.depth, weight, aux_weight, seq_aux_weight and "
                      "bias_update_rate must be >= 0")
    if not 0 <= self.bias_update_until <= 1:
      raise UserError(f"task_config.bias_update_until={self.bias_update_until} must be a "
                      "fraction of the train steps, in [0, 1]")


@dataclasses.dataclass(frozen=True)
class MoELMConfig(MTPConfig):
  depth: int = 0


def update_balance_bias(params, loads: dict, rate: float):
  """b_e += rate * sign(mean load - load_e) for every MoE layer `path` in `loads`."""
  flat = traverse_util.flatten_dict(params, sep="/")
  for path, load_E in loads.items():
    key = f"{path}/balance_bias"
    flat[key] = flat[key] + rate * jnp.sign(load_E.mean() - load_E)
  return traverse_util.unflatten_dict(flat, sep="/")


def make_balancing_multi_step(rate: float, microbatches: int = 1, until_step: int | None = None):
  """Task.make_multi_step: lm.train.step's scanned step plus the bias update after each step.

  Updates 0 .. until_step - 1 move the bias (None: all of them); later ones leave it.
  """

  def make(loss_fn, tx):
    def step(state, batch, base_rng):
      rng = jax.random.fold_in(base_rng, state.step)
      grads, metrics = accumulated_grads(functools.partial(loss_fn, with_loads=True),
                                         state.params, batch, rng, microbatches)
      loads = metrics.pop("balance_loads", {})
      gamma = rate if until_step is None else jnp.where(state.step < until_step, rate, 0.0)
      state, metrics = apply_grads(state, grads, metrics, tx)
      if rate > 0:  # after the optimizer, outside the gradient
        state = state.replace(params=update_balance_bias(state.params, loads, gamma))
      return state, metrics

    def multi_step(state, batches_K, base_rng):
      return jax.lax.scan(lambda s, b: step(s, b, base_rng), state, batches_K)

    return jax.jit(multi_step, donate_argnums=(0,))

  return make


def build(config, workdir: str):
  d, t = config.data, config.task_config
  if config.family != "gpt":
    raise UserError(f"task {config.task!r} needs family 'gpt', got {config.family!r}")
  if t.depth and config.model.position in ("alibi", "t5"):
    raise UserError("multi-token prediction modules support positions learned, sinusoidal, "
                    "rope and none")
  if t.depth >= d.seq_len:
    raise UserError(f"task_config.depth={t.depth} must be < data.seq_len={d.seq_len}")
  config, base = causal_lm.build(config, workdir)
  tokenizer = base.tokenizer

  def init_params(model, seed):
    params = causal_lm.init_params(model, d.seq_len, seed)
    return {**params, **init_mtp_params(model, d.seq_len, t.depth, seed)}

  s = config.sample

  def sample(model, params) -> str:
    ids = generate(model, gpt_params(params), tokenizer.encode(s.prompt),
                   max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_k=s.top_k,
                   top_p=s.top_p, seed=s.seed)
    return s.prompt + tokenizer.decode(ids[0])

  task = dataclasses.replace(
      base,
      make_loss=lambda model: mtp_lm_loss(model, t.depth, t.weight, t.aux_weight,
                                          t.seq_aux_weight),
      init_params=init_params, sample=sample,
      eval_weights={f"mtp_loss_{k}": f"mtp_tokens_{k}" for k in range(1, t.depth + 1)},
      make_multi_step=make_balancing_multi_step(
          t.bias_update_rate, config.train.grad_accum_steps,
          until_step=(None if t.bias_update_until >= 1
                      else round(t.bias_update_until * config.train.num_steps))))
  return config, task

"""Character-level GPT on tiny Shakespeare with mixture-of-experts MLPs (DeepSeek-V3 routing).

Run:
  python -m experiments.run --config=configs/moe_shakespeare.py --workdir=/tmp/moe
Expected: val_loss <= 2.02 and val_max_violation ~0.15 already after 400 steps (measured
2.016 and 0.158 in the docs/deepseek.md table; 1.773 and 0.14 after 1200 steps); the
unbalanced run (`:balance=none`) ends near max-violation 1.5.

A LLaMA-style block (RoPE, RMSNorm, no biases) whose SwiGLU MLP is replaced by 8 routed
experts of width 172, 2 per token: the active MLP params per token equal the dense
`shakespeare_char.py:arch=llama` MLP (mlp_dim 344), the total is 4x. Task `moe_lm`
(lm/tasks/mtp_lm.py) adds the balance losses and the bias update.

Args (comma separated):
  smoke             a few-seconds run
  balance=NAME      aux_free (default: bias update, gamma=bias_rate) | aux (Switch/GShard
                    loss, alpha=0.01) | seq (sequence-wise loss, alpha=1e-3) | none
  bias_rate=G       gamma of the aux-loss-free update (default 0.001, the paper's)
  bias_until=F      the bias moves during the first fraction F of the steps, then stays
                    (default 1; DeepSeek-V3 stops at 14.3T of 14.8T tokens, 0.966)
  experts=E, top_k=K, router=softmax|sigmoid (default sigmoid, DeepSeek-V3), shared=S
  dense             the dense baseline at equal active params (SwiGLU, mlp_dim 344)
e.g. --config=configs/moe_shakespeare.py:balance=none --config.model.moe_capacity_factor=1.25
"""

import ml_collections

from configs import base, shakespeare_char

BALANCE = ("aux_free", "aux", "seq", "none")


def moe_fields(model: ml_collections.ConfigDict, *, experts=8, top_k=2, expert_dim=172,
               shared=0, router="sigmoid"):
  """The GPT's model.moe_* (and attention/mla_*) keys, so --config.model.* overrides work."""
  model.mlp = "moe"
  model.moe_num_experts = experts
  model.moe_top_k = top_k
  model.moe_expert_dim = expert_dim
  model.moe_num_shared = shared
  model.moe_activation = "swiglu"
  model.moe_router = router
  model.moe_normalize_gates = True
  model.moe_capacity_factor = 0.0  # dropless
  model.moe_every = 1
  model.moe_block_size = 32
  model.attention = "mha"
  model.mla_kv_rank = 32
  model.mla_q_rank = 0
  model.mla_rope_dim = 16
  return model


def task_config(balance: str, bias_rate: float = 0.001, depth: int = 0,
                weight: float = 0.3, bias_until: float = 1.0) -> ml_collections.ConfigDict:
  if balance not in BALANCE:
    raise ValueError(f"balance={balance!r}; choose one of {BALANCE}")
  return ml_collections.ConfigDict(dict(
      depth=depth, weight=weight,
      aux_weight=0.01 if balance == "aux" else 0.0,
      seq_aux_weight=1e-3 if balance == "seq" else 0.0,
      bias_update_rate=bias_rate if balance == "aux_free" else 0.0,
      bias_update_until=bias_until))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = base.parse_arg(arg, smoke=False, balance="aux_free", bias_rate=0.001, bias_until=1.0,
                        experts=8, top_k=2, router="sigmoid", shared=0, dense=False)
  c = shakespeare_char.recipe("arch=llama")
  c.model.num_kv_heads = 0
  # Equal active MLP width: (top_k + shared) experts of 344 / (top_k + shared) each.
  moe_fields(c.model, experts=args.experts, top_k=args.top_k,
             expert_dim=344 // (args.top_k + args.shared), shared=args.shared,
             router=args.router)
  if args.dense:
    c.model.mlp = "swiglu"
  c.task = "moe_lm"
  c.task_config = task_config(args.balance, args.bias_rate, bias_until=args.bias_until)
  c.train.num_steps = 600
  c.train.eval_every = 200
  c.train.checkpoint_every = 600
  if args.smoke:
    base.make_smoke(c)
    c.model.moe_expert_dim = 64
  return c

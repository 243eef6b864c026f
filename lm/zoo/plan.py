"""Training-memory plans for meshes we do not have: per-device bytes under a rule preset.

The train state's layout comes from the trainer's own code path
(lm/train/layout.py `Layout.state_shardings`: logical axis names -> lm/sharding.py
rules -> NamedShardings) on a `jax.sharding.AbstractMesh` of any size, applied to the
abstract parameters of lm/zoo/abstract.py, so nothing is allocated and no device is
needed. Per-device state bytes are summed from each leaf's shard shape: parameters,
gradients (laid out like the parameters) and the optimizer state the config builds
(AdamW: two f32 moments). A dimension the mesh axes do not divide is a ShardingError.

Activations are an estimate, not a measurement: the tensors the backward pass keeps
per token and layer, following Korthikanti et al. 2022 ("Reducing activation
recomputation in large transformer models", sec. 4: 34 s b h + 5 a s^2 b bytes per
layer for GPT in 16-bit), generalised to GQA, gated MLPs, MoE, MLA and local attention:
  attention  d (qkv input) + nq H + 2 nkv H (q, k, v) + nq ctx (softmax) + nq H (out input)
  MLP        d + F (pre-activation; gated: 2F) + F (activation output); MoE: the top-k
             and shared experts' widths, plus the k dispatched copies in and out
  norms      2 d
  dropout    the dropped probabilities nq ctx, and 1-byte masks nq ctx + 2 d
With dropout this is exactly Korthikanti's 34 d + 5 nq ctx bytes per token for GPT.
Tensor parallelism divides the head and MLP terms by its degree (no sequence
parallelism). `remat=full` keeps each block's input (d per token and layer) plus one
block's activations while it is recomputed. The f32 logits (V per token) are added once.
"""

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractMesh

from lm import sharding
from lm.errors import UserError
from lm.layers.mlp import GATED
from lm.scaling.counting import attended_context
from lm.train.layout import Layout
from lm.train.optimizer import make_optimizer
from lm.train.state import create_train_state
from lm.zoo import abstract

GIB = 2**30


def parse_mesh(text: str) -> sharding.MeshShape:
  """'data:16,fsdp:16' -> MeshShape(data=16, fsdp=16, tensor=1, expert=1); unnamed axes 1."""
  sizes = {}
  for item in filter(None, (p.strip() for p in text.split(","))):
    name, _, size = item.partition(":")
    if name not in sharding.MESH_AXES or not size.isdigit() or int(size) < 1:
      raise UserError(f"--mesh item {item!r} is not AXIS:SIZE with AXIS one of "
                      f"{list(sharding.MESH_AXES)} and SIZE >= 1")
    sizes[name] = int(size)
  return sharding.MeshShape(**{a: sizes.get(a, 1) for a in sharding.MESH_AXES})


def abstract_mesh(shape: sharding.MeshShape) -> AbstractMesh:
  sizes = tuple(getattr(shape, a) for a in sharding.MESH_AXES)
  return AbstractMesh(sizes, sharding.MESH_AXES)


@dataclasses.dataclass(frozen=True)
class Plan:
  name: str
  mesh: dict  # axis -> size
  rules: str
  params: abstract.ParamReport
  flops_per_token: float
  kv_cache_bytes_per_token: int
  param_bytes: int  # per device, sharded
  optimizer_bytes: int  # per device, sharded
  activation_bytes: int  # per device, no remat
  activation_bytes_remat: int  # per device, remat=full
  sharded_params: list  # (path pattern, shape, logical, PartitionSpec, shard shape)

  @property
  def devices(self) -> int:
    return math.prod(self.mesh.values())

  @property
  def state_bytes(self) -> int:  # params + grads + optimizer state
    return 2 * self.param_bytes + self.optimizer_bytes

  @property
  def total_bytes(self) -> int:
    return self.state_bytes + self.activation_bytes

  @property
  def total_bytes_remat(self) -> int:
    return self.state_bytes + self.activation_bytes_remat


def _bytes(abstract_tree) -> int:
  total = 0
  for leaf in jax.tree.leaves(abstract_tree):
    shard = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += int(np.prod(shard)) * leaf.dtype.itemsize
  return total


def _layer_pattern(path: str) -> str:
  return re.sub(r"(block|blocks|encoder_blocks|decoder_blocks)_\d+", r"\1_*", path)


def state_layout(config, boxed, shape: sharding.MeshShape, rules: str, overrides: str = ""):
  """(per-device param bytes, optimizer bytes, per-parameter table) on an abstract mesh."""
  layout = Layout(abstract_mesh(shape), sharding.make_rules(rules, overrides))
  tx = make_optimizer(config.optim, config.train.num_steps)
  # Zeros inside eval_shape are never materialised.
  state, _ = layout.state_shardings(lambda: create_train_state(
      jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), boxed), tx))
  table, seen = [], set()
  logical = dict(abstract.flat_params(boxed))
  for path, leaf in jax.tree_util.tree_leaves_with_path(state.params):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    key = (_layer_pattern(name), leaf.shape)
    if key in seen:
      continue
    seen.add(key)
    table.append((key[0], tuple(leaf.shape), logical[name][1], leaf.sharding.spec,
                  tuple(leaf.sharding.shard_shape(leaf.shape))))
  return _bytes(state.params), _bytes(state.opt_state), table


def _attention_numbers(config, ctx: int, t: int) -> float:
  m = config.model
  d, nq = m.embed_dim, m.num_heads
  nkv = getattr(m, "num_kv_heads", 0) or nq
  if getattr(m, "attention", "mha") == "mla":
    h, r = (m.mla_head_dim or m.head_dim), m.mla_rope_dim
    q_in = (m.mla_q_rank * 2) if m.mla_q_rank else 0  # latent query before and after its norm
    return d + q_in + 2 * m.mla_kv_rank + r + (nq * (h + r) + 2 * nq * h + nq * ctx
                                               + nq * h) / t
  h = m.head_dim
  return d + (nq * h + 2 * nkv * h + nq * ctx + nq * h) / t


def _block_activations(config, ctx: int, t: int, cross: int = 0) -> tuple[float, float]:
  """(numbers kept per token for one block, mask bytes per token): see the module doc.
  `cross` > 0: a decoder block that also cross-attends over that many encoder tokens."""
  m = config.model
  d, nq = m.embed_dim, m.num_heads
  mlp = getattr(m, "mlp", "gelu")
  attn = _attention_numbers(config, ctx, t)
  if cross:
    attn += d + _attention_numbers(config, cross, t)  # its norm input, then the attention
  if mlp == "moe":
    width = m.moe_expert_dim or m.mlp_dim
    active = (m.moe_top_k + m.moe_num_shared) * width
    gated = m.moe_activation in GATED
    ffn = d + 2 * m.moe_top_k * d + m.moe_num_experts + (3 if gated else 2) * active / t
  else:
    ffn = d + (3 if mlp in GATED else 2) * m.mlp_dim / t
  masks = 0.0
  if getattr(m, "dropout", 0.0) > 0:  # the dropped probabilities too feed the values' matmul
    attn += nq * (ctx + cross) / t
    masks = nq * (ctx + cross) / t + 2 * d
  return attn + ffn + 2 * d, masks


def activation_bytes(config, tensor: int = 1, batch_per_device: int = 1,
                     act_bytes: int = 2) -> tuple[int, int]:
  """(no remat, remat=full) activation bytes of one device's microbatch (estimate)."""
  m = config.model
  if config.family == "encdec":
    stacks = [(m.num_encoder_layers, m.max_len, m.max_len, 0),
              (m.num_decoder_layers, m.max_target_len, m.max_target_len, m.max_len)]
  else:
    seq = config.data.seq_len
    contexts = [seq] * m.num_layers if config.family == "bert" else attended_context(m, seq)
    stacks = [(1, seq, ctx, 0) for ctx in contexts]
  full = kept = peak = 0.0
  for layers, tokens, ctx, cross in stacks:
    numbers, masks = _block_activations(config, ctx, tensor, cross)
    per_block = tokens * (numbers * act_bytes + masks)
    full += layers * per_block
    kept += layers * tokens * m.embed_dim * act_bytes
    peak = max(peak, per_block)
  tokens_out = m.max_target_len if config.family == "encdec" else config.data.seq_len
  logits = tokens_out * m.vocab_size * 4
  return (int(batch_per_device * (full + logits)),
          int(batch_per_device * (kept + peak + logits)))


def make_plan(name: str, config, shape: sharding.MeshShape, rules: str, overrides: str = "",
              boxed=None, batch_per_device: int = 1, act_bytes: int = 2) -> Plan:
  boxed = abstract.abstract_params(config) if boxed is None else boxed
  report = abstract.param_report(config, boxed)
  param_bytes, opt_bytes, table = state_layout(config, boxed, shape, rules, overrides)
  rule_map = sharding.make_rules(rules, overrides)
  tensor = math.prod(getattr(shape, a) for a in rule_map.get("act_heads", ()))
  act, act_remat = activation_bytes(config, tensor, batch_per_device, act_bytes)
  return Plan(name, {a: getattr(shape, a) for a in sharding.MESH_AXES}, rules, report,
              abstract.train_flops_per_token(config, report),
              abstract.kv_cache_bytes_per_token(config), param_bytes, opt_bytes, act, act_remat,
              table)


def check_fits(plan: Plan, hbm_gib: float):
  """UserError when even remat=full does not fit one device's memory."""
  if hbm_gib > 0 and plan.total_bytes_remat > hbm_gib * GIB:
    raise UserError(
        f"{plan.name} does not fit: {plan.total_bytes_remat / GIB:.1f} GiB per device with "
        f"remat=full (state {plan.state_bytes / GIB:.1f} GiB + activations "
        f"{plan.activation_bytes_remat / GIB:.1f} GiB) on mesh "
        f"{','.join(f'{k}:{v}' for k, v in plan.mesh.items() if v > 1)} under {plan.rules}, "
        f"HBM {hbm_gib:g} GiB")

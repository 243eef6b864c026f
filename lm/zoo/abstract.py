"""Models instantiated without memory: `jax.eval_shape` of the real init, and what it gives.

`abstract_params(config)` runs the family's own initialiser (the one the trainer uses,
MTP modules included for task mtp_lm) under `jax.eval_shape`, so a 671B-parameter
model costs a trace, not a byte. The boxed leaves keep their logical axis names, which
is all the sharding planner (lm/zoo/plan.py) needs.

Counting conventions (Kaplan et al. 2020, as lm/scaling/counting.py): token and
position embeddings, an untied output head and T5's relative-position tables are
*embedding*; everything else is non-embedding. Active parameters count, in a MoE
layer, only the top-k routed experts a token is sent to (plus the shared ones and the
router). MTP modules are reported apart (DeepSeek-V3's 671B excludes its 14B MTP module).
"""

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lm.errors import UserError
from lm.models.registry import build_model
from lm.scaling import counting

# Leaf paths that are embeddings, per the convention above.
EMBEDDING_PATHS = re.compile(r"(^|/)(token_embed|pos_embed|segment_embed|lm_head|rel_bias|"
                             r"enc_pos|dec_pos|enc_rel_bias|dec_rel_bias|embed)(/|$)"
                             r"|^mlm_head/bias$")
MTP_PREFIX = "mtp_"
DUMMY_LEN = 8  # init traces this many tokens; parameter shapes do not depend on it


def _init_fn(config):
  """() -> boxed params, exactly as the config's task initialises them."""
  if getattr(config.model, "vocab_size", 1) <= 0:
    raise UserError("model.vocab_size is 0 (the tokenizer fills it in when training); give "
                    "it explicitly, e.g. --config.model.vocab_size=65, to plan")
  model = build_model(config.family, config.model)
  seed = config.train.seed
  if config.family == "bert":
    from lm.models.bert import init_params
    return lambda: init_params(model, DUMMY_LEN, seed, boxed=True)
  if config.family == "encdec":
    from lm.models.encdec import init_params
    return lambda: init_params(model, seed, DUMMY_LEN, DUMMY_LEN)
  if config.family != "gpt":
    raise ValueError(f"no abstract initialiser for family {config.family!r}")
  depth = getattr(config.task_config, "depth", 0) if config.task == "mtp_lm" else 0

  def init():
    params = model.init(jax.random.key(seed), jnp.zeros((1, DUMMY_LEN), jnp.int32))["params"]
    if depth:
      from lm.objectives_mtp import init_mtp_params
      params = {**params, **init_mtp_params(model, DUMMY_LEN, depth, seed)}
    return params
  return init


def abstract_params(config, exact: bool = False):
  """The boxed parameter tree of shapes (jax.ShapeDtypeStruct leaves with logical names).

  Tracing init costs ~0.1-0.3 s per layer, so by default a model whose layers repeat is
  traced with one copy of each distinct layer (a block whose BlockConfig, bar its init
  scale, equals another's has the same parameter shapes and names) and the tree is
  assembled from those copies; `exact=True` traces every layer. tests/test_zoo.py checks
  both give the same tree.
  """
  if not exact:
    reduced = _reduced(config)
    if reduced is not None:
      small_config, layer_map = reduced
      small = jax.eval_shape(_init_fn(small_config))
      params = {k: v for k, v in small.items() if not _BLOCK.match(k)}
      params.update({full: small[short] for full, short in layer_map.items()})
      return params
  return jax.eval_shape(_init_fn(config))


_BLOCK = re.compile(r"^(block|blocks|encoder_blocks|decoder_blocks)_\d+$")


def _shape_key(block_config):
  """A BlockConfig with its init-only fields dropped: equal keys, equal parameter shapes."""
  def strip(c):
    return None if c is None else dataclasses.replace(c, num_layers_for_init=1)
  return dataclasses.replace(block_config, num_layers_for_init=1, moe=strip(block_config.moe),
                            mla=strip(block_config.mla))


def _gpt_kinds(model):
  from lm.layers.sparse_attention import layer_patterns
  return [_shape_key(model.block_config(p, i))
          for i, p in enumerate(layer_patterns(model.attention_pattern, model.num_layers))]


def _reduced(config):
  """(the config with fewer layers, full block name -> reduced block name), or None."""
  m = config.model
  replace = dataclasses.replace
  if config.family in ("bert", "encdec"):
    if config.family == "bert":
      small = replace(m, num_layers=1)
      names = {f"blocks_{i}": "blocks_0" for i in range(m.num_layers)}
    else:
      small = replace(m, num_encoder_layers=1, num_decoder_layers=1)
      names = {f"encoder_blocks_{i}": "encoder_blocks_0" for i in range(m.num_encoder_layers)}
      names.update({f"decoder_blocks_{i}": "decoder_blocks_0"
                    for i in range(m.num_decoder_layers)})
    return replace(config, model=small), names
  if config.family != "gpt" or getattr(m, "prefix_len", 0):  # prefixes are stacked per layer
    return None
  period = 2 * max(getattr(m, "moe_every", 1), 1)
  num_small = min(m.num_layers, getattr(m, "moe_first_dense", 0) + period)
  if num_small == m.num_layers:
    return None
  small = replace(m, num_layers=num_small)
  full_kinds, small_kinds = _gpt_kinds(m), _gpt_kinds(small)
  # The MTP block copies the last layer: the reduced model's last must be of its kind.
  if full_kinds[-1] != small_kinds[-1] or any(k not in small_kinds for k in full_kinds):
    return None
  names = {f"block_{i}": f"block_{small_kinds.index(k)}" for i, k in enumerate(full_kinds)}
  return replace(config, model=small), names


def flat_params(boxed) -> dict[str, tuple[tuple[int, ...], tuple]]:
  """'block_0/attn/query/kernel' -> (shape, logical axis names) for every leaf."""
  out = {}
  logical = nn.get_partition_spec(boxed)
  leaves = jax.tree_util.tree_leaves_with_path(nn.meta.unbox(boxed))
  specs = jax.tree_util.tree_leaves(logical, is_leaf=lambda x: x is None or isinstance(
      x, jax.sharding.PartitionSpec))
  for (path, leaf), spec in zip(leaves, specs, strict=True):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    out[name] = (tuple(leaf.shape), tuple(spec) if spec is not None else ())
  return out


@dataclasses.dataclass(frozen=True)
class ParamReport:
  total: int  # the main model (MTP modules excluded)
  embedding: int
  non_embedding: int
  active: int  # per token: top-k of the routed experts
  active_non_embedding: int
  mtp: int  # multi-token-prediction modules (0 unless task mtp_lm)


def _is_routed_expert(name: str, logical: tuple) -> bool:
  return "/moe/" in f"/{name}" and bool(logical) and logical[0] == "expert"


def param_report(config, boxed=None) -> ParamReport:
  """Counts from the abstract tree itself (no formula): what the trainer would allocate."""
  boxed = abstract_params(config) if boxed is None else boxed
  model = config.model
  keep = (model.moe_top_k / model.moe_num_experts) if getattr(model, "mlp", "") == "moe" else 1
  total = embedding = mtp = 0
  inactive = 0.0
  for name, (shape, logical) in flat_params(boxed).items():
    size = int(np.prod(shape))
    if name.startswith(MTP_PREFIX):
      mtp += size
      continue
    total += size
    if EMBEDDING_PATHS.search(name):
      embedding += size
    elif _is_routed_expert(name, logical):
      inactive += size * (1 - keep)
  active = total - round(inactive)
  return ParamReport(total, embedding, total - embedding, active, active - embedding, mtp)


def attention_dim(config) -> int:
  """Width of the per-token query . key products (d_attn in Kaplan's 2 L T d_attn)."""
  m = config.model
  if getattr(m, "attention", "mha") == "mla":
    return m.num_heads * ((m.mla_head_dim or m.head_dim) + m.mla_rope_dim)
  return m.num_heads * m.head_dim


def train_flops_per_token(config, report: ParamReport) -> float:
  """Kaplan et al.'s C = 6 N + 6 sum_layers(context) d_attn with N the *active*
  non-embedding parameters (a token's FLOPs do not depend on experts it skips).
  Encoder-decoders count both stacks' layers over their own context."""
  m = config.model
  seq = config.data.seq_len
  if config.family == "encdec":
    context = (m.num_encoder_layers * m.max_len
               + m.num_decoder_layers * (m.max_target_len + m.max_len))  # self + cross
  elif config.family == "bert":
    context = m.num_layers * seq
  else:
    context = sum(counting.attended_context(m, seq))
  return 6.0 * report.active_non_embedding + 6.0 * context * attention_dim(config)


def kv_cache_bytes_per_token(config, bytes_per_number: int = 2) -> int:
  """Decoding cache per generated token (bf16 by default): 0 for encoder-only models."""
  m = config.model
  if config.family == "bert":
    return 0
  if config.family == "encdec":  # decoder self-attention (cross-attention keys are per source)
    return 2 * (m.num_kv_heads or m.num_heads) * m.head_dim * m.num_decoder_layers \
        * bytes_per_number
  from lm.layers.mla import kv_cache_bytes_per_token as gpt_cache
  return gpt_cache(m, bytes_per_number)

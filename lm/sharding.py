"""Device meshes and the rules that map logical axis names to mesh axes. The one place
where layout is decided: models only name their axes (lm/layers/init.py), the trainer
only asks this module for shardings.

Mesh axes, in order: `data` (pure data parallelism), `fsdp` (data parallelism that
also shards parameters and optimizer state), `tensor` (Megatron-style splits of heads
and MLP width), `expert` (MoE experts). Sizes come from the config; -1 takes the
devices left over.

Logical axes are split into parameter names and activation names (`act_*`), so that
FSDP can shard a parameter's `embed` dimension while activations keep theirs whole.
A rule maps a logical name to a tuple of mesh axes (sharded over their product) or to
nothing (replicated). Resolution raises on unknown names, on two dimensions of one
array claiming the same mesh axis, on mesh axes the mesh lacks, and on dimensions the
mesh axes do not divide.
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lm.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor", "expert")

PARAM_AXES = ("vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "expert", "layers",
              "relpos_buckets")
ACTIVATION_AXES = ("batch", "length", "act_embed", "act_heads", "act_kv_heads", "act_head_dim",
                   "act_mlp", "act_vocab", "act_expert")
LOGICAL_AXES = PARAM_AXES + ACTIVATION_AXES

# The activation layouts the layers constrain (nn.with_logical_constraint); rules are
# checked against them up front, since flax itself would silently drop a clash.
ACTIVATION_SPECS = (("batch", "length", "act_embed"), ("batch", "length", "act_mlp"),
                    ("batch", "length", "act_heads", "act_head_dim"),
                    ("batch", "length", "act_kv_heads", "act_head_dim"),
                    ("batch", "length", "act_vocab"))

_BATCH = ("data", "fsdp")
PRESETS: dict[str, dict[str, tuple[str, ...]]] = {
    # Replicate every parameter; split the batch over all data-parallel devices.
    "dp": {"batch": _BATCH},
    # ZeRO-3 style: parameters and optimizer state sharded over `fsdp` along `embed`.
    "fsdp": {"batch": _BATCH, "embed": ("fsdp",)},
    # FSDP plus tensor parallelism over heads and MLP width (and their activations).
    "fsdp_tp": {"batch": _BATCH, "embed": ("fsdp",), "heads": ("tensor",),
                "kv_heads": ("tensor",), "mlp": ("tensor",), "act_heads": ("tensor",),
                "act_kv_heads": ("tensor",), "act_mlp": ("tensor",)},
    # FSDP plus expert parallelism: each expert's weights live on one `expert` slice.
    "fsdp_ep": {"batch": _BATCH + ("expert",), "embed": ("fsdp",), "expert": ("expert",)},
}
# Scanned layer stacks (model.scan_layers) keep their leading `layers` axis whole in every
# preset: the scan reads one layer per iteration, and each device holds its slice of all.
for _preset in PRESETS.values():
  _preset["layers"] = ()


class ShardingError(UserError):
  """A layout that cannot be honoured; raised before anything is computed."""


@dataclasses.dataclass(frozen=True)
class MeshShape:
  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  expert: int = 1


def mesh_shape(shape: MeshShape, num_devices: int) -> tuple[int, ...]:
  sizes = [getattr(shape, a) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ShardingError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  if any(s == 0 or s < -1 for s in sizes):
    raise ShardingError(f"mesh axis sizes must be positive or -1, got "
                        f"{dict(zip(MESH_AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ShardingError(f"{num_devices} devices cannot fill a mesh whose fixed axes hold "
                          f"{known}")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ShardingError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                        f"but {num_devices} are available")
  return tuple(sizes)


def make_mesh(shape: MeshShape, devices: Sequence | None = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  sizes = mesh_shape(shape, len(devices))
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def parse_overrides(text: str) -> dict[str, tuple[str, ...]]:
  """'embed=fsdp;mlp=tensor;vocab=' -> {'embed': ('fsdp',), 'mlp': ('tensor',), 'vocab': ()}.

  Several mesh axes for one name are joined with '+': 'batch=data+fsdp'.
  """
  rules: dict[str, tuple[str, ...]] = {}
  for item in filter(None, (part.strip() for part in text.split(";"))):
    if "=" not in item:
      raise ShardingError(f"sharding override {item!r} is not of the form name=axis[+axis]")
    name, axes = (s.strip() for s in item.split("=", 1))
    value = tuple(a for a in axes.split("+") if a)
    if name in rules and rules[name] != value:
      raise ShardingError(f"conflicting sharding overrides for {name!r}: {rules[name]} and "
                          f"{value}")
    rules[name] = value
  return rules


def make_rules(preset: str, overrides: Mapping[str, Sequence[str]] | str = ()) -> dict:
  """A preset's rules with explicit overrides applied; every name and axis checked."""
  if preset not in PRESETS:
    raise ShardingError(f"unknown sharding preset {preset!r}; known: {sorted(PRESETS)}")
  if isinstance(overrides, str):
    overrides = parse_overrides(overrides)
  rules = dict(PRESETS[preset])
  rules.update({k: tuple(v) for k, v in dict(overrides).items()})
  for name, axes in rules.items():
    if name not in LOGICAL_AXES:
      raise ShardingError(f"sharding rule for unknown logical axis {name!r}; known: "
                          f"{list(LOGICAL_AXES)}")
    for axis in axes:
      if axis not in MESH_AXES:
        raise ShardingError(f"sharding rule {name}={'+'.join(axes)} names unknown mesh axis "
                            f"{axis!r}; mesh axes: {list(MESH_AXES)}")
    if len(set(axes)) != len(axes):
      raise ShardingError(f"sharding rule {name}={'+'.join(axes)} repeats a mesh axis")
  for spec in ACTIVATION_SPECS:
    logical_to_spec(spec, rules, what=f"activations {spec}")
  return rules


def logical_to_spec(logical: Sequence[str | None], rules: Mapping[str, tuple[str, ...]],
                    mesh: Mesh | None = None, shape: Sequence[int] | None = None,
                    what: str = "array") -> PartitionSpec:
  """Maps one array's logical axis names to a PartitionSpec, checking it is a valid layout."""
  used: dict[str, str] = {}
  out = []
  for dim, name in enumerate(logical):
    if name is None:
      out.append(None)
      continue
    if name not in LOGICAL_AXES:
      raise ShardingError(f"{what}: unknown logical axis {name!r}; known: {list(LOGICAL_AXES)}")
    axes = tuple(rules.get(name, ()))
    for axis in axes:
      if axis in used:
        raise ShardingError(f"{what}: dimensions {used[axis]!r} and {name!r} both map to mesh "
                            f"axis {axis!r}")
      used[axis] = name
    if mesh is not None and shape is not None and axes:
      ways = math.prod(mesh.shape[a] for a in axes)
      if shape[dim] % ways:
        raise ShardingError(f"{what}: dimension {name!r} of size {shape[dim]} is not divisible "
                            f"by mesh axes {'x'.join(axes)} = {ways}")
    out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*out)


def flax_rules(rules: Mapping[str, tuple[str, ...]]) -> list[tuple[str, object]]:
  """The same rules in the form `nn.logical_axis_rules` takes (for activation constraints)."""
  out = []
  for name in LOGICAL_AXES:
    axes = tuple(rules.get(name, ()))
    out.append((name, None if not axes else axes[0] if len(axes) == 1 else axes))
  return out


def tree_shardings(logical_tree, abstract_tree, rules, mesh: Mesh):
  """NamedShardings for a pytree given its logical specs (nn.get_partition_spec) and shapes."""
  def one(path, spec, leaf):
    if not hasattr(leaf, "shape"):  # an empty subtree, e.g. optax's MaskedNode (frozen params)
      return leaf
    logical = tuple(spec) if spec is not None else ()
    what = jax.tree_util.keystr(path) or "array"
    return NamedSharding(mesh, logical_to_spec(logical, rules, mesh, leaf.shape, what))

  specs = jax.tree_util.tree_map_with_path(
      one, logical_tree, abstract_tree,
      is_leaf=lambda x: isinstance(x, PartitionSpec) or x is None)
  return specs


def batch_sharding(rules, mesh: Mesh, leading_dims: int = 0) -> NamedSharding:
  """Sharding of a batch array whose axis `leading_dims` is the batch (0, or 1 under scan)."""
  batch = tuple(rules.get("batch", ()))
  spec = [None] * leading_dims + [None if not batch else batch[0] if len(batch) == 1
                                  else batch]
  return NamedSharding(mesh, PartitionSpec(*spec))


def data_parallel_size(rules, mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in rules.get("batch", ()))


def start_cpu_devices(count: int) -> str | None:
  """Starts JAX with `count` CPU devices (config.sharding.cpu_devices); 0 leaves it alone.

  Only possible before JAX's first computation: a process (a test, a notebook) that has
  already started keeps its devices; the returned note says so (None when applied).
  """
  if count <= 0:
    return None
  try:
    jax.config.update("jax_num_cpu_devices", count)
    return None
  except RuntimeError:  # JAX's backends are up already
    have = len(jax.devices("cpu"))
    return None if have == count else (
        f"sharding.cpu_devices={count} not applied: JAX is already running with {have} "
        f"CPU device(s)")

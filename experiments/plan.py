"""Plan a training run on a mesh we do not have: counts, FLOPs, KV cache, memory per device.

  python -m experiments.plan --config=configs/zoo.py:name=llama2_70b --mesh=fsdp:256 \\
      --rules=fsdp [--hbm_gib=95] [--show_params]
  python -m experiments.plan --table=bert_large,gpt3_175b,llama2_70b,deepseek_v3 \\
      --devices=256,2048 [--write_docs=docs/zoo.md]
  python -m experiments.plan --counts [--write_docs=docs/zoo.md]

Any config works (`--config.model.num_layers=...` overrides too); nothing is allocated:
the model is instantiated with jax.eval_shape and laid out on a jax.sharding.AbstractMesh
by the trainer's own sharding code (lm/zoo/plan.py). `--hbm_gib` makes a model that does
not fit even with remat=full a one-line error (exit 2). `--table` prints the docs table
"model x mesh x preset -> bytes per device" for the standard meshes of `standard_mesh`.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from lm import config as config_lib
from lm import sharding
from lm.errors import UserError
from lm.zoo import abstract
from lm.zoo import plan as plan_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:args]).",
                                          lock_config=True)
_MESH = flags.DEFINE_string("mesh", "data:1", "Mesh axis sizes, e.g. data:16,fsdp:16.")
_RULES = flags.DEFINE_enum("rules", "fsdp", sorted(sharding.PRESETS), "Sharding rule preset.")
_OVERRIDES = flags.DEFINE_string("overrides", "", "Rule overrides, e.g. 'mlp=fsdp+tensor'.")
_HBM = flags.DEFINE_float("hbm_gib", 0.0, "Per-device memory; > 0: fail when the plan exceeds "
                          "it even with remat=full.")
_BATCH = flags.DEFINE_integer("batch_per_device", 1, "Sequences per data-parallel shard.")
_ACT_BYTES = flags.DEFINE_integer("act_bytes", 2, "Bytes per activation number (2: bf16).")
_EXACT = flags.DEFINE_bool("exact", False, "Trace every layer (default: each distinct one).")
_SHOW = flags.DEFINE_bool("show_params", False, "Print every parameter's sharding.")
_TABLE = flags.DEFINE_string("table", "", "Comma-separated zoo names: print the docs table.")
_DEVICES = flags.DEFINE_string("devices", "256,2048", "--table: device counts.")
_COUNTS = flags.DEFINE_bool("counts", False, "Print the zoo's counts table (every model).")
_WRITE = flags.DEFINE_string("write_docs", "", "--table / --counts: replace the table in this "
                             "markdown file between its plan-table / zoo-table markers.")

BEGIN, END = "<!-- plan-table:begin -->", "<!-- plan-table:end -->"
COUNTS_BEGIN, COUNTS_END = "<!-- zoo-table:begin -->", "<!-- zoo-table:end -->"
GIB = plan_lib.GIB


def standard_mesh(preset: str, devices: int) -> sharding.MeshShape:
  """The docs table's mesh per preset: FSDP over 256 devices (a v5p-256 slice; 32 8-GPU
  nodes), tensor parallelism within an 8-device node, experts over the rest."""
  if devices % 256:
    raise UserError(f"--devices must be multiples of 256, got {devices}")
  outer = devices // 256
  return {"dp": sharding.MeshShape(data=devices),
          "fsdp": sharding.MeshShape(data=outer, fsdp=256),
          "fsdp_tp": sharding.MeshShape(data=outer, fsdp=32, tensor=8),
          "fsdp_ep": sharding.MeshShape(fsdp=32, expert=devices // 32)}[preset]


def mesh_text(mesh: dict) -> str:
  return ",".join(f"{k}:{v}" for k, v in mesh.items() if v > 1) or "data:1"


def _size(num_bytes: int) -> str:
  return f"{num_bytes / GIB:.2f} GiB ({num_bytes:,} B)"


def describe(p: plan_lib.Plan) -> str:
  r = p.params
  lines = [
      f"model {p.name}   mesh {mesh_text(p.mesh)} ({p.devices} devices)   rules {p.rules}",
      "| quantity | value |", "| --- | --- |",
      f"| parameters | {r.total:,} ({r.total / 1e9:.2f}B) |",
      f"| non-embedding | {r.non_embedding:,} |",
      f"| active per token | {r.active:,} ({r.active / 1e9:.2f}B) |",
      f"| MTP modules | {r.mtp:,} |",
      f"| train FLOPs / token (6N_active + attention) | {p.flops_per_token:.3e} |",
      f"| KV cache / token (bf16) | {p.kv_cache_bytes_per_token:,} B |",
      f"| params / device | {_size(p.param_bytes)} |",
      f"| grads / device | {_size(p.param_bytes)} |",
      f"| optimizer state / device | {_size(p.optimizer_bytes)} |",
      f"| activations / device, no remat | {_size(p.activation_bytes)} |",
      f"| activations / device, remat=full | {_size(p.activation_bytes_remat)} |",
      f"| total / device, no remat | {_size(p.total_bytes)} |",
      f"| total / device, remat=full | {_size(p.total_bytes_remat)} |",
  ]
  return "\n".join(lines)


def describe_params(p: plan_lib.Plan) -> str:
  lines = ["| parameter | shape | logical axes | PartitionSpec | per device |",
           "| --- | --- | --- | --- | --- |"]
  for path, shape, logical, spec, shard in p.sharded_params:
    names = ", ".join(str(n) for n in logical)
    lines.append(f"| `{path}` | {shape} | {names} | {tuple(spec)} | {shard} |")
  return "\n".join(lines)


def zoo_config(name: str):
  from configs import zoo
  if name not in zoo.ZOO:
    raise UserError(f"unknown zoo model {name!r}; known: {sorted(zoo.ZOO)}")
  return config_lib.from_dict(zoo.get_config(f"name={name}").to_dict())


def table(names: list[str], device_counts: list[int], hbm_gib: float = 95.0) -> str:
  """model x mesh x preset -> bytes per device (a ✗ where the layout is impossible)."""
  lines = ["| model | devices | preset | mesh | params+grads+Adam / device | "
           "activations (no remat / remat) | total with remat | fits 95 GiB |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for name in names:
    config = zoo_config(name)
    boxed = abstract.abstract_params(config)
    for devices in device_counts:
      for preset in sorted(sharding.PRESETS):
        shape = standard_mesh(preset, devices)
        mesh = mesh_text({a: getattr(shape, a) for a in sharding.MESH_AXES})
        try:
          p = plan_lib.make_plan(name, config, shape, preset, boxed=boxed)
        except sharding.ShardingError as e:
          lines.append(f"| {name} | {devices} | {preset} | {mesh} | ✗ {e} | | | |")
          continue
        fits = "yes" if p.total_bytes_remat <= hbm_gib * GIB else "no"
        lines.append(
            f"| {name} | {devices} | {preset} | {mesh} | {p.state_bytes / GIB:,.2f} GiB | "
            f"{p.activation_bytes / GIB:,.1f} / {p.activation_bytes_remat / GIB:,.1f} GiB | "
            f"{p.total_bytes_remat / GIB:,.2f} GiB | {fits} |")
  return "\n".join(lines) + "\n"


def counts_table() -> str:
  """Every zoo model: parameters, active, FLOPs per token, KV cache per token."""
  from configs import zoo
  lines = ["| model | family | context | params | non-embedding | active / token | MTP | "
           "train FLOPs / token | KV cache / token (bf16) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for name in zoo.ZOO:
    config = zoo_config(name)
    r = abstract.param_report(config)
    kv = abstract.kv_cache_bytes_per_token(config)
    lines.append(
        f"| {name} | {config.family} | {config.data.seq_len} | {r.total:,} | "
        f"{r.non_embedding:,} | {r.active:,} | {r.mtp:,} | "
        f"{abstract.train_flops_per_token(config, r):.3e} | {f'{kv:,} B' if kv else 'n/a'} |")
  return "\n".join(lines) + "\n"


def write_docs(path: str, text: str, begin: str = BEGIN, end: str = END):
  with open(path) as f:
    doc = f.read()
  if begin not in doc or end not in doc:
    raise UserError(f"{path} has no {begin} ... {end} markers to replace")
  head, rest = doc.split(begin, 1)
  _, tail = rest.split(end, 1)
  with open(path, "w") as f:
    f.write(f"{head}{begin}\n{text}{end}{tail}")


def _main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _COUNTS.value:
    text = counts_table()
    print(text)
    if _WRITE.value:
      write_docs(_WRITE.value, text, COUNTS_BEGIN, COUNTS_END)
    return
  if _TABLE.value:
    try:
      counts = [int(d) for d in _DEVICES.value.split(",")]
    except ValueError:
      raise UserError(f"--devices must be comma-separated integers, got {_DEVICES.value!r}") \
          from None
    text = table([n.strip() for n in _TABLE.value.split(",") if n.strip()], counts)
    print(text)
    if _WRITE.value:
      write_docs(_WRITE.value, text)
    return
  if _CONFIG.value is None:
    raise UserError("--config (or --table) is required")
  config = config_lib.from_dict(_CONFIG.value.to_dict())
  name = config_flags.get_config_filename(flags.FLAGS["config"])
  boxed = abstract.abstract_params(config, exact=_EXACT.value)
  p = plan_lib.make_plan(name, config, plan_lib.parse_mesh(_MESH.value), _RULES.value,
                         _OVERRIDES.value, boxed=boxed, batch_per_device=_BATCH.value,
                         act_bytes=_ACT_BYTES.value)
  print(describe(p))
  if _SHOW.value:
    print(describe_params(p))
  plan_lib.check_fits(p, _HBM.value)


def main(argv):
  logging.set_verbosity(logging.WARNING)
  try:
    _main(argv)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 -- any failure here is a bad command line
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)

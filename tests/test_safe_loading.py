"""No pickle on any load path: configs, tokenizers and metrics are JSON, checkpoints are
orbax (tensorstore arrays + JSON), foreign weights safetensors.

Two checks: a static scan of every source file under lm/, experiments/ and configs/
for the ways Python code can unpickle (pickle-family imports, np.load without
allow_pickle=False, torch.load without weights_only=True, yaml.load, eval/exec), and
a runtime check that saving and loading a config, each tokenizer and a checkpoint
never resolves a class through the unpickler (the "pickle.find_class" audit event,
which every pickle that can run code must raise).
"""

import ast
import json
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("lm", "experiments", "configs")
UNPICKLING_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve",
                      "marshal", "pandas"}  # pandas: read_pickle; lm has no use for it
_NP_NAMES = {"np", "numpy", "jnp", "onp"}


def _keyword(call: ast.Call, name: str):
  for kw in call.keywords:
    if kw.arg == name:
      return kw.value
  return None


def _is_const(node, value) -> bool:
  return isinstance(node, ast.Constant) and node.value is value


def unsafe_loads(source: str, filename: str = "<string>") -> list[str]:
  """Every way `source` could unpickle, as 'file:line: what'."""
  problems = []
  for node in ast.walk(ast.parse(source, filename)):
    where = f"{filename}:{getattr(node, 'lineno', 0)}"
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.split(".")[0] in UNPICKLING_MODULES:
          problems.append(f"{where}: imports {alias.name}")
    elif isinstance(node, ast.ImportFrom):
      if node.module and node.module.split(".")[0] in UNPICKLING_MODULES:
        problems.append(f"{where}: imports from {node.module}")
    elif isinstance(node, ast.Call):
      func = node.func
      if isinstance(func, ast.Name) and func.id in ("eval", "exec"):
        problems.append(f"{where}: calls {func.id}()")
      if not isinstance(func, ast.Attribute):
        continue
      owner = func.value.id if isinstance(func.value, ast.Name) else None
      if func.attr == "load" and owner in _NP_NAMES:
        if not _is_const(_keyword(node, "allow_pickle"), False):
          problems.append(f"{where}: {owner}.load without allow_pickle=False")
      elif func.attr == "load" and owner == "torch":
        if not _is_const(_keyword(node, "weights_only"), True):
          problems.append(f"{where}: torch.load without weights_only=True")
      elif func.attr in ("load", "load_all", "unsafe_load") and owner == "yaml":
        problems.append(f"{where}: yaml.{func.attr} (use yaml.safe_load)")
      elif func.attr in ("read_pickle", "loads") and owner in ("pd", "np", "numpy"):
        problems.append(f"{where}: {owner}.{func.attr}")
  return problems


def source_files() -> list[Path]:
  return sorted(p for d in SOURCE_DIRS for p in (REPO_ROOT / d).rglob("*.py"))


def test_sources_never_unpickle():
  files = source_files()
  assert len(files) > 20 and any(p.name == "checkpoint.py" for p in files)
  problems = [p for f in files
              for p in unsafe_loads(f.read_text(encoding="utf-8"), str(f.relative_to(REPO_ROOT)))]
  assert problems == []


@pytest.mark.parametrize("snippet", [
    "import pickle",
    "import cloudpickle as cp",
    "from joblib import load",
    "from pickle import loads",
    "import numpy as np\nx = np.load('a.npy')",
    "import numpy as np\nx = np.load('a.npz', allow_pickle=True)",
    "import jax.numpy as jnp\nx = jnp.load(path, allow_pickle=flag)",
    "import torch\nsd = torch.load('w.pt')",
    "import torch\nsd = torch.load('w.pt', weights_only=False)",
    "import yaml\nc = yaml.load(open('c.yaml'))",
    "import pandas as pd",
    "x = eval(text)",
])
def test_scanner_catches_unsafe_loads(snippet):
  assert len(unsafe_loads(textwrap.dedent(snippet))) == 1, snippet


@pytest.mark.parametrize("snippet", [
    "import numpy as np\nx = np.load('a.npy', allow_pickle=False)",
    "import torch\nsd = torch.load('w.pt', weights_only=True)",
    "import yaml\nc = yaml.safe_load(open('c.yaml'))",
    "import json\nc = json.load(open('c.json'))",
    "model.eval()",
])
def test_scanner_allows_safe_loads(snippet):
  assert unsafe_loads(snippet) == []


_FIND_CLASS_EVENTS = []
_WATCHING = [False]


def _audit(event, args):
  if _WATCHING[0] and event == "pickle.find_class":
    _FIND_CLASS_EVENTS.append(args)


sys.addaudithook(_audit)  # hooks cannot be removed; this one records only while watching


def test_audit_hook_sees_unpickling():
  """The runtime check below is only meaningful if unpickling is visible to it."""
  import pickle
  _FIND_CLASS_EVENTS.clear()
  _WATCHING[0] = True
  try:
    pickle.loads(pickle.dumps(Path("x")))
  finally:
    _WATCHING[0] = False
  assert _FIND_CLASS_EVENTS


def test_load_paths_do_not_unpickle(tmp_path):
  from lm import config as config_lib
  from lm.data.tokenizers import build_tokenizer, load_tokenizer
  from lm.train.checkpoint import Checkpointer

  text = "To be, or not to be: that is the question. " * 20
  params = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.zeros(4, np.float32)}
  tx = optax.adamw(1e-3)
  state = {"params": params, "opt_state": tx.init(params), "step": np.int32(3)}
  _FIND_CLASS_EVENTS.clear()
  _WATCHING[0] = True
  try:
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps({"data": {"path": "x.txt"}, "model": {"vocab_size": 10}}))
    config_lib.from_dict(json.loads(config_path.read_text()))
    for kind, vocab in (("char", 0), ("word", 0), ("bpe", 300)):
      path = str(tmp_path / f"{kind}.json")
      build_tokenizer(kind, text, vocab).save(path)
      tokenizer = load_tokenizer(path)
      assert tokenizer.decode(tokenizer.encode("To be, or")) == "To be, or"
    ckpt = Checkpointer(str(tmp_path / "run"))
    ckpt.save(3, state, {"next_index": 7})
    restored, data = ckpt.restore(jax.eval_shape(lambda: state))
    ckpt.close()
  finally:
    _WATCHING[0] = False
  assert data == {"next_index": 7}
  np.testing.assert_array_equal(restored["params"]["w"], params["w"])
  assert _FIND_CLASS_EVENTS == []

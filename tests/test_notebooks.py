"""Every colab/ notebook runs headless (nbclient) on smoke settings without an error.

The kernels are this interpreter (a kernel spec written into a private JUPYTER_PATH), with
LM_NOTEBOOK_SMOKE=1 and the venv's bin first on PATH (for `!python` cells). They do not
inherit the tests' 8 fake devices: 07_sharding must ask for them itself. Notebooks run a
few at a time, each in its own kernel process.
"""

import concurrent.futures
import glob
import os
import sys

import nbformat
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLAB = os.path.join(REPO_ROOT, "colab")
NOTEBOOKS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(COLAB, "*.ipynb")))
KERNEL = "lm_notebook_test"


def _kernel_env(jupyter_path: str) -> dict:
  env = dict(os.environ)
  flags = env.get("XLA_FLAGS", "").split()
  env["XLA_FLAGS"] = " ".join(f for f in flags if "device_count" not in f)
  env.update(LM_NOTEBOOK_SMOKE="1", JUPYTER_PATH=jupyter_path, JAX_PLATFORMS="cpu",
             PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
             PYTHONPATH=REPO_ROOT + os.pathsep + env.get("PYTHONPATH", ""))
  return env


def _execute(name: str, env: dict) -> str | None:
  """None if every cell ran, else the error nbclient reports (cell source and traceback)."""
  from nbclient import NotebookClient
  from nbclient.exceptions import CellExecutionError
  nb = nbformat.read(os.path.join(COLAB, name), as_version=4)
  client = NotebookClient(nb, kernel_name=KERNEL, timeout=600,
                          resources={"metadata": {"path": REPO_ROOT}})
  try:
    client.execute(env=env)
  except CellExecutionError as e:
    return str(e)[-4000:]
  return None


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
  from ipykernel.kernelspec import write_kernel_spec
  jupyter_path = str(tmp_path_factory.mktemp("jupyter"))
  write_kernel_spec(os.path.join(jupyter_path, "kernels", KERNEL))  # runs sys.executable
  env = _kernel_env(jupyter_path)
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("JUPYTER_PATH", jupyter_path)  # where the client looks the kernel spec up
    workers = min(len(NOTEBOOKS), (os.cpu_count() or 1) + 1)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
      futures = {name: pool.submit(_execute, name, env) for name in NOTEBOOKS}
      return {name: f.result() for name, f in futures.items()}


def test_the_issue_notebooks_exist():
  for prefix in ("00_", "01_", "02_", "03_", "04_", "05_", "06_", "07_"):
    assert any(n.startswith(prefix) for n in NOTEBOOKS), prefix


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_headless(executed, name):
  assert executed[name] is None, f"{name} failed:\n{executed[name]}"


def test_generated_notebooks_are_committed_as_built_and_without_outputs():
  sys.path.insert(0, COLAB)
  import build_notebooks
  for name, built in build_notebooks.build_all().items():
    nbformat.validate(built)
    stored = nbformat.read(os.path.join(COLAB, name), as_version=4)
    assert stored == built, f"{name} differs from colab/build_notebooks.py: rerun it"
    for cell in stored.cells:
      if cell.cell_type == "code":
        assert cell.outputs == [] and cell.execution_count is None, name
    first = next(c for c in stored.cells if c.cell_type == "code").source
    assert "LM_NOTEBOOK_SMOKE" in first and "jax.devices()" in first, name

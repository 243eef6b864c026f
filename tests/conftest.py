"""Test setup: 8 fake CPU devices, set before anything imports jax."""

import os
import sys


def _add_xla_flags(*flags: str):
  present = os.environ.get("XLA_FLAGS", "").split()
  os.environ["XLA_FLAGS"] = " ".join(present + [f for f in flags if f not in present])


# Subprocesses the tests start (CLI runs, notebook kernels) inherit these flags. The
# tests' models are tiny, so the suite's time is mostly XLA:CPU compiling: skipping
# LLVM's expensive passes saves ~10% of it and left the default recipe's run bit-identical.
_add_xla_flags("--xla_force_host_platform_device_count=8",
               "--xla_llvm_disable_expensive_passes=true")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)


def pytest_configure(config):
  # Unoptimised code generation compiles faster still (the default suite: 16 min 23 s ->
  # 11 min 2 s on a 2-core Xeon) but runs ~4.7x slower, which only pays while the long
  # slow-marked runs are left out. The last bits of a result may differ from an optimised
  # build, so tests compare with tolerances or two runs of one program. Runs before any
  # test module imports jax, which reads XLA_FLAGS when its backend starts.
  if config.getoption("markexpr") == "not slow":  # pytest.ini's default selection
    _add_xla_flags("--xla_backend_optimization_level=0")

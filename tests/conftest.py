"""Test setup: 8 fake CPU devices, set before anything imports jax."""

import os
import sys

# The tests' models are tiny, so the suite's time is mostly XLA:CPU compiling; LLVM's
# cheaper pipeline cuts it by a third (16 min 23 s -> 11 min 2 s on a 2-core Xeon). No
# fast-math either way; the last bits of a result may differ from an optimised build, so
# tests compare with tolerances or two runs of the same program.
# Subprocesses started by the tests (CLI runs, notebook kernels) inherit these flags.
_COMPILE_FAST = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" {_COMPILE_FAST}"
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

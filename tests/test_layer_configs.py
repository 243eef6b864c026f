"""The GPT config selects every layer-library option from the command line and trains.

One subprocess per option set, run as a user would (`python -m experiments.run
--config=configs/shakespeare_char.py:smoke --config.model.*=...`).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def _run(workdir, *flags, config="configs/shakespeare_char.py:smoke"):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="",
             PYTHONPATH=str(REPO_ROOT))
  cmd = [sys.executable, "-m", "experiments.run", f"--config={config}",
         f"--workdir={workdir}", "--config.train.num_steps=6", "--config.train.eval_every=6",
         "--config.train.log_every=3", "--config.sample.max_new_tokens=8", *flags]
  return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                        timeout=300)


@pytest.mark.parametrize("flags", [
    # The example, plus sparse layers small enough to be block-sparse at T=32.
    ("--config.model.position=rope", "--config.model.num_kv_heads=1",
     "--config.model.attention_pattern=alternating_local", "--config.model.attention_window=8"),
    ("--config.model.position=t5", "--config.model.norm=rmsnorm", "--config.model.mlp=swiglu",
     "--config.model.qk_norm=True", "--config.model.logit_softcap=20",
     "--config.model.attention_pattern=local_strided", "--config.model.attention_window=8",
     "--config.model.attention_stride=4"),
    # The last two combinations are covered in-process too (test_attention_variants,
    # test_train_memory_options): through the runner only with `make test-all`.
    pytest.param(("--config.model.position=alibi", "--config.model.mlp=geglu",
                  "--config.model.attention_pattern=strided",
                  "--config.model.attention_stride=4"), marks=pytest.mark.slow),
    pytest.param(("--config.model.position=sinusoidal", "--config.model.num_heads=4",
                  "--config.model.num_kv_heads=2", "--config.model.remat=dots"),
                 marks=pytest.mark.slow),
])
def test_gpt_trains_and_samples_with_layer_options(tmp_path, flags):
  result = _run(tmp_path / "w", *flags)
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads((tmp_path / "w" / "summary.json").read_text())
  config = json.loads((tmp_path / "w" / "config.json").read_text())
  for flag in flags:
    key, value = flag.removeprefix("--config.model.").split("=")
    assert str(config["model"][key]).lower() == value.lower() or \
        float(config["model"][key]) == float(value)
  # Six steps from a uniform start (log 65 = 4.17): the loss must have moved and stay finite.
  assert 2.0 < summary["val_loss"] < 4.17
  assert summary["steps"] == 6 and summary["sample"].startswith("ROMEO:")
  assert summary["mfu"] > 0 and summary["model_flops_per_token"] > 0
  last = json.loads((tmp_path / "w" / "metrics.jsonl").read_text().splitlines()[-1])
  assert last["mfu"] == pytest.approx(summary["mfu"], rel=0.2)


def test_llama_arch_preset_trains(tmp_path):
  result = _run(tmp_path / "w", config="configs/shakespeare_char.py:smoke,arch=llama")
  assert result.returncode == 0, result.stderr[-2000:]
  model = json.loads((tmp_path / "w" / "config.json").read_text())["model"]
  assert (model["position"], model["norm"], model["mlp"], model["use_bias"],
          model["num_kv_heads"]) == ("rope", "rmsnorm", "swiglu", False, 2)
  assert 2.0 < json.loads((tmp_path / "w" / "summary.json").read_text())["val_loss"] < 4.17


@pytest.mark.parametrize("flag,words", [
    ("--config.model.position=foo", ["position", "foo"]),
    ("--config.model.num_kv_heads=3", ["num_kv_heads", "3"]),
    ("--config.model.attention_pattern=banded", ["attention_pattern", "banded"]),
    ("--config.model.mlp=relu2", ["mlp", "relu2"]),
])
def test_bad_layer_options_are_one_line_errors(tmp_path, flag, words):
  result = _run(tmp_path / "w", flag)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
  assert all(w in lines[0] for w in words), lines[0]

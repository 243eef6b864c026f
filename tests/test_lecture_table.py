"""The lecture table: config parsing, n-gram order chosen without looking at val, outputs."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from experiments import lecture_table
from lm.config import DataConfig
from lm.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config_values(arg=None) -> dict:
  path = os.path.join(REPO, "configs", "lecture_table.py")
  spec = importlib.util.spec_from_file_location("lecture_table_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg).to_dict()


@pytest.mark.parametrize("arg", [None, "smoke"])
def test_config_parses_and_rows_share_the_data(arg):
  config = lecture_table.parse_config(_config_values(arg))
  assert config.lstm.family == "recurrent" and config.lstm.task == "tbptt_lm"
  assert config.transformer.family == "gpt"
  for sub in (config.lstm, config.transformer):
    assert (sub.data.path, sub.data.tokenizer, sub.data.val_fraction) == (
        config.data.path, config.data.tokenizer, config.data.val_fraction)
  # Comparable budgets: the same number of training tokens.
  budget = lambda c: c.train.num_steps * c.data.batch_size * c.data.seq_len
  assert budget(config.lstm) == budget(config.transformer)
  if arg == "smoke":
    assert config.ngram_orders == (2, 3) and config.lstm.train.num_steps <= 100


def test_rows_must_share_the_corpus():
  values = _config_values("smoke")
  values["lstm"]["data"]["val_fraction"] = 0.2
  with pytest.raises(UserError, match="lstm.data.val_fraction"):
    lecture_table.parse_config(values)
  values = _config_values("smoke")
  values["ngram_orders"] = "2,x"
  with pytest.raises(UserError, match="ngram_orders"):
    lecture_table.parse_config(values)
  values = _config_values("smoke")
  values["typo"] = 1
  with pytest.raises(UserError, match="typo"):
    lecture_table.parse_config(values)


def _small_corpus(tmp_path, val_text):
  text = open(os.path.join(REPO, "data", "tinyshakespeare.txt")).read()[:60000]
  (tmp_path / "train.txt").write_text(text)
  (tmp_path / "val.txt").write_text(val_text)
  return DataConfig(path=str(tmp_path / "train.txt"), val_path=str(tmp_path / "val.txt"))


def test_ngram_order_is_chosen_on_dev_not_val(tmp_path):
  text = open(os.path.join(REPO, "data", "tinyshakespeare.txt")).read()
  rows = []
  for val in (text[100000:110000], text[100000:101000]):
    rows.append(lecture_table.ngram_row(_small_corpus(tmp_path, val), (1, 2, 3, 4, 5), 0.1,
                                        sample_chars=20, log=lambda *_: None))
  # Val never enters the choice (both val texts use no character the train text lacks).
  dev = lambda row: [(r["order"], r["dev_loss"]) for r in row["selection"]]
  assert dev(rows[0]) == dev(rows[1])
  best = min(rows[0]["selection"], key=lambda r: r["dev_loss"])["order"]
  assert rows[0]["order"] == best and rows[0]["context"] == f"{best - 1} tokens"
  assert [p["order"] for p in rows[0]["curve"]] == [1, 2, 3, 4, 5]
  assert rows[0]["val_loss"] == next(p["val_loss"] for p in rows[0]["curve"] if p["order"] == best)


def test_markdown_has_every_column_and_the_perplexity():
  row = {"model": "m", "context": "3 tokens", "params": 1234, "params_note": "parameters",
         "train_time_s": 1.5, "tokens_per_sec": 1000.0, "val_loss": math.log(4.0),
         "val_loss_windows": None, "sample": "a|b\nc"}
  table = lecture_table.markdown([row])
  header = table.splitlines()[0]
  for column in ("context", "params", "train time", "tokens/s", "val loss", "val ppl", "sample"):
    assert column in header
  assert "| 4.000 |" in table and "1,234 parameters" in table and "a\\|b⏎c" in table


@pytest.mark.slow
def test_smoke_run_writes_the_table(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.run([sys.executable, "-m", "experiments.run",
                         "--config=configs/lecture_table.py:smoke", f"--workdir={tmp_path}"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr
  rows = json.loads((tmp_path / "table.json").read_text())["rows"]
  assert len(rows) == 3 and (tmp_path / "table.png").stat().st_size > 0
  assert "| model | context |" in (tmp_path / "table.md").read_text()
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert set(summary) >= {"ngram", "lstm", "transformer", "transformer_beats_ngram"}

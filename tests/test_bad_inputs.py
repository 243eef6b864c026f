"""The bad-input catalogue: each entry raises a one-line UserError naming the problem.

The runner turns any UserError into `error: <message>` and exit status 2 without a
traceback (tests/test_runner.py checks that path end to end, including that existing
checkpoints are untouched); here every entry is checked at the API it enters through.
"""


from pathlib import Path

import numpy as np
import pytest

from lm import config as config_lib
from lm.config import SampleConfig, ShardingConfig, check_sampling_args
from lm.data.corpus import read_text
from lm.data.pipeline import eval_batches, train_dataset
from lm.data.tokenizers import CharTokenizer, build_tokenizer
from lm.errors import UserError
from lm.models.registry import model_config_class
from lm.tasks import task_config_class
from lm.train.layout import Layout
from lm.workdir import ensure_writable, load_trained

BASE = {"data": {"path": "data/tinyshakespeare.txt"}, "model": {}}


def _config(**sections):
  values = {k: dict(v) for k, v in BASE.items()}
  for name, value in sections.items():
    if isinstance(value, dict):
      values.setdefault(name, {}).update(value)
    else:
      values[name] = value
  return config_lib.from_dict(values)


def _file(tmp_path, content: bytes, name="corpus.txt"):
  path = tmp_path / name
  path.write_bytes(content)
  return str(path)


CASES = {
    "missing corpus": (lambda t: read_text(str(t / "nope.txt")), "not found"),
    "corpus is a directory": (lambda t: read_text(str(t)), "directory"),
    "empty corpus": (lambda t: read_text(_file(t, b"  \n\n")), "empty"),
    "non-UTF-8 corpus": (lambda t: read_text(_file(t, b"ok \xff\xfe bad")), "not valid UTF-8"),
    "binary corpus": (lambda t: read_text(_file(t, b"abc\x00\x01def")), "binary"),
    "corpus shorter than one block": (
        lambda t: train_dataset(np.arange(10), seq_len=64, batch_size=2, seed=0),
        "fewer than one window"),
    "validation split too small": (lambda t: eval_batches(np.arange(1), 8, 2), "validation"),
    "unknown config key": (lambda t: _config(data={"pathh": "x"}), "pathh"),
    "unknown config section": (lambda t: _config(optimizer={}), "optimizer"),
    "wrong value type": (lambda t: _config(train={"num_steps": "many"}), "num_steps"),
    "invalid enum value": (lambda t: _config(model={"position": "foo"}), "position"),
    "heads not dividing dims": (lambda t: _config(model={"embed_dim": 130}), "divisible"),
    "kv_heads not dividing heads": (lambda t: _config(model={"num_kv_heads": 3}),
                                    "num_kv_heads"),
    "val_fraction out of range": (lambda t: _config(data={"val_fraction": 1.5}),
                                  "val_fraction"),
    "unknown tokenizer": (lambda t: _config(data={"tokenizer": "sentencepiece"}), "tokenizer"),
    "unknown model family": (lambda t: model_config_class("mamba"), "mamba"),
    "unknown task": (lambda t: task_config_class("rlhf"), "rlhf"),
    "unknown sharding preset": (lambda t: ShardingConfig(rules="zero3"), "zero3"),
    "mesh needs more devices": (lambda t: Layout.from_config(ShardingConfig(data=3, fsdp=5)),
                                "devices"),
    "batch not divisible by the mesh": (
        lambda t: Layout.from_config(ShardingConfig()).check_batch(12, "data.batch_size"),
        "not divisible"),
    "prompt out of vocabulary": (lambda t: CharTokenizer(list("abc")).encode("abz"), "'z'"),
    "BPE vocabulary too small": (lambda t: build_tokenizer("bpe", "some text", 100), "bpe"),
    "temperature < 0": (lambda t: check_sampling_args(-1.0, 0, 1.0, 10), "temperature"),
    "top_p outside (0, 1]": (lambda t: check_sampling_args(1.0, 0, 1.5, 10), "top_p"),
    "top_k < 0": (lambda t: check_sampling_args(1.0, -2, 1.0, 10), "top_k"),
    "negative max_new_tokens": (lambda t: SampleConfig(max_new_tokens=-5), "max_new_tokens"),
    "sampling a workdir without config": (lambda t: load_trained(str(t)), "config.json"),
    "grad_accum_steps not positive": (
        lambda t: _config(train={"grad_accum_steps": 0}), "grad_accum_steps"),
    "workdir not writable": (
        lambda t: ensure_writable(str(Path(_file(t, b"x", "a_file")) / "run")), "not writable"),
    "unknown non-finite policy": (lambda t: _config(optim={"nonfinite": "ignore"}), "nonfinite"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_a_one_line_user_error(name, tmp_path):
  fn, words = CASES[name]
  with pytest.raises(UserError) as info:
    fn(tmp_path)
  message = str(info.value)
  assert "\n" not in message, message
  assert words.lower() in message.lower(), message


def test_catalogue_is_large():
  assert len(CASES) >= 20


def test_concurrent_writability_checks_do_not_collide(tmp_path):
  """The processes of a multi-process run check one workdir at the same time."""
  import concurrent.futures
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    list(pool.map(lambda _: [ensure_writable(str(tmp_path / "w")) for _ in range(100)],
                  range(4)))
  assert list((tmp_path / "w").iterdir()) == []

"""Recurrent LMs: cells against hand-written NumPy steps, carried state, the cache interface,
truncated BPTT threading and generation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lm.data.pipeline import consecutive_train_iterator, next_chunk
from lm.models.rnn import (
  CarryTrainState,
  RecurrentConfig,
  RecurrentLM,
  create_carry_state,
  make_tbptt_multi_step,
  tbptt_loss,
)
from lm.sampling import generate

V = 11


def _model(cell, **kw):
  config = RecurrentConfig(vocab_size=V, cell=cell, num_layers=2, embed_dim=6, hidden_dim=5,
                           max_len=16, **kw)
  model = RecurrentLM(config)
  params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  params = jax.tree.map(np.asarray, nn_unbox(params))
  # Random biases too, so a wrong gate order or bias placement cannot hide behind zeros.
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda p: p + 0.3 * rng.standard_normal(p.shape).astype(p.dtype), params)
  return model, params


def nn_unbox(tree):
  import flax.linen as nn
  return nn.meta.unbox(tree)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def numpy_forward(cell, params, tokens_BT):
  """The whole model written out step by step with NumPy (float64)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x = p["token_embed"]["embedding"][tokens_BT]  # (B, T, D)
  B, T, _ = x.shape
  for layer in ("layer_0", "layer_1"):
    W, b = p[layer]["input"]["kernel"], p[layer]["input"]["bias"]
    U = p[layer]["recurrence"]["recurrent"]
    H = U.shape[0]
    h, c = np.zeros((B, H)), np.zeros((B, H))
    out = np.zeros((B, T, H))
    for t in range(T):
      xt = x[:, t] @ W + b
      if cell == "lstm":
        z = xt + h @ U
        i, f, g, o = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
      elif cell == "gru":
        hu = h @ U
        r = _sigmoid(xt[:, :H] + hu[:, :H])
        z = _sigmoid(xt[:, H:2 * H] + hu[:, H:2 * H])
        n = np.tanh(xt[:, 2 * H:] + r * (hu[:, 2 * H:] + p[layer]["recurrence"]["recurrent_bias"]))
        h = (1 - z) * n + z * h
      else:
        h = np.tanh(xt + h @ U)
      out[:, t] = h
    x = out
  return x @ p["lm_head"]["kernel"] + p["lm_head"]["bias"]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_cell_matches_handwritten_numpy_step(cell):
  model, params = _model(cell)
  tokens_BT = np.random.default_rng(2).integers(0, V, (3, 7))
  logits_BTV, _ = jax.jit(model.apply)({"params": params}, jnp.asarray(tokens_BT))
  np.testing.assert_allclose(logits_BTV, numpy_forward(cell, params, tokens_BT), atol=2e-5)


def test_lstm_forget_bias_starts_at_one():
  model = RecurrentLM(RecurrentConfig(vocab_size=V, hidden_dim=5, embed_dim=6))
  params = nn_unbox(model.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32))["params"])
  np.testing.assert_array_equal(params["layer_0"]["input"]["bias"],
                                [0.0] * 5 + [1.0] * 5 + [0.0] * 10)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_carried_state_continues_the_sequence(cell):
  model, params = _model(cell)
  tokens_BT = jnp.asarray(np.random.default_rng(3).integers(0, V, (2, 10)))
  full_BTV, _ = model.apply({"params": params}, tokens_BT)
  first, carry = model.apply({"params": params}, tokens_BT[:, :4], return_carry=True)
  second, _ = model.apply({"params": params}, tokens_BT[:, 4:], carry=carry)
  np.testing.assert_allclose(jnp.concatenate([first, second], 1), full_BTV, atol=1e-5)


def test_cache_decoding_equals_the_full_forward():
  model, params = _model("lstm")
  tokens_BT = jnp.asarray(np.random.default_rng(4).integers(0, V, (2, 9)))
  full_BTV, _ = model.apply({"params": params}, tokens_BT)
  # Prefill 4 tokens padded to the cache length, then decode one token at a time.
  padded = jnp.zeros((2, 16), jnp.int32).at[:, :4].set(tokens_BT[:, :4])
  logits, caches = model.apply({"params": params}, padded, caches=model.init_cache(2),
                               cache_index=0)
  np.testing.assert_allclose(logits[:, :4], full_BTV[:, :4], atol=1e-5)
  decode = jax.jit(lambda tokens, caches, i: model.apply({"params": params}, tokens,
                                                        caches=caches, cache_index=i))
  for i in range(4, 9):
    step_logits, caches = decode(tokens_BT[:, i:i + 1], caches, i)
    np.testing.assert_allclose(step_logits[:, 0], full_BTV[:, i], atol=1e-5)


def test_greedy_generation_follows_the_argmax_chain():
  model, params = _model("gru")
  prompt = [3, 1, 4]
  out = generate(model, params, prompt, max_new_tokens=6, temperature=0.0)[0].tolist()
  # Reference: the carried-state path (not the cache), one token at a time.
  step = jax.jit(lambda tokens, carry: model.apply({"params": params}, tokens, carry=carry,
                                                   return_carry=True))
  logits, carry = model.apply({"params": params}, jnp.asarray([prompt]), return_carry=True)
  expected = []
  for _ in range(6):
    expected.append(int(jnp.argmax(logits[0, -1])))
    logits, carry = step(jnp.asarray([[expected[-1]]]), carry)
  assert out == expected


def test_tbptt_threads_the_state_across_consecutive_windows():
  """With a zero learning rate, K scanned steps carry exactly the state of one long pass."""
  model, params = _model("lstm")
  tokens = np.random.default_rng(5).integers(0, V, 200).astype(np.int32)
  seq_len, batch, steps = 5, 3, 4
  it = consecutive_train_iterator(tokens, seq_len, batch)
  batches = next_chunk(it, steps)
  tx = optax.sgd(0.0)
  state = create_carry_state(params, tx, model.init_carry(batch))
  multi_step = make_tbptt_multi_step(tbptt_loss(model), tx)
  state, metrics = multi_step(state, jax.tree.map(jnp.asarray, batches), jax.random.key(0))
  lanes_BT = np.concatenate(list(batches["inputs"]), axis=1)  # (B, steps * seq_len)
  logits, carry = model.apply({"params": params}, jnp.asarray(lanes_BT), return_carry=True)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), state.carry, carry)
  targets = np.concatenate(list(batches["targets"]), axis=1)
  logp = jax.nn.log_softmax(logits)
  nll_BT = -np.take_along_axis(np.asarray(logp), targets[..., None], -1)[..., 0]
  per_window = nll_BT.reshape(batch, steps, seq_len).mean(axis=(0, 2))
  np.testing.assert_allclose(metrics["loss"], per_window, rtol=1e-5)
  assert isinstance(state, CarryTrainState) and int(state.step) == steps


def test_reset_zeroes_the_carry_at_each_pass():
  model, params = _model("rnn")
  tokens = np.random.default_rng(6).integers(0, V, 40).astype(np.int32)
  batches = next_chunk(consecutive_train_iterator(tokens, 4, 2), 5)  # 4 windows per lane
  assert batches["reset"].tolist() == [[True] * 2, [False] * 2, [False] * 2, [False] * 2,
                                       [True] * 2]
  np.testing.assert_array_equal(batches["inputs"][4], batches["inputs"][0])
  tx = optax.sgd(0.0)
  multi_step = make_tbptt_multi_step(tbptt_loss(model), tx)
  _, metrics = multi_step(create_carry_state(params, tx, model.init_carry(2)),
                          jax.tree.map(jnp.asarray, batches), jax.random.key(0))
  assert float(metrics["loss"][4]) == pytest.approx(float(metrics["loss"][0]), rel=1e-6)


def test_reset_every_staggers_empty_state_windows_over_rows():
  tokens = np.arange(400, dtype=np.int32)  # 3 lanes of 133 tokens: 33 windows of 4 each
  resets = next_chunk(consecutive_train_iterator(tokens, 4, 3, reset_every=5), 12)["reset"]
  # Row b restarts at batches b, b+5, b+10, ... and every row at the pass start (batch 0).
  expected = [[i == 0 or (i - b) % 5 == 0 for b in range(3)] for i in range(12)]
  assert resets.tolist() == expected
  plain = next_chunk(consecutive_train_iterator(tokens, 4, 3), 12)["reset"]
  assert plain[1:].sum() == 0  # without it: only at the start of a pass
  from lm.errors import UserError
  from lm.tasks.tbptt_lm import TBPTTConfig
  with pytest.raises(UserError, match="task_config.reset_every"):
    TBPTTConfig(reset_every=-1)


@pytest.mark.parametrize("kwargs, message", [
    ({"cell": "transformer"}, "model.cell"),
    ({"hidden_dim": 0}, "positive"),
    ({"tie_embeddings": True, "embed_dim": 4, "hidden_dim": 8}, "tie_embeddings"),
    ({"dropout": 1.0}, "dropout"),
])
def test_bad_configs(kwargs, message):
  with pytest.raises(ValueError, match=message):
    RecurrentConfig(**kwargs)


@pytest.mark.slow
def test_resume_restores_the_carried_state(tmp_path):
  """Training 30 steps straight == training, losing the last two checkpoints, resuming from
  step 10: the carried state is part of the checkpoint (a zero state would differ)."""
  import importlib.util
  import os
  import shutil

  from lm import config as config_lib
  from lm.train.trainer import train

  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  spec = importlib.util.spec_from_file_location(
      "rnn_shakespeare", os.path.join(repo, "configs", "rnn_shakespeare.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  values = module.get_config("smoke").to_dict()
  corpus = tmp_path / "corpus.txt"
  corpus.write_text(open(os.path.join(repo, "data", "tinyshakespeare.txt")).read()[:20000])
  values["data"].update(path=str(corpus), batch_size=8, seq_len=16)  # 8 fake devices
  values["train"].update(num_steps=30, checkpoint_every=10, eval_every=30, log_every=10)
  values["sample"]["max_new_tokens"] = 5
  config = config_lib.from_dict(values)
  straight = train(config, str(tmp_path / "a"))
  train(config, str(tmp_path / "b"))
  for step in ("20", "30"):
    shutil.rmtree(tmp_path / "b" / "checkpoints" / step)
  resumed = train(config, str(tmp_path / "b"))
  assert resumed["val_loss"] == straight["val_loss"]
  assert resumed["train_loss"] == straight["train_loss"]

"""Decoding cost of the non-Transformer LM vs the Transformer: tokens/s and memory per sequence.

  python -m experiments.bench_ssm [--ssm_workdir=/tmp/ssm] [--contexts=64,256,1024]

For each context length L, both models generate L tokens for a batch of sequences
from an empty context, one token per step inside one jitted loop: the SSM
(configs/ssm_shakespeare.py) carries its O(1) state (lm/models/ssm.py), the Transformer
(configs/shakespeare_char.py, max_len = L) writes a KV cache of L slots and attends over
it. Weights are random (speed and memory do not depend on them). Memory is what
decoding keeps per sequence: the SSM's state (the same for every L) vs the KV cache at
L tokens (2 x layers x L x heads x head_dim floats), and its growth per token.

With --ssm_workdir (a trained ssm run) it also scores the validation text as one
stream with the state carried (every token conditioned on all of val before it),
the recurrent counterpart of the lecture table's full-context val loss.
Writes a JSON line per measurement to stdout and, with --out, to a file.
"""

import json
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from configs import shakespeare_char, ssm_shakespeare
from lm import config as config_lib
from lm.models.gpt import GPT
from lm.models.ssm import SSMLM, state_bytes

_SSM_WORKDIR = flags.DEFINE_string("ssm_workdir", None, "A trained ssm run to score val as a stream.")
_CONTEXTS = flags.DEFINE_string("contexts", "64,256,1024", "Context lengths L to decode.")
_BATCH = flags.DEFINE_integer("batch", 8, "Sequences decoded together.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per measurement (best is kept).")
_OUT = flags.DEFINE_string("out", None, "Also append the JSON lines to this file.")


def _model_config(module, **overrides):
  values = module.get_config().to_dict()
  values["model"].update(vocab_size=65, **overrides)
  return config_lib.from_dict(values).model


def _random_params(model, dummy):
  shapes = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.key(0), dummy))["params"])
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: jnp.asarray(0.02 * rng.standard_normal(s.shape), s.dtype), shapes)


def _time(fn, *args) -> float:
  jax.block_until_ready(fn(*args))  # compile
  best = float("inf")
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best


def ssm_decode(model, params, batch: int, steps: int):
  @jax.jit
  def run(params):
    def body(_, carry):
      token_B, state = carry
      logits, state = model.apply({"params": params}, token_B[:, None], state=state,
                                  return_state=True)
      return jnp.argmax(logits[:, 0], -1).astype(jnp.int32), state
    return jax.lax.fori_loop(0, steps, body, (jnp.zeros((batch,), jnp.int32),
                                              model.init_state(batch)))
  return run, model.init_state(batch)


def gpt_decode(model, params, batch: int, steps: int):
  @jax.jit
  def run(params):
    def body(i, carry):
      token_B, caches = carry
      logits, caches = model.apply({"params": params}, token_B[:, None], caches=caches,
                                   cache_index=i)
      return jnp.argmax(logits[:, 0], -1).astype(jnp.int32), caches
    return jax.lax.fori_loop(0, steps, body, (jnp.zeros((batch,), jnp.int32),
                                              model.init_cache(batch, steps)))
  return run, model.init_cache(batch, steps)


def stream_val_loss(workdir: str, chunk: int = 1024) -> dict:
  """-mean log p(x_i | x_<i) over val tokens 1.., reading val as one stream."""
  import os

  import orbax.checkpoint as ocp

  from lm.data.corpus import read_text, split_text
  from lm.data.tokenizers import load_tokenizer
  from lm.models.registry import build_model
  from lm.train.checkpoint import Checkpointer
  # Params only: the optimizer state's layout may differ from this version's optimizer.
  config = config_lib.load_json(os.path.join(workdir, "config.json"))
  step = Checkpointer(workdir, create=False).latest_step()
  state = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step),
                                                          "state"))
  model, params = build_model(config.family, config.model), state["params"]
  tokenizer = load_tokenizer(os.path.join(workdir, "tokenizer.json"))
  _, val_text = split_text(read_text(config.data.path), config.data.val_fraction)
  ids = np.asarray(tokenizer.encode(val_text), np.int32)

  @jax.jit
  def run(state, inputs_1T, targets_1T, weights_1T):
    logits, state = model.apply({"params": params}, inputs_1T, state=state, return_state=True)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets_1T[..., None], -1)[..., 0]
    return state, (nll * weights_1T).sum()

  num = len(ids) - 1
  padded = np.zeros(-(-num // chunk) * chunk + 1, np.int32)
  padded[:num + 1] = ids
  weights = (np.arange(len(padded) - 1) < num).astype(np.float32)
  state, total = model.init_state(1), 0.0
  for start in range(0, num, chunk):
    sl = slice(start, start + chunk)
    state, nll = run(state, padded[:-1][sl][None], padded[1:][sl][None], weights[sl][None])
    total += float(nll)
  return {"what": "ssm_stream_val_loss", "workdir": workdir, "step": step,
          "val_loss": total / num, "tokens": num}


def main(argv):
  del argv
  rows = []
  if _SSM_WORKDIR.value:
    rows.append(stream_val_loss(_SSM_WORKDIR.value))
    print(json.dumps(rows[-1]), flush=True)
  B = _BATCH.value
  ssm = SSMLM(_model_config(ssm_shakespeare))
  ssm_params = _random_params(ssm, jnp.zeros((1, 8), jnp.int32))
  for L in (int(x) for x in _CONTEXTS.value.split(",")):
    gpt = GPT(_model_config(shakespeare_char, max_len=L))
    gpt_params = _random_params(gpt, jnp.zeros((1, 8), jnp.int32))
    for name, model, params, make in (("ssm", ssm, ssm_params, ssm_decode),
                                      ("transformer", gpt, gpt_params, gpt_decode)):
      run, memory = make(model, params, B, L)
      seconds = _time(run, params)
      per_seq = state_bytes(memory) // B
      rows.append({"what": "decode", "model": name, "context": L, "batch": B,
                   "tokens_per_sec": B * L / seconds, "ms_per_step": 1e3 * seconds / L,
                   "memory_bytes_per_sequence": per_seq,
                   "memory_bytes_per_token": 0 if name == "ssm" else per_seq // L,
                   "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))})
      print(json.dumps(rows[-1]), flush=True)
  if _OUT.value:
    with open(_OUT.value, "a") as f:
      for row in rows:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
  app.run(main)

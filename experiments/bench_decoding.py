"""Encoder-decoder decoding speed: cross-attention K/V projected once vs at every step.

  python -m experiments.bench_decoding [--source_lens=48,256] [--batch=32] [--beam_size=4]

The model is configs/seq2seq_shakespeare.py's (BART layers, 2 + 2 layers, 128 dims)
with random weights (speed does not depend on them) and `max_target_len` = 64 generated
tokens (EOS is never emitted, so every row runs all 64 steps). For each source length S,
greedy and beam search decode one batch of random sources twice in the same process:
`cache_cross_kv=False` (each step projects the encoder output to every layer's
cross-attention keys/values again, as before) and the default (projected at the first
step and kept; lm/decoding.py). `stepwise` is greedy as a Python loop of jitted
one-token steps (how a server would stream), fed the encoder output or the cached K/V.
Prints one JSON line per measurement (the best of `--repeats` timed runs, the two
variants alternating; compilation excluded, encoding included, divided by the 64 steps),
the recompute / cached time ratio and whether both produced the same tokens.

Inside one jitted `lax.while_loop`, XLA's loop-invariant code motion already hoists the
recomputed projections out of the loop (the optimised HLO's loop carries the projected
(B, S, K, H) keys/values), so there the explicit cache guarantees what the compiler
happened to do; the stepwise loop is where it saves work.
"""

import json
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from configs import seq2seq_shakespeare
from lm import config as config_lib
from lm.decoding import beam_search, greedy_decode
from lm.layers.attention import CROSS_KV
from lm.models.encdec import EncoderDecoder, cross_kv_of, init_params

_SOURCE_LENS = flags.DEFINE_string("source_lens", "48,256", "Source lengths S to decode from.")
_BATCH = flags.DEFINE_integer("batch", 32, "Sources decoded together.")
_BEAM = flags.DEFINE_integer("beam_size", 4, "Beam width of the beam-search measurement.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per measurement (best is kept).")
_VOCAB = 68  # 3 specials + tiny Shakespeare's 65 characters


def _model(source_len: int) -> EncoderDecoder:
  values = seq2seq_shakespeare.get_config().to_dict()
  values["model"].update(vocab_size=_VOCAB, max_len=source_len)
  return EncoderDecoder(config_lib.from_dict(values).model)


def _best_times(fns: dict) -> dict:
  """Best wall time of each function; runs alternate so machine load hits both alike."""
  for fn in fns.values():
    fn()  # compile
  best = dict.fromkeys(fns, float("inf"))
  for _ in range(_REPEATS.value):
    for key, fn in fns.items():
      start = time.perf_counter()
      fn()
      best[key] = min(best[key], time.perf_counter() - start)
  return best


def _stepwise(model, params, sources, T):
  """Greedy decoding as a Python loop of jitted one-token steps (a serving loop): no
  compiler sees two steps at once, so only the explicit cache avoids re-projecting."""
  encode = jax.jit(lambda src: model.apply({"params": params}, src, method="encode"))
  first = jax.jit(lambda toks, enc, src, caches: model.apply(
      {"params": params}, toks, enc, src, caches=caches, cache_index=0, method="decode",
      mutable=[CROSS_KV]))
  step = jax.jit(lambda toks, memory, src, caches, i: model.apply(
      {"params": params}, toks, memory, src, caches=caches, cache_index=i, method="decode"))

  def run(cache: bool):
    encoded = encode(sources)
    tokens = jnp.zeros((len(sources), 1), jnp.int32)
    (logits, caches), sown = first(tokens, encoded, sources, model.init_cache(len(sources), T))
    memory = cross_kv_of(sown) if cache else encoded
    out = []
    for i in range(1, T + 1):
      tokens = jnp.argmax(logits[:, -1:], axis=-1).astype(jnp.int32)
      out.append(tokens)
      if i < T:
        logits, caches = step(tokens, memory, sources, caches, i)
    return jnp.concatenate(out, axis=1)

  return run


def main(argv):
  del argv
  for S in (int(s) for s in _SOURCE_LENS.value.split(",")):
    model = _model(S)
    params = nn.meta.unbox(init_params(model, seed=0))
    T = model.config.max_target_len
    sources = np.random.default_rng(0).integers(3, _VOCAB, (_BATCH.value, S)).astype(np.int32)
    searches = {
        "greedy": lambda cache: greedy_decode(model, params, sources, max_len=T, eos_id=-1,
                                              cache_cross_kv=cache),
        f"beam{_BEAM.value}": lambda cache: beam_search(
            model, params, sources, beam_size=_BEAM.value, max_len=T, eos_id=-1,
            cache_cross_kv=cache),
    }
    searches["stepwise"] = _stepwise(model, params, sources, T)
    for name, search in searches.items():
      seconds = _best_times({cache: lambda c=cache: jax.block_until_ready(search(c))
                             for cache in (False, True)})
      outputs = [np.asarray(jax.tree.leaves(search(cache))[0]) for cache in (False, True)]
      rows = _BATCH.value * (_BEAM.value if name.startswith("beam") else 1)
      print(json.dumps({
          "search": name, "source_len": S, "target_len": T, "batch": _BATCH.value,
          "ms_per_step_recompute": round(1e3 * seconds[False] / T, 3),
          "ms_per_step_cached": round(1e3 * seconds[True] / T, 3),
          "tokens_per_s_cached": round(rows * T / seconds[True]),
          "speedup": round(seconds[False] / seconds[True], 2),
          "same_tokens": bool(np.array_equal(*outputs)),
          "device": jax.devices()[0].platform}), flush=True)


if __name__ == "__main__":
  app.run(main)

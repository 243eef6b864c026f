"""KV-cache speedup: greedy decoding with the cache vs re-running the whole prefix.

  python -m experiments.reproduce.kv_cache [--prompt_len=32 --new_tokens=224 --out=FILE]

Without a cache every new token re-runs the forward pass over the context; with it, one
token's queries meet the cached keys and values. Both loops are jitted `fori_loop`s over
the same GPT (the default char recipe's shape, 4 layers x 128, random weights: speed does
not depend on training); the uncached loop runs the forward on the fixed `max_len` buffer
(static shapes) and reads the logits at the last real position. Both must produce the same
greedy tokens. FLOPs per token come from XLA's cost analysis of one step of each.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.reproduce.common import hardware, write_result
from lm.models.gpt import GPT, GPTConfig
from lm.sampling import generate


def _flops(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def _best_seconds(fn, repeats: int) -> float:
  jax.block_until_ready(fn())  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return min(times)


def measure(prompt_len: int, new_tokens: int, repeats: int) -> dict:
  config = GPTConfig(vocab_size=65, max_len=prompt_len + new_tokens)
  model = GPT(config)
  T = config.max_len
  params = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((1, T), jnp.int32)))()
  params = jax.tree.map(lambda x: getattr(x, "value", x), params["params"],
                        is_leaf=lambda x: hasattr(x, "value"))
  prompt = np.random.default_rng(0).integers(0, config.vocab_size, prompt_len)

  @jax.jit
  def uncached(params, buffer_1T):
    def step(i, buffer_1T):
      logits_1TV, _ = model.apply({"params": params}, buffer_1T)
      token = jnp.argmax(logits_1TV[0, prompt_len + i - 1])
      return buffer_1T.at[0, prompt_len + i].set(token.astype(jnp.int32))
    return jax.lax.fori_loop(0, new_tokens, step, buffer_1T)[0, prompt_len:]

  buffer_1T = jnp.zeros((1, T), jnp.int32).at[0, :prompt_len].set(prompt)
  cached_tokens = generate(model, params, prompt, max_new_tokens=new_tokens, temperature=0.0)[0]
  uncached_tokens = np.asarray(uncached(params, buffer_1T))
  if not np.array_equal(cached_tokens, uncached_tokens):
    raise AssertionError("cached and uncached greedy decoding disagree")

  cached_s = _best_seconds(lambda: generate(model, params, prompt, max_new_tokens=new_tokens,
                                            temperature=0.0), repeats)
  uncached_s = _best_seconds(lambda: uncached(params, buffer_1T), repeats)
  caches = model.init_cache(1, T)
  full_flops = _flops(lambda p, x: model.apply({"params": p}, x)[0], params, buffer_1T)
  one_flops = _flops(lambda p, x, c: model.apply({"params": p}, x, caches=c, cache_index=T - 1)[0],
                     params, buffer_1T[:, :1], caches)
  # Re-running only the real prefix (no padding) would cost sum_i (P + i) token-forwards.
  prefix_tokens = sum(prompt_len + i for i in range(new_tokens)) / new_tokens
  return {
      "hardware": hardware(),
      "model": "GPT 4 layers x 128, 4 heads, vocab 65, random weights",
      "prompt_len": prompt_len, "new_tokens": new_tokens, "max_len": T,
      "greedy_tokens_equal": True,
      "cached_seconds": cached_s, "uncached_seconds": uncached_s,
      "speedup": uncached_s / cached_s,
      "cached_tokens_per_sec": new_tokens / cached_s,
      "uncached_tokens_per_sec": new_tokens / uncached_s,
      "flops_per_token_cached": one_flops, "flops_per_token_uncached": full_flops,
      "flops_ratio": full_flops / one_flops,
      "expected_token_forwards_ratio_prefix_only": prefix_tokens,
  }


def _parse(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--prompt_len", type=int, default=32, help="Prompt tokens.")
  parser.add_argument("--new_tokens", type=int, default=224, help="Generated tokens (prompt + new <= max_len).")
  parser.add_argument("--repeats", type=int, default=3, help="Timed calls of each loop (best is kept).")
  parser.add_argument("--out", type=str, default="", help="Results JSON (default results/kv_cache.json).")
  return parser.parse_args(argv)


def main(argv=None):
  args = _parse(argv)
  result = measure(args.prompt_len, args.new_tokens, args.repeats)
  print(f"speedup {result['speedup']:.1f}x (cached {result['cached_tokens_per_sec']:,.0f} tok/s, "
        f"uncached {result['uncached_tokens_per_sec']:,.0f} tok/s); FLOPs/token ratio "
        f"{result['flops_ratio']:.1f}x")
  write_result("kv_cache", result, args.out)


if __name__ == "__main__":
  main()

"""`--mode=sample` and `--mode=score` on a trained workdir."""

import math

import numpy as np

from lm.config import check_sampling_args
from lm.errors import UserError
from lm.sampling import generate
from lm.scoring import token_logprobs
from lm.workdir import load_trained


def sample(workdir: str, *, prompt=None, temperature=None, top_k=None, top_p=None,
           max_new_tokens=None, seed=None, num_samples: int = 1) -> list[str]:
  """Continues `prompt`; any knob left None takes the run's config.sample value."""
  trained = load_trained(workdir)
  s = trained.config.sample
  pick = lambda value, default: default if value is None else value
  prompt, temperature = pick(prompt, s.prompt), pick(temperature, s.temperature)
  top_k, top_p = pick(top_k, s.top_k), pick(top_p, s.top_p)
  max_new_tokens, seed = pick(max_new_tokens, s.max_new_tokens), pick(seed, s.seed)
  check_sampling_args(temperature, top_k, top_p, max_new_tokens)
  ids = trained.tokenizer.encode(prompt)
  out = generate(trained.model, trained.params, ids, max_new_tokens=max_new_tokens,
                 temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                 num_samples=num_samples)
  texts = [prompt + trained.tokenizer.decode(row) for row in out]
  for i, text in enumerate(texts):
    if num_samples > 1:
      print(f"--- sample {i} ---")
    print(text)
  return texts


def score(workdir: str, text: str) -> dict:
  """Prints log p(x_1..L) and every token's log p(x_i | x_<i) (the chain rule)."""
  trained = load_trained(workdir)
  tok = trained.tokenizer
  ids = tok.encode(text)
  if len(ids) == 0:
    raise UserError("--text is empty: nothing to score")
  logps = token_logprobs(trained.model, trained.params, ids, trained.token_prior)
  total = float(np.sum(logps))
  print(f"{'i':>5}  {'token':<16} log p(x_i | x_<i)")
  for i, (tid, lp) in enumerate(zip(ids, logps)):
    note = "  (first token: unigram prior of the training split)" if i == 0 else ""
    print(f"{i + 1:>5}  {tok.decode([tid])!r:<16} {lp:10.4f}{note}")
  nats_per_token = -total / len(ids)
  print(f"log p(x_1..{len(ids)}) = {total:.4f} nats  ({total / math.log(2):.4f} bits); "
        f"per token {nats_per_token:.4f} nats, perplexity {math.exp(nats_per_token):.3f}")
  return {"log_prob": total, "token_log_probs": logps.tolist(), "tokens": ids.tolist()}

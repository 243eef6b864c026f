"""`--mode=sample` and `--mode=score` on a trained workdir of any kind lm/trained.py loads."""

import math

import numpy as np

from lm.config import check_sampling_args
from lm.errors import UserError
from lm.trained import Knobs, load


def sample(workdir: str, *, prompt=None, temperature=None, top_k=None, top_p=None,
           max_new_tokens=None, seed=None, num_samples: int = 1, beam_size: int = 0) -> list[str]:
  """Continues `prompt` (an encoder-decoder: translates it); knobs left None take the
  workdir's defaults (its config.sample, adjusted per kind in lm/trained.py)."""
  trained = load(workdir)
  if trained.generate is None:
    raise UserError(trained.no_generate)
  if beam_size < 0 or (beam_size > 1 and not trained.beam_search):
    raise UserError(f"--beam_size={beam_size}: beam search is for encoder-decoder workdirs "
                    f"(this is a {trained.what})" if beam_size > 1 else
                    f"--beam_size must be >= 0, got {beam_size}")
  if num_samples < 1:
    raise UserError(f"--num_samples must be >= 1, got {num_samples}")
  s = trained.sample_defaults
  pick = lambda value, default: default if value is None else value  # noqa: E731
  knobs = Knobs(temperature=pick(temperature, s.temperature), top_k=pick(top_k, s.top_k),
                top_p=pick(top_p, s.top_p), max_new_tokens=pick(max_new_tokens, s.max_new_tokens),
                seed=pick(seed, s.seed), num_samples=num_samples, beam_size=beam_size)
  check_sampling_args(knobs.temperature, knobs.top_k, knobs.top_p, knobs.max_new_tokens)
  texts = trained.generate(pick(prompt, s.prompt), knobs)
  for i, text in enumerate(texts):
    if len(texts) > 1:
      print(f"--- sample {i} ---")
    print(text)
  return texts


def score(workdir: str, text: str, prompt: str | None = None) -> dict:
  """Prints every token's log-probability and their sum: the chain rule log p(x_i | x_<i)
  (given the source or prompt if there is one), or BERT's pseudo-log-likelihood."""
  if not text:
    raise UserError("--text is empty: nothing to score")
  scored = load(workdir).score(text, prompt)
  n = len(scored.ids)
  given = f"{scored.given}, " if scored.given else ""
  if scored.pseudo:
    column, total_name = "log p(x_i | x without x_i)", f"PLL(x_1..{n})"
  else:
    condition = f" | {scored.given}" if scored.given else ""
    column, total_name = f"log p(x_i | {given}x_<i)", f"log p(x_1..{n}{condition})"
  total = float(np.sum(scored.logprobs))
  print(f"{'i':>5}  {'token':<16} {column}")
  for i, (name, lp) in enumerate(zip(scored.tokens, scored.logprobs)):
    note = f"  ({scored.notes[i]})" if i in scored.notes else ""
    print(f"{i + 1:>5}  {name!r:<16} {lp:10.4f}{note}")
  per_token = -total / n
  print(f"{total_name} = {total:.4f} nats  ({total / math.log(2):.4f} bits); per token "
        f"{per_token:.4f} nats, {'pseudo-' if scored.pseudo else ''}perplexity "
        f"{math.exp(per_token):.3f}")
  if scored.pseudo:
    print("a pseudo-log-likelihood (Salazar et al. 2020): each token masked in turn and "
          "scored given all the others; not a normalized probability of the text")
  return {"log_prob": total, "token_log_probs": np.asarray(scored.logprobs).tolist(),
          "tokens": scored.ids, "pseudo": scored.pseudo}

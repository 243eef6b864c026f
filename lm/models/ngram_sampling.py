"""Sampling from an `NGramLM` with the neural models' knobs and semantics.

The next-token log-probabilities go through `lm.sampling.sample_logits`, the same
function the Transformer's generation loop uses, so temperature (0 argmax, 1 the
model, inf uniform), top-k and top-p mean exactly the same for every family.
"""

import jax
import jax.numpy as jnp
import numpy as np

from lm.models.ngram import NGramLM
from lm.sampling import sample_logits

_sample = jax.jit(sample_logits, static_argnames=("top_k",))


def generate(model: NGramLM, prompt_ids, *, max_new_tokens: int, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             num_samples: int = 1) -> np.ndarray:
  """(num_samples, max_new_tokens) ids continuing `prompt_ids`, like `lm.sampling.generate`.

  In sentence mode the context starts with <s> and the prompt is the start of a
  sentence; after </s> a new sentence starts from <s> alone, so samples run on across
  lines.
  """
  prompt = [int(t) for t in np.asarray(prompt_ids).reshape(-1)]  # may be empty: unigrams first
  out = np.zeros((num_samples, max_new_tokens), np.int32)
  rng = jax.random.key(seed)
  for b in range(num_samples):
    context = ([model.bos] if model.bos is not None else []) + prompt
    for i in range(max_new_tokens):
      rng, step_rng = jax.random.split(rng)
      logp_1V = jnp.asarray(model.next_logprobs(context), jnp.float32)[None]
      token = int(_sample(logp_1V, step_rng, jnp.float32(temperature), top_k=int(top_k),
                          top_p=jnp.float32(top_p))[0])
      out[b, i] = token
      context = [model.bos] if token == model.eos else context + [token]
      context = context[-max(model.config.order - 1, 1):]
  return out

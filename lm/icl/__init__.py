"""In-context learning: string tasks, k-shot prompts, scoring by generation or options.

- `string_tasks`: deterministic string functions (reverse, shift cipher, ...) with
  one-line descriptions, and random lowercase inputs split into training / held-out pools.
- `suites`: ICL tasks as (query, answer, options) examples: the string family and the
  lecture's addition ("Q: What is 556 plus 497? A: ...").
- `scoring`: batched greedy exact match (KV-cache generation) and option log-likelihoods.
- `harness`: zero-, one-, k-shot (and description-only) prompts, accuracy vs k, the table.
- `loading`: any trained GPT workdir back as (config, model, params, tokenizer).
"""
